"""The drop-ins: fastvae.distributions, fastvae.nn.functional / modules and fastvae.patch() give torch's values,
gradients, shapes and errors (the random stream aside), faster.

Tolerances: float64 results agree with torch's to 1e-12 relative (the same formula, rounded in another order);
float32 to 1e-5 relative / 1e-5 absolute on O(1) terms (a few ulps per element, accumulated over <= 1024 elements
for the event sums); 16-bit inputs are computed in float32 inside the kernels and compared with torch's float32 result
rounded to the 16-bit type (one rounding of the output: 1e-2 relative for bfloat16, 2e-3 for float16)."""
import math

import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from scipy import stats

import fastvae
import fastvae.distributions as D
import fastvae.nn as fnn
import fastvae.nn.functional as FF

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=torch.float64, seed=0, grad=False):
    return torch.randn(shape, generator=gen(seed), dtype=dtype).requires_grad_(grad)


def pos(*shape, dtype=torch.float64, seed=1, grad=False):
    return (torch.rand(shape, generator=gen(seed), dtype=dtype) + 0.2).requires_grad_(grad)


def close(a, b, dtype=torch.float64, msg=""):
    torch.testing.assert_close(a, b, msg=msg, **TOL[dtype])


def value_and_grads(fn, leaves):
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in leaves]
    out = fn(*leaves)
    w = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)
    wanted = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad((out * w).sum(), wanted) if wanted else []
    return out, grads


def same(fv_fn, torch_fn, leaves, dtype=torch.float64):
    out, grads = value_and_grads(fv_fn, leaves)
    ref, ref_grads = value_and_grads(torch_fn, leaves)
    assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, ref.shape, out.dtype, ref.dtype)
    close(out, ref, dtype)
    for g, r in zip(grads, ref_grads):
        close(g, r, dtype)
    return out


# ---- distributions: values, gradients, shapes ---------------------------------------------------------------------

def test_the_classes_are_torchs():
    q = D.Normal(randn(3), pos(3))
    assert isinstance(q, td.Normal) and isinstance(q.expand((2, 3)), D.Normal)
    assert isinstance(D.Bernoulli(logits=randn(3)), td.Bernoulli)
    assert isinstance(D.MultivariateNormal(randn(3), torch.eye(3, dtype=torch.float64)), td.MultivariateNormal)
    ind = D.Independent(q, 1)
    assert isinstance(ind, td.Independent) and ind.batch_shape == () and ind.event_shape == (3,)
    assert D.kl_divergence is td.kl_divergence


LOC_SCALE_VALUE = [  # loc, scale, value shapes: broadcasting as torch does
    ((4, 5), (4, 5), (4, 5)),
    ((4, 5), (), (4, 5)),
    ((4, 5), (5,), (3, 4, 5)),
    ((5,), (4, 1), (4, 5)),
    ((), (), (6,)),
    ((2, 3), (2, 3), (3,)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shapes", LOC_SCALE_VALUE)
def test_normal_log_prob_is_torchs(shapes, dtype):
    ls, ss, vs = shapes
    leaves = [randn(*ls, dtype=dtype, grad=True), pos(*ss, dtype=dtype, grad=True), randn(*vs, dtype=dtype, seed=3,
                                                                                          grad=True)]
    same(lambda m, s, v: D.Normal(m, s).log_prob(v), lambda m, s, v: td.Normal(m, s).log_prob(v), leaves, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_normal_log_prob_16bit(dtype):
    m, s, v = randn(4, 5, dtype=dtype), pos(4, 5, dtype=dtype), randn(4, 5, dtype=dtype, seed=3)
    out = D.Normal(m, s).log_prob(v)
    assert out.dtype == dtype
    close(out, td.Normal(m.float(), s.float()).log_prob(v.float()).to(dtype), dtype)


def test_normal_log_prob_at_the_extremes_is_the_closed_form():
    m = torch.tensor([0.0, 0.0, 1e300, -5.0], dtype=torch.float64)
    s = torch.tensor([1e-300, 1e-30, 1e250, 1e30], dtype=torch.float64)
    v = torch.tensor([0.0, 1e-31, 1e300, 5.0], dtype=torch.float64)
    c = 0.5 * math.log(2 * math.pi)
    exact = [-math.log(1e-300) - c, -0.5 * 0.01 - math.log(1e-30) - c,
             -0.5 * (1e300 / 1e250 - 1e300 / 1e250) ** 2 - math.log(1e250) - 0.5 * math.log(2 * math.pi),
             -0.5 * (10 / 1e30) ** 2 - math.log(1e30) - 0.5 * math.log(2 * math.pi)]
    close(D.Normal(m, s).log_prob(v), torch.tensor(exact, dtype=torch.float64))


def test_a_nan_in_is_a_nan_out():
    m, s, v = randn(4), pos(4), randn(4, seed=3)
    for t in (m, s, v):
        t[1] = math.nan
        out = D.Normal(m, s, validate_args=False).log_prob(v)
        assert out[1].isnan() and not out[[0, 2, 3]].isnan().any()
        t[1] = 0.5
    logits = randn(4)
    logits[2] = math.nan
    assert D.Bernoulli(logits=logits, validate_args=False).log_prob(torch.ones(4, dtype=torch.float64))[2].isnan()


@pytest.mark.parametrize("event_dims", [1, 2])
def test_independent_normal_log_prob_sums_the_event_dims(event_dims):
    leaves = [randn(3, 4, 5, grad=True), pos(4, 5, grad=True), randn(2, 3, 4, 5, seed=3)]
    same(lambda m, s, v: D.Independent(D.Normal(m, s), event_dims).log_prob(v),
         lambda m, s, v: td.Independent(td.Normal(m, s), event_dims).log_prob(v), leaves)


KL_PAIRS = [(D.Normal, D.Normal), (D.Normal, td.Normal), (td.Normal, D.Normal)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pq", KL_PAIRS, ids=["fv-fv", "fv-torch", "torch-fv"])
def test_kl_normal_normal_is_torchs(pq, dtype):
    P, Q = pq
    leaves = [randn(4, 5, dtype=dtype, grad=True), pos(4, 5, dtype=dtype, grad=True),
              randn(5, dtype=dtype, seed=4, grad=True), pos(5, dtype=dtype, seed=5, grad=True)]
    same(lambda a, b, c, d: td.kl_divergence(P(a, b), Q(c, d)),
         lambda a, b, c, d: td.kl._kl_normal_normal(td.Normal(a, b), td.Normal(c, d)), leaves, dtype)


@pytest.mark.parametrize("ind", [(D.Independent, D.Independent), (D.Independent, td.Independent),
                                 (td.Independent, D.Independent), (td.Independent, td.Independent)])
def test_kl_of_independent_normals_is_torchs(ind):
    P, Q = ind
    leaves = [randn(4, 5, grad=True), pos(4, 5, grad=True), randn(4, 5, seed=4), pos(4, 5, seed=5)]
    out = same(lambda a, b, c, d: td.kl_divergence(P(D.Normal(a, b), 1), Q(D.Normal(c, d), 1)),
               lambda a, b, c, d: td.kl_divergence(td.Independent(td.Normal(a, b), 1),
                                                   td.Independent(td.Normal(c, d), 1)), leaves)
    assert out.shape == (4,)


def test_kl_with_two_close_scales_has_no_cancellation():
    s = torch.tensor([1.0], dtype=torch.float32)
    out = td.kl_divergence(D.Normal(torch.zeros(1), s * (1 + 1e-4)), D.Normal(torch.zeros(1), s))
    # r^2 - 1 - 2 log r = 2 (r - 1)^2 + O((r - 1)^3), r = 1 + 1e-4: (1e-4)^2 in float32 to 1e-3 relative
    exact = 0.5 * ((1 + 1e-4) ** 2 - 1 - 2 * math.log1p(1e-4))
    assert abs(out.item() - exact) <= 1e-3 * exact, (out.item(), exact)


@pytest.mark.parametrize("param", ["logits", "probs"])
def test_bernoulli_log_prob_and_entropy_are_torchs(param):
    raw = randn(4, 5, grad=True) * 3
    value = (torch.rand(4, 5, generator=gen(7)) < 0.5).double()

    def make(cls, r):
        return cls(logits=r) if param == "logits" else cls(probs=torch.sigmoid(r))
    same(lambda r, v: make(D.Bernoulli, r).log_prob(v), lambda r, v: make(td.Bernoulli, r).log_prob(v), [raw, value])
    same(lambda r: make(D.Bernoulli, r).entropy(), lambda r: make(td.Bernoulli, r).entropy(), [raw])
    same(lambda r, v: D.Independent(make(D.Bernoulli, r), 1).log_prob(v),
         lambda r, v: td.Independent(make(td.Bernoulli, r), 1).log_prob(v), [raw, value])


def test_bernoulli_with_huge_logits_is_torchs():
    logits = torch.tensor([-1e4, -30.0, 0.0, 30.0, 1e4], dtype=torch.float64)
    for y in (0.0, 1.0):
        v = torch.full_like(logits, y)
        close(D.Bernoulli(logits=logits).log_prob(v), td.Bernoulli(logits=logits).log_prob(v))


# ---- sampling ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sample_shape", [(), (3,), (2, 3)])
def test_normal_rsample_shapes_and_gradients(sample_shape):
    m, s = randn(4, 5, grad=True), pos(5, grad=True)
    q = D.Normal(m, s)
    torch.manual_seed(0)
    z = q.rsample(sample_shape)
    assert z.shape == torch.Size(sample_shape) + (4, 5) and z.dtype == m.dtype
    # z = loc + scale eps: the gradients are (sum of g, sum of g eps), eps recovered from z
    eps = ((z - m) / s).detach()
    gm, gs = torch.autograd.grad(z.sum(), (m, s))
    close(gm, torch.full_like(m, float(torch.Size(sample_shape).numel())))
    close(gs, eps.reshape(-1, 4, 5).sum((0, 1)))
    assert not q.sample(sample_shape).requires_grad


def test_sampling_is_reproducible_under_torch_manual_seed_and_fresh_otherwise():
    q = D.Normal(randn(8), pos(8))
    torch.manual_seed(3)
    a = q.rsample((2,))
    torch.manual_seed(3)
    b = q.rsample((2,))
    assert torch.equal(a, b) and not torch.equal(a, q.rsample((2,)))
    assert not torch.equal(a[0], a[1])


def test_normal_samples_are_normal():
    torch.manual_seed(1)
    z = D.Normal(torch.tensor(2.0), torch.tensor(3.0)).sample((20000,))
    assert stats.kstest(((z - 2) / 3).numpy(), "norm").pvalue > 1e-4


def test_multivariate_normal_rsample():
    L = torch.tensor([[1.0, 0.0], [0.8, 0.6]], dtype=torch.float64)
    loc = torch.tensor([1.0, -1.0], dtype=torch.float64)
    q = D.MultivariateNormal(loc, scale_tril=L)
    torch.manual_seed(2)
    z = q.rsample((40000,))
    assert z.shape == (40000, 2)
    assert torch.allclose(z.mean(0), loc, atol=0.03)
    assert torch.allclose(torch.cov(z.T), L @ L.T, atol=0.03)
    qb = D.MultivariateNormal(randn(3, 2), covariance_matrix=torch.eye(2, dtype=torch.float64))
    assert qb.rsample((4,)).shape == (4, 3, 2)
    assert q.log_prob(z[:3]).shape == (3,)  # torch's own


# ---- validate_args, fallbacks -----------------------------------------------------------------------------------

def test_validate_args_behaves_as_torchs():
    with pytest.raises(ValueError, match="scale"):
        D.Normal(torch.zeros(2), torch.tensor([1.0, -1.0]), validate_args=True)
    with pytest.raises(ValueError):
        D.Bernoulli(logits=torch.zeros(2), validate_args=True).log_prob(torch.tensor([0.5, 2.0]))
    q = D.Normal(torch.zeros(2), torch.tensor([1.0, -1.0]), validate_args=False)
    r = td.Normal(torch.zeros(2), torch.tensor([1.0, -1.0]), validate_args=False)
    torch.testing.assert_close(q.log_prob(torch.ones(2)), r.log_prob(torch.ones(2)), equal_nan=True)


def test_what_has_no_kernel_runs_torchs_code():
    # a Python number as the value, mixed dtypes, an integer value: torch's own code, torch's result or error
    q = D.Normal(torch.zeros(3), torch.ones(3), validate_args=False)
    r = td.Normal(torch.zeros(3), torch.ones(3), validate_args=False)
    torch.testing.assert_close(q.log_prob(0.5), r.log_prob(0.5))
    b = D.Bernoulli(logits=torch.zeros(3, dtype=torch.float64), validate_args=False)
    tb = td.Bernoulli(logits=torch.zeros(3, dtype=torch.float64), validate_args=False)
    v = torch.ones(3, dtype=torch.float32)
    torch.testing.assert_close(b.log_prob(v), tb.log_prob(v))  # torch's own dtype rule (float32 here)
    with pytest.raises(RuntimeError, match="can't be cast"):
        b.log_prob(torch.ones(3, dtype=torch.int64))


# ---- nn.functional ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weights", [(None, None), ((4, 6), None), ((6,), None), (None, (6,)), ((1, 6), (4, 6))])
def test_bce_with_logits_is_torchs(weights, dtype, reduction):
    ws, ps = weights
    leaves = [randn(4, 6, dtype=dtype, grad=True) * 4, torch.rand(4, 6, generator=gen(2), dtype=dtype).requires_grad_()]
    leaves += [pos(*ws, dtype=dtype, seed=5)] if ws else [None]
    leaves += [pos(*ps, dtype=dtype, seed=6) * 3] if ps else [None]
    grads = [t for t in leaves if t is not None]

    def call(fn):
        return lambda *ts: fn(ts[0], ts[1], ts[2] if ws else None, reduction=reduction,
                              pos_weight=ts[-1] if ps else None)
    same(call(FF.binary_cross_entropy_with_logits), call(F.binary_cross_entropy_with_logits), grads, dtype)


VAR_SHAPES = [(4, 6), (4,), (4, 1), (1, 6), (), "float"]


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("var_shape", VAR_SHAPES, ids=str)
def test_gaussian_nll_loss_is_torchs(var_shape, reduction, full):
    inp, tgt = randn(4, 6, grad=True), randn(4, 6, seed=2, grad=True)
    if var_shape == "float":
        var = 0.7
        fv = FF.gaussian_nll_loss(inp, tgt, var, full=full, reduction=reduction)
        torch.testing.assert_close(fv, F.gaussian_nll_loss(inp, tgt, var, full=full, reduction=reduction))
        return
    if var_shape == ():
        with pytest.raises(ValueError, match="fastvae.nn.functional.gaussian_nll_loss: var is of incorrect size"):
            FF.gaussian_nll_loss(inp, tgt, pos(), reduction=reduction)
        return
    v = pos(*var_shape, grad=True)
    v.data[0] = 1e-8  # below eps: clamped, its gradient passed through as torch's
    same(lambda a, b, c: FF.gaussian_nll_loss(a, b, c, full=full, reduction=reduction),
         lambda a, b, c: F.gaussian_nll_loss(a, b, c, full=full, reduction=reduction), [inp, tgt, v])


def test_nn_functional_refuses_what_torch_refuses_naming_the_function():
    x = randn(4, 6)
    cases = [
        (lambda f: f.gaussian_nll_loss(x, x, -pos(4, 6)), ValueError, "negative"),
        (lambda f: f.gaussian_nll_loss(x, x, -1.0), ValueError, "negative"),
        (lambda f: f.gaussian_nll_loss(x, x, pos(3)), ValueError, "incorrect size"),
        (lambda f: f.gaussian_nll_loss(x, x, pos(4, 6), reduction="avg"), ValueError, "not valid"),
        (lambda f: f.binary_cross_entropy_with_logits(x, x[:3]), ValueError, "size"),
        (lambda f: f.binary_cross_entropy_with_logits(x, x, reduction="avg"), ValueError, "reduction"),
    ]
    for call, err, text in cases:
        with pytest.raises(err, match=text):
            call(F)
        with pytest.raises(err, match=f"fastvae.nn.functional.*{text}"):
            call(FF)


def test_modules_are_torchs_modules():
    w = pos(6)
    m, t = fnn.BCEWithLogitsLoss(pos_weight=w), torch.nn.BCEWithLogitsLoss(pos_weight=w)
    assert isinstance(m, torch.nn.BCEWithLogitsLoss) and m.state_dict().keys() == t.state_dict().keys()
    x, y = randn(4, 6), torch.rand(4, 6, dtype=torch.float64)
    close(m(x, y), t(x, y))
    g, tg = fnn.GaussianNLLLoss(full=True, reduction="sum"), torch.nn.GaussianNLLLoss(full=True, reduction="sum")
    assert repr(g) == repr(tg)
    close(g(x, y, pos(4, 1)), tg(x, y, pos(4, 1)))


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data())
def test_bce_and_gaussian_nll_over_random_shapes(shape, data):
    x = randn(*shape) * 3
    y = torch.rand(shape, dtype=torch.float64, generator=gen(1))
    k = data.draw(st.integers(0, len(shape)), label="weight dims")
    w = pos(*shape[len(shape) - k:])
    red = data.draw(st.sampled_from(["none", "mean", "sum"]), label="reduction")
    close(FF.binary_cross_entropy_with_logits(x, y, w, reduction=red),
          F.binary_cross_entropy_with_logits(x, y, w, reduction=red))
    v = pos(*shape)
    close(FF.gaussian_nll_loss(x, y, v, reduction=red), F.gaussian_nll_loss(x, y, v, reduction=red))


# ---- patch() ----------------------------------------------------------------------------------------------------

def _torch_state():
    return ([getattr(o, n) for o, n, _ in fastvae._patching._METHODS],
            [td.kl._KL_REGISTRY[p] for p, _ in fastvae._patching._KL])


def test_patch_is_idempotent_and_undone_completely():
    before = _torch_state()
    assert not fastvae.is_patched()
    fastvae.patch()
    fastvae.patch()
    assert fastvae.is_patched() and td.Normal.log_prob is D.normal_log_prob
    assert F.gaussian_nll_loss is FF.gaussian_nll_loss
    fastvae.unpatch()
    assert not fastvae.is_patched() and _torch_state() == before
    with fastvae.patch():
        assert fastvae.is_patched()
        with fastvae.patch():
            pass
        assert fastvae.is_patched()  # the inner block found it on and left it on
    assert _torch_state() == before


def _vae_loss(mu, logvar, logits, x):
    """A loss written with torch.distributions and torch.nn.functional, unmodified."""
    q = td.Normal(mu, torch.exp(0.5 * logvar))
    z = q.rsample()
    prior = td.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    rec = td.Independent(td.Bernoulli(logits=logits), 1).log_prob(x)
    kl = td.kl_divergence(td.Independent(q, 1), td.Independent(prior, 1))
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    return (kl - rec).mean() + bce + z.sum() * 0, kl, rec


def test_unmodified_code_gets_torchs_values_under_patch():
    mu, lv, logits = randn(8, 4, grad=True), randn(8, 4, seed=1, grad=True), randn(8, 16, seed=2, grad=True)
    x = (torch.rand(8, 16, generator=gen(3)) < 0.5).double()
    ref = _vae_loss(mu, lv, logits, x)
    ref_g = torch.autograd.grad(ref[0], (mu, lv, logits))
    with fastvae.patch():
        got = _vae_loss(mu, lv, logits, x)
        got_g = torch.autograd.grad(got[0], (mu, lv, logits))
        # the fused path ran: the Independent log_prob has no SumBackward in its graph
        assert "Sum" not in type(got[2].grad_fn).__name__
    for a, b in zip((*got, *got_g), (*ref, *ref_g)):
        close(a, b)


def test_patched_code_under_forward_ad_and_torch_func_runs_torchs_rules():
    mu, s, v = randn(3, 4), pos(3, 4), randn(3, 4, seed=5)
    tangent = torch.ones_like(mu)
    expect = torch.func.jvp(lambda m: td.Normal(m, s).log_prob(v), (mu,), (tangent,))
    with fastvae.patch():
        got = torch.func.jvp(lambda m: td.Normal(m, s).log_prob(v), (mu,), (tangent,))
        g = torch.func.grad(lambda m: D.Normal(m, s).log_prob(v).sum())(mu)
        vm = torch.func.vmap(lambda m: FF.gaussian_nll_loss(m, v[0], s[0]))(mu)
    close(got[0], expect[0])
    close(got[1], expect[1])
    assert got[1].abs().sum() > 0
    close(g, (v - mu) / s ** 2)
    close(vm, torch.stack([F.gaussian_nll_loss(m, v[0], s[0]) for m in mu]))


@pytest.mark.slow
def test_patched_code_and_the_functional_drop_ins_compile_without_graph_breaks():
    mu, lv = randn(4, 3, dtype=torch.float32, grad=True), randn(4, 3, dtype=torch.float32, seed=1, grad=True)
    logits = randn(4, 6, dtype=torch.float32, seed=2, grad=True)
    x = (torch.rand(4, 6, generator=gen(3)) < 0.5).float()
    with fastvae.patch():
        loss = torch.compile(lambda *a: _vae_loss(*a)[0], fullgraph=True)
        torch.manual_seed(0)
        got = loss(mu, lv, logits, x)
        torch.manual_seed(0)
        want = _vae_loss(mu, lv, logits, x)[0]
    torch.testing.assert_close(got, want)
    v = pos(4, 6, dtype=torch.float32)
    def both(a, b, c):
        return FF.gaussian_nll_loss(a, b, c) + FF.binary_cross_entropy_with_logits(a, b.sigmoid())
    f = torch.compile(both, fullgraph=True)
    torch.testing.assert_close(f(logits, x, v), F.gaussian_nll_loss(logits, x, v) +
                               F.binary_cross_entropy_with_logits(logits, x.sigmoid()))
