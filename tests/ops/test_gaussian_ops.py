"""The deterministic Gaussian-family ops (gaussian_nll, bernoulli_nll, kl_normal) against fastvae.reference
(float64 oracle) and torch.distributions, over random shapes (hypothesis), every reduction and operand layout,
with gradients, gradcheck, opcheck, special values, low-precision and non-contiguous inputs, and every CPU
instruction-set build."""
import math

import pytest
import torch
import torch.distributions as D
from hypothesis import given, strategies as st

import fastvae
from fastvae import reference as ref

from helpers import EPS, OPCHECK_UTILS, assert_grad_close, assert_within, f64, grad_tol, sum_tol

LOG_2PI = math.log(2 * math.pi)
DTYPES = [torch.float32, torch.float64]
REDUCTIONS = ["none", "sum", "mean"]


# ---- strategies --------------------------------------------------------------------------------------------

@st.composite
def feature_shapes(draw):
    """Feature shapes F of x (B, *F): tiny, on the kernels' 256-element block and 8192-element chunk edges,
    longer than a chunk with odd sizes, image-like, or none at all (x of shape (B,))."""
    kind = draw(st.sampled_from(["small", "edge", "long", "image", "scalar"]))
    if kind == "small":
        return (draw(st.integers(1, 40)),)
    if kind == "edge":
        return (draw(st.sampled_from([255, 256, 257, 511, 8191, 8192, 8193, 16385])),)
    if kind == "long":
        return (draw(st.integers(8194, 20011)),)
    if kind == "image":
        return tuple(draw(st.integers(1, 7)) for _ in range(draw(st.integers(2, 3))))
    return ()


@st.composite
def likelihood_cases(draw):
    F = draw(feature_shapes())
    D_ = math.prod(F)
    B = draw(st.integers(1, 3)) if D_ > 4096 else draw(st.sampled_from([1, 2, 3, 5, 33, 700 if D_ < 50 else 40]))
    k = draw(st.sampled_from([None, None, 1, 3]))
    seed = draw(st.integers(0, 2**31 - 1))
    return B, F, k, seed


def lv_layouts(F, sampled):
    out = ["none", "full", "scalar", "feature", "per_sample"]
    if len(F) >= 1:
        out += ["broadcast", "broadcast_lead1"]  # e.g. (C, 1, 1) or (1, C, 1, 1) against (B, C, H, W)
    if sampled:
        out.append("x_shape")  # one variance per element of x, shared by the k samples
    return out


def make_logvar(layout, B, F, k, g, dtype, lo=-3.0, hi=3.0):
    def u(shape):
        return torch.empty(shape, dtype=torch.float64).uniform_(lo, hi, generator=g).to(dtype)
    mean_shape = ((k,) if k else ()) + (B, *F)
    if layout == "none":
        return None
    if layout == "full":
        return u(mean_shape)
    if layout == "scalar":
        return u(())
    if layout == "feature":
        return u(F)
    if layout == "broadcast":
        return u((F[0], *([1] * (len(F) - 1))))
    if layout == "broadcast_lead1":
        return u((1, F[0], *([1] * (len(F) - 1))))
    if layout == "per_sample":
        return u((B, *([1] * len(F))))
    if layout == "x_shape":
        return u((B, *F))
    raise AssertionError(layout)


def randn(shape, g, dtype, scale=1.0):
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def per_sample(t, lead):
    return t.reshape(*t.shape[:lead], -1).sum(-1)


def reduce(t, reduction):
    return t if reduction == "none" else t.sum() if reduction == "sum" else t.mean()


# magnitudes (sums of |terms|) of the per-element terms, for the error bounds
def gauss_scale(x, mean, lv):
    lv = torch.zeros((), dtype=torch.float64) if lv is None else lv.double()
    r = x.double() - mean.double()
    return (0.5 * (r * r * torch.exp(-lv) + lv.abs() + LOG_2PI)).expand(mean.shape)


def bern_scale(logits, x):
    l = logits.double()
    return (torch.nn.functional.softplus(l) + (x.double() * l).abs()).expand(logits.shape)


def kl_scale(mu, lv, mp, lp):
    mp = torch.zeros((), dtype=torch.float64) if mp is None else mp.double()
    lp = torch.zeros((), dtype=torch.float64) if lp is None else lp.double()
    mu, lv = mu.double(), lv.double()
    return (0.5 * (lp.abs() + lv.abs() + torch.exp(lv - lp) + (mu - mp) ** 2 * torch.exp(-lp) + 1)).expand(mu.shape)


def check_reduced(out, expected_none, scale_elem, lead, reduction, dtype, what):
    """out (reduced by `reduction`) against the float64 per-sample reference expected_none."""
    D_ = scale_elem.reshape(*scale_elem.shape[:lead], -1).shape[-1]
    scale = per_sample(scale_elem, lead)
    n = expected_none.numel()
    if reduction == "none":
        assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert_within(out, expected_none, sum_tol(dtype, D_, scale), what)
    else:
        exp = reduce(expected_none, reduction)
        tol = sum_tol(dtype, D_ * n, scale.sum()) / (n if reduction == "mean" else 1)
        assert out.shape == ()
        assert_within(out, exp, tol, what)


# ---- gaussian_nll ------------------------------------------------------------------------------------------

def opt64(t):
    return None if t is None else t.double()


def draw_gaussian_case(case, data):
    """x, mean and logvar of a drawn likelihood case, with the logvar layout, reduction and dtype drawn."""
    B, F, k, seed = case
    layout = data.draw(st.sampled_from(lv_layouts(F, k is not None)), label="logvar layout")
    reduction = data.draw(st.sampled_from(REDUCTIONS), label="reduction")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    g = torch.Generator().manual_seed(seed)
    x = randn((B, *F), g, dtype)
    mean = randn(((k,) if k else ()) + (B, *F), g, dtype)
    lv = make_logvar(layout, B, F, k, g, dtype)
    return layout, reduction, dtype, g, x, mean, lv


@given(case=likelihood_cases(), data=st.data())
def test_gaussian_nll_matches_reference(case, data):
    k = case[2]
    layout, reduction, dtype, _, x, mean, lv = draw_gaussian_case(case, data)
    out = fastvae.gaussian_nll(x, mean, lv, reduction=reduction)
    expected = ref.gaussian_nll(x.double(), mean.double(), opt64(lv), reduction="none")
    check_reduced(out, expected, gauss_scale(x, mean, lv), 2 if k else 1, reduction, dtype,
                  f"gaussian_nll {layout} {reduction}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_nll_matches_normal_log_prob(dtype):
    g = torch.Generator().manual_seed(1)
    x, mean = randn((6, 3, 5), g, dtype), randn((6, 3, 5), g, dtype)
    for lv in (None, randn((6, 3, 5), g, dtype), randn((3, 1), g, dtype), randn((), g, dtype)):
        std = torch.ones((), dtype=torch.float64) if lv is None else torch.exp(0.5 * lv.double())
        expected = -D.Normal(mean.double(), std).log_prob(x.double()).sum((1, 2))
        out = fastvae.gaussian_nll(x, mean, lv, reduction="none")
        assert_within(out, expected, sum_tol(dtype, 15, per_sample(gauss_scale(x, mean, lv), 1)), "vs Normal")


# ---- bernoulli_nll -----------------------------------------------------------------------------------------

@given(case=likelihood_cases(), data=st.data())
def test_bernoulli_nll_matches_reference(case, data):
    B, F, k, seed = case
    reduction = data.draw(st.sampled_from(REDUCTIONS), label="reduction")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    probs = data.draw(st.booleans(), label="x probabilities")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((B, *F), generator=g, dtype=torch.float64)
    x = (x if probs else (x > 0.5).double()).to(dtype)
    logits = randn(((k,) if k else ()) + (B, *F), g, dtype, scale=6.0)
    out = fastvae.bernoulli_nll(x, logits, reduction=reduction)
    expected = ref.bernoulli_nll(x.double(), logits.double(), reduction="none")
    check_reduced(out, expected, bern_scale(logits, x), 2 if k else 1, reduction, dtype,
                  f"bernoulli_nll {reduction}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_nll_matches_bernoulli_log_prob(dtype):
    g = torch.Generator().manual_seed(2)
    x = (torch.rand((7, 4, 9), generator=g) > 0.4).to(dtype)
    logits = randn((7, 4, 9), g, dtype, scale=30.0)  # includes |l| > 20 (softplus' linear branch)
    expected = -D.Bernoulli(logits=logits.double()).log_prob(x.double()).sum((1, 2))
    out = fastvae.bernoulli_nll(x, logits, reduction="none")
    assert_within(out, expected, sum_tol(dtype, 36, per_sample(bern_scale(logits, x), 1)), "vs Bernoulli")


# ---- kl_normal ---------------------------------------------------------------------------------------------

@st.composite
def kl_cases(draw):
    F = draw(feature_shapes())
    D_ = math.prod(F)
    B = draw(st.integers(1, 3)) if D_ > 4096 else draw(st.sampled_from([1, 2, 3, 5, 33, 700 if D_ < 50 else 40]))
    layouts = ["none", "full", "feature", "scalar", "broadcast", "per_sample"] if F else ["none", "full", "scalar"]
    mp = draw(st.sampled_from(layouts))
    lp = draw(st.sampled_from(layouts))
    return B, F, mp, lp, draw(st.integers(0, 2**31 - 1))


def make_prior(layout, B, F, g, dtype):
    if layout == "none":
        return None
    shape = {"full": (B, *F), "feature": F, "scalar": (), "per_sample": (B, *([1] * len(F))),
             "broadcast": (F[0], *([1] * (len(F) - 1))) if F else ()}[layout]
    return randn(shape, g, dtype)


def draw_kl_case(case, data):
    """mu, logvar and the priors of a drawn KL case, with the reduction and dtype drawn."""
    B, F, mpl, lpl, seed = case
    reduction = data.draw(st.sampled_from(REDUCTIONS), label="reduction")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    g = torch.Generator().manual_seed(seed)
    mu, lv = randn((B, *F), g, dtype), randn((B, *F), g, dtype)
    mp, lp = make_prior(mpl, B, F, g, dtype), make_prior(lpl, B, F, g, dtype)
    return reduction, dtype, g, mu, lv, mp, lp


@given(case=kl_cases(), data=st.data())
def test_kl_normal_matches_reference(case, data):
    mpl, lpl = case[2:4]
    reduction, dtype, _, mu, lv, mp, lp = draw_kl_case(case, data)
    out = fastvae.kl_normal(mu, lv, mp, lp, reduction=reduction)
    expected = ref.kl_normal(mu.double(), lv.double(), opt64(mp), opt64(lp), reduction="none")
    check_reduced(out, expected, kl_scale(mu, lv, mp, lp), 1, reduction, dtype, f"kl_normal {mpl}/{lpl} {reduction}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_normal_matches_kl_divergence(dtype):
    g = torch.Generator().manual_seed(3)
    mu, lv = randn((5, 2, 7), g, dtype), randn((5, 2, 7), g, dtype)
    sd = lambda t: torch.exp(0.5 * t.double())  # noqa: E731
    for mp, lp in ((None, None), (randn((2, 7), g, dtype), randn((2, 7), g, dtype)),
                   (randn((5, 2, 7), g, dtype), randn((2, 1), g, dtype))):
        p_mu = torch.zeros((), dtype=torch.float64) if mp is None else mp.double()
        p_sd = torch.ones((), dtype=torch.float64) if lp is None else sd(lp)
        expected = D.kl_divergence(D.Normal(mu.double(), sd(lv)),
                                   D.Normal(p_mu.expand(mu.shape), p_sd.expand(mu.shape))).sum((1, 2))
        out = fastvae.kl_normal(mu, lv, mp, lp, reduction="none")
        assert_within(out, expected, sum_tol(dtype, 14, per_sample(kl_scale(mu, lv, mp, lp), 1)), "vs kl_divergence")


# ---- gradients -----------------------------------------------------------------------------------------------

def grads_of(fn, inputs, w, reduction):
    """Gradients of sum(w * fn(*inputs)) (reduction none) or w * fn (sum/mean) w.r.t. the tensors in inputs."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves, reduction=reduction)
    (out * w).sum().backward()
    return [None if t is None else t.grad for t in leaves]


def abs_weight(w, out_shape, main, reduction):
    """|d loss / d per-element term|, broadcast against the main operand."""
    n = math.prod(out_shape)
    aw = w.abs() / (n if reduction == "mean" else 1)
    if reduction == "none":
        aw = aw.reshape(*out_shape, *([1] * (main.dim() - len(out_shape))))
    return aw.expand(main.shape)


def _z64(t):
    return torch.zeros((), dtype=torch.float64) if t is None else t.double()


# Magnitudes of the gradient contributions (float64), reduced to each parameter's shape: the error scale of
# a gradient entry whose terms cancel (e.g. 1 - r^2 e^-lv, or a per-feature sum of mixed signs).
def gauss_grad_mags(x, mean, lv, aw):
    r = (x.double() - mean.double()).abs()
    ilv = torch.exp(-_z64(lv))
    dmean = (aw * r * ilv).expand(mean.shape)
    dlv = (0.5 * aw * (1 + r * r * ilv)).expand(mean.shape)
    return [dmean.sum_to_size(x.shape), dmean, None if lv is None else dlv.sum_to_size(lv.shape)]


def bern_grad_mags(logits, x, aw):
    l = logits.double()
    return [aw * (torch.sigmoid(l) + x.double().abs()), (aw * l.abs()).sum_to_size(x.shape)]


def kl_grad_mags(mu, lv, mp, lp, aw):
    d = (mu.double() - _z64(mp)).abs()
    ilp = torch.exp(-_z64(lp))
    ratio = torch.exp(lv.double() - _z64(lp))
    dmu = (aw * d * ilp).expand(mu.shape)
    dlp = (0.5 * aw * (1 + ratio + d * d * ilp)).expand(mu.shape)
    return [dmu, 0.5 * aw * (ratio + 1), None if mp is None else dmu.sum_to_size(mp.shape),
            None if lp is None else dlp.sum_to_size(lp.shape)]


def check_grads(got, exp, mags, main_numel, dtype, names, what):
    for name, a, e, m in zip(names, got, exp, mags):
        if e is None:
            assert a is None, name
            continue
        assert a.dtype == dtype and a.shape == e.shape, name
        assert_within(a, e, grad_tol(dtype, main_numel // max(1, e.numel()), m), f"d{name} ({what})")


@given(case=likelihood_cases(), data=st.data())
def test_gaussian_nll_gradients(case, data):
    B, _, k, _ = case
    layout, reduction, dtype, g, x, mean, lv = draw_gaussian_case(case, data)
    out_shape = ((k,) if k else ()) + (B,)
    w = randn(out_shape if reduction == "none" else (), g, torch.float64) + 0.5  # not all ones, signs mixed
    got = grads_of(fastvae.gaussian_nll, [x, mean, lv], w.to(dtype), reduction)
    exp = grads_of(ref.gaussian_nll, [x.double(), mean.double(), opt64(lv)], w.to(dtype).double(), reduction)
    mags = gauss_grad_mags(x, mean, lv, abs_weight(w.to(dtype).double(), out_shape, mean, reduction))
    check_grads(got, exp, mags, mean.numel(), dtype, ("x", "mean", "logvar"), f"{layout}, {reduction}")


@given(case=likelihood_cases(), data=st.data())
def test_bernoulli_nll_gradients(case, data):
    B, F, k, seed = case
    reduction = data.draw(st.sampled_from(REDUCTIONS), label="reduction")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((B, *F), generator=g, dtype=torch.float64).to(dtype)
    logits = randn(((k,) if k else ()) + (B, *F), g, dtype, scale=4.0)
    out_shape = ((k,) if k else ()) + (B,)
    w = randn(out_shape if reduction == "none" else (), g, torch.float64) + 0.5
    got = grads_of(lambda l, x_, **kw: fastvae.bernoulli_nll(x_, l, **kw), [logits, x], w.to(dtype), reduction)
    exp = grads_of(lambda l, x_, **kw: ref.bernoulli_nll(x_, l, **kw), [logits.double(), x.double()],
                   w.to(dtype).double(), reduction)
    mags = bern_grad_mags(logits, x, abs_weight(w.to(dtype).double(), out_shape, logits, reduction))
    check_grads(got, exp, mags, logits.numel(), dtype, ("logits", "x"), reduction)


@given(case=kl_cases(), data=st.data())
def test_kl_normal_gradients(case, data):
    B, _, mpl, lpl, _ = case
    reduction, dtype, g, mu, lv, mp, lp = draw_kl_case(case, data)
    w = randn((B,) if reduction == "none" else (), g, torch.float64) + 0.5
    got = grads_of(fastvae.kl_normal, [mu, lv, mp, lp], w.to(dtype), reduction)
    exp = grads_of(ref.kl_normal, [mu.double(), lv.double(), opt64(mp), opt64(lp)], w.to(dtype).double(), reduction)
    mags = kl_grad_mags(mu, lv, mp, lp, abs_weight(w.to(dtype).double(), (B,), mu, reduction))
    check_grads(got, exp, mags, mu.numel(), dtype, ("mu", "logvar", "mu_prior", "logvar_prior"), f"{mpl}/{lpl}")


def test_gradient_only_where_required():
    """Inputs that do not require grad get none, and the others are still right."""
    g = torch.Generator().manual_seed(4)
    x, mean, lv = randn((3, 5), g, torch.float64), randn((3, 5), g, torch.float64), randn((5,), g, torch.float64)
    for req in [(True, False, False), (False, True, False), (False, False, True), (True, False, True)]:
        ins = [t.clone().requires_grad_(r) for t, r in zip((x, mean, lv), req)]
        fastvae.gaussian_nll(*ins, reduction="sum").backward()
        rins = [t.clone().requires_grad_(r) for t, r in zip((x, mean, lv), req)]
        ref.gaussian_nll(*rins, reduction="sum").backward()
        for a, b, r in zip(ins, rins, req):
            assert (a.grad is None) == (not r)
            if r:
                torch.testing.assert_close(a.grad, b.grad)
    mu, lv2, mp, lp = (randn((3, 5), g, torch.float64) for _ in range(4))
    for mask in [(False, False, True, False), (False, False, False, True), (True, False, False, True)]:
        ins = [t.clone().requires_grad_(r) for t, r in zip((mu, lv2, mp, lp), mask)]
        fastvae.kl_normal(*ins, reduction="sum").backward()
        rins = [t.clone().requires_grad_(r) for t, r in zip((mu, lv2, mp, lp), mask)]
        ref.kl_normal(*rins, reduction="sum").backward()
        for a, b, r in zip(ins, rins, mask):
            assert (a.grad is None) == (not r)
            if r:
                torch.testing.assert_close(a.grad, b.grad)


# ---- gradcheck (float64) -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["none", "full", "scalar", "feature", "broadcast", "per_sample", "x_shape"])
@pytest.mark.parametrize("k", [None, 2])
def test_gaussian_nll_gradcheck(layout, k):
    if layout == "x_shape" and k is None:
        pytest.skip("x_shape is only distinct with a sample dim")
    g = torch.Generator().manual_seed(5)
    B, F = 3, (2, 3)
    x = randn((B, *F), g, torch.float64).requires_grad_()
    mean = randn(((k,) if k else ()) + (B, *F), g, torch.float64).requires_grad_()
    lv = make_logvar(layout, B, F, k, g, torch.float64)
    args = (x, mean) if lv is None else (x, mean, lv.requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: fastvae.gaussian_nll(*a, reduction="none"), args)


@pytest.mark.parametrize("k", [None, 3])
def test_bernoulli_nll_gradcheck(k):
    g = torch.Generator().manual_seed(6)
    x = torch.rand((4, 5), generator=g, dtype=torch.float64).requires_grad_()
    logits = randn(((k,) if k else ()) + (4, 5), g, torch.float64, 3.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda l, x_: fastvae.bernoulli_nll(x_, l, reduction="none"), (logits, x))


@pytest.mark.parametrize("priors", [("none", "none"), ("full", "full"), ("feature", "scalar"), ("none", "feature"),
                                    ("broadcast", "none")])
def test_kl_normal_gradcheck(priors):
    g = torch.Generator().manual_seed(7)
    B, F = 3, (2, 4)
    mu, lv = randn((B, *F), g, torch.float64).requires_grad_(), randn((B, *F), g, torch.float64).requires_grad_()
    mp, lp = (make_prior(p, B, F, g, torch.float64) for p in priors)
    extra = [t.requires_grad_() for t in (mp, lp) if t is not None]

    def fn(mu_, lv_, *ex):
        it = iter(ex)
        a = next(it) if mp is not None else None
        b = next(it) if lp is not None else None
        return fastvae.kl_normal(mu_, lv_, a, b, reduction="none")
    assert torch.autograd.gradcheck(fn, (mu, lv, *extra))


# ---- opcheck of every op, forward and backward ---------------------------------------------------------------

# (op name, a function making its arguments): every op, forward and backward; also run on CUDA
OPCHECK_CASES = [
    ("gaussian_nll", lambda: (f64(3, 5), f64(3, 5, seed=1).requires_grad_(), f64(3, 5, seed=2).requires_grad_())),
    ("gaussian_nll", lambda: (f64(3, 5).requires_grad_(), f64(2, 3, 5, seed=1).requires_grad_(), f64(5, seed=2))),
    ("gaussian_nll", lambda: (f64(3, 5), f64(3, 5, seed=1).requires_grad_(), None)),
    ("gaussian_nll_backward", lambda: (f64(3), f64(3, 5), f64(3, 5, seed=1), f64(5, seed=2), True, True)),
    ("gaussian_nll_backward", lambda: (f64(2, 3), f64(3, 5), f64(2, 3, 5, seed=1), None, True, False)),
    ("bernoulli_nll", lambda: (f64(3, 5).requires_grad_(), torch.rand(3, 5, dtype=torch.float64))),
    ("bernoulli_nll", lambda: (f64(2, 3, 5).requires_grad_(), torch.rand(3, 5, dtype=torch.float64))),
    ("bernoulli_nll_backward", lambda: (f64(3), f64(3, 5), torch.rand(3, 5, dtype=torch.float64))),
    ("kl_normal", lambda: (f64(3, 5).requires_grad_(), f64(3, 5, seed=1).requires_grad_(), None, None)),
    ("kl_normal", lambda: (f64(3, 5).requires_grad_(), f64(3, 5, seed=1), f64(5, seed=2).requires_grad_(),
                           f64(3, 5, seed=3).requires_grad_())),
    ("kl_normal_backward", lambda: (f64(3), f64(3, 5), f64(3, 5, seed=1), f64(5, seed=2), None,
                                    [True, True, True, False])),
    ("kl_normal_backward", lambda: (f64(3), f64(3, 5), f64(3, 5, seed=1), None, None, [True, False, False, False])),
]


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: c[0])
def test_opcheck(case):
    name, make = case
    torch.library.opcheck(getattr(torch.ops.fastvae, name).default, make(), test_utils=OPCHECK_UTILS)


# ---- special values ---------------------------------------------------------------------------------------

SPECIALS = [0.0, 1.0, -2.0, math.inf, -math.inf, math.nan]


def _special_grid(n):
    import itertools
    cols = list(zip(*itertools.product(SPECIALS, repeat=n)))
    return [torch.tensor(c, dtype=torch.float32).reshape(-1, 1) for c in cols]


def _same_pattern(out, expected, what):
    """NaN where torch gives NaN, the same infinities, and close finite values."""
    assert torch.equal(out.isnan(), expected.isnan()), f"{what}: NaN pattern {out} vs {expected}"
    fin = expected.isfinite()
    assert torch.equal(out[~fin & ~expected.isnan()], expected[~fin & ~expected.isnan()]), f"{what}: infinities"
    torch.testing.assert_close(out[fin].double(), expected[fin].double(), rtol=1e-5, atol=1e-5)


def test_nan_inf_propagate_like_torch():
    x, m, lv = _special_grid(3)
    _same_pattern(fastvae.gaussian_nll(x, m, lv, reduction="none"),
                  ref.gaussian_nll(x, m, lv, reduction="none"), "gaussian_nll")
    _same_pattern(fastvae.gaussian_nll(x, m, reduction="none"), ref.gaussian_nll(x, m, reduction="none"),
                  "gaussian_nll unit variance")
    l, xb = _special_grid(2)
    # softplus(l) - x l with infinite logits at x in {0, 1} takes its limits (0 or inf), as the reference does
    # (torch's fused BCE-with-logits gives NaN at (l, x) = (-inf, 1), the plain formula NaN at (inf, 0) and
    # (inf, 1): inf - inf)
    _same_pattern(fastvae.bernoulli_nll(xb, l, reduction="none"), ref.bernoulli_nll(xb, l, reduction="none"),
                  "bernoulli_nll")
    mu, lv2 = _special_grid(2)
    _same_pattern(fastvae.kl_normal(mu, lv2, reduction="none"), ref.kl_normal(mu, lv2, reduction="none"), "kl std")
    mu, lv2, mp, lp = _special_grid(4)
    _same_pattern(fastvae.kl_normal(mu, lv2, mp, lp, reduction="none"),
                  ref.kl_normal(mu, lv2, mp, lp, reduction="none"), "kl prior")


def test_nan_in_one_sample_stays_in_that_sample():
    x = torch.randn(4, 3000)
    m = torch.randn(4, 3000)
    m[2, 1234] = math.nan
    out = fastvae.gaussian_nll(x, m, reduction="none")
    assert out.isnan().tolist() == [False, False, True, False]
    out = fastvae.bernoulli_nll(x.sigmoid(), m, reduction="none")
    assert out.isnan().tolist() == [False, False, True, False]


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_logvar_finite(dtype):
    g = torch.Generator().manual_seed(8)
    x, mean = randn((4, 64), g, dtype), randn((4, 64), g, dtype)
    for val in (-80.0, 80.0):
        lv = torch.full((4, 64), val, dtype=dtype)
        # gaussian_nll: (x - m)^2 e^80 ~ 1e35 and e^-80 are float32-finite
        out = fastvae.gaussian_nll(x, mean, lv, reduction="none")
        expected = ref.gaussian_nll(x.double(), mean.double(), lv.double(), reduction="none")
        assert out.isfinite().all(), (val, out)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-3)
        out = fastvae.kl_normal(mean, lv, reduction="none")
        assert out.isfinite().all()
        torch.testing.assert_close(out.double(), ref.kl_normal(mean.double(), lv.double(), reduction="none"),
                                   rtol=1e-5, atol=1e-3)
        out = fastvae.kl_normal(mean, lv, x, -lv, reduction="none")  # e^(lv - lp) = e^160 overflows: inf is right
        expected = ref.kl_normal(mean.double(), lv.double(), x.double(), -lv.double(), reduction="none")
        if dtype == torch.float64 or val < 0:
            torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-3)
        else:
            assert (out == math.inf).all()
        lvp = torch.full((4, 64), val + 1.0, dtype=dtype)  # two huge variances: exp(lv - lp) stays finite
        out = fastvae.kl_normal(mean, lv, x, lvp, reduction="none")
        assert out.isfinite().all()
        torch.testing.assert_close(out.double(), ref.kl_normal(mean.double(), lv.double(), x.double(),
                                                                lvp.double(), reduction="none"), rtol=1e-5, atol=1e-3)
        # gradients too
        lvg = lv.clone().requires_grad_()
        mg = mean.clone().requires_grad_()
        fastvae.gaussian_nll(x, mg, lvg).backward()
        assert lvg.grad.isfinite().all() and mg.grad.isfinite().all()
        lvg.grad = None
        fastvae.kl_normal(mg, lvg).backward()
        assert lvg.grad.isfinite().all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_extreme_logits(dtype):
    logits = torch.tensor([[-1e4, -100.0, -30.0, -1e-8, 0.0, 1e-8, 30.0, 100.0, 1e4]], dtype=dtype)
    for xv in (0.0, 1.0, 0.3):
        x = torch.full_like(logits, xv)
        got = fastvae.bernoulli_nll(x.expand(2, -1), logits.expand(2, -1), reduction="none")
        exp = ref.bernoulli_nll(x.double().expand(2, -1), logits.double().expand(2, -1), reduction="none")
        assert got.isfinite().all()
        torch.testing.assert_close(got.double(), exp, rtol=1e-6, atol=0)
        lg = logits.clone().requires_grad_()
        fastvae.bernoulli_nll(x, lg).backward()
        lr = logits.double().clone().requires_grad_()
        ref.bernoulli_nll(x.double(), lr).backward()
        torch.testing.assert_close(lg.grad.double(), lr.grad, rtol=1e-6, atol=1e-12)


# ---- layouts: non-contiguous, low precision, every CPU build ---------------------------------------------

def test_non_contiguous_inputs_give_the_contiguous_result():
    g = torch.Generator().manual_seed(9)
    x = randn((7, 5, 3), g, torch.float32).transpose(0, 2)  # (3, 5, 7), not contiguous
    mean = randn((9, 5, 7), g, torch.float32)[::3]  # (3, 5, 7), strided
    lv = randn((5, 1), g, torch.float32).expand(5, 7)  # stride 0
    assert not (x.is_contiguous() or mean.is_contiguous() or lv.is_contiguous())
    for fn, args in ((fastvae.gaussian_nll, (x, mean, lv)), (fastvae.bernoulli_nll, (mean, x.sigmoid())),
                     (fastvae.kl_normal, (mean, x, lv, lv))):
        out = fn(*args, reduction="none")
        assert torch.equal(out, fn(*[a.contiguous() for a in args], reduction="none"))
        leaves = [a.detach().clone().requires_grad_() for a in args]
        fn(*leaves, reduction="sum").backward()
        cleaves = [a.detach().contiguous().requires_grad_() for a in args]
        fn(*cleaves, reduction="sum").backward()
        for a, b in zip(leaves, cleaves):
            assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_inputs_compute_in_float32(dtype):
    g = torch.Generator().manual_seed(10)
    x, mean, lv = (randn((4, 33), g, dtype) for _ in range(3))
    for fn, args in ((fastvae.gaussian_nll, (x, mean, lv)), (fastvae.gaussian_nll, (x, mean)),
                     (fastvae.bernoulli_nll, (x.float().sigmoid().to(dtype), mean)), (fastvae.kl_normal, (mean, lv)),
                     (fastvae.kl_normal, (mean, lv, x, lv[0]))):
        out = fn(*args, reduction="none")
        assert out.dtype == torch.float32
        assert torch.equal(out, fn(*[a.float() for a in args], reduction="none"))
        leaves = [a.detach().clone().requires_grad_() for a in args]
        fn(*leaves).backward()
        for a in leaves:
            assert a.grad.dtype == dtype and a.grad.isfinite().all()


def test_mixed_float_dtypes_promote():
    g = torch.Generator().manual_seed(11)
    x, mean = randn((3, 4), g, torch.float32), randn((3, 4), g, torch.float64)
    out = fastvae.gaussian_nll(x, mean, reduction="none")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref.gaussian_nll(x.double(), mean, reduction="none"))


def test_every_cpu_build_agrees(isa_runner):
    g = torch.Generator().manual_seed(12)
    x, mean, lv = randn((3, 8193 + 37), g, torch.float32), randn((3, 8230), g, torch.float32), \
        randn((8230,), g, torch.float32)
    mp = randn((3, 8230), g, torch.float32)

    def run():
        leaves = [t.clone().requires_grad_() for t in (x, mean, lv, mp)]
        a = fastvae.gaussian_nll(leaves[0], leaves[1], leaves[2], reduction="none")
        b = fastvae.bernoulli_nll(leaves[0].sigmoid(), leaves[1], reduction="none")
        c = fastvae.kl_normal(leaves[1], leaves[3], leaves[0], leaves[2], reduction="none")
        (a.sum() + b.sum() * 0.3 + c.sum() * 0.7).backward()
        return [a, b, c] + [t.grad for t in leaves]

    res = isa_runner(run)
    base = res["baseline"]
    scale_sum = per_sample(gauss_scale(x, mean, lv), 1) + per_sample(bern_scale(mean, x.sigmoid()), 1) + \
        per_sample(kl_scale(mean, mp, x, lv), 1)
    for isa, outs in res.items():
        for i, (a, b) in enumerate(zip(outs, base)):
            if i < 3:
                assert_within(a, b, sum_tol(torch.float32, 8230, scale_sum), f"{isa} output {i}")
            else:
                assert_grad_close(a, b, torch.float32, n_summed=3, what=f"{isa} grad {i - 3}")


def test_deterministic_across_thread_counts():
    g = torch.Generator().manual_seed(13)
    x, mean, lv = randn((5, 20000), g, torch.float32), randn((5, 20000), g, torch.float32), \
        randn((20000,), g, torch.float32)
    n = torch.get_num_threads()
    outs = []
    try:
        for t in (1, max(2, n)):
            torch.set_num_threads(t)
            lvg = lv.clone().requires_grad_()
            o = fastvae.gaussian_nll(x, mean, lvg, reduction="none")
            o.sum().backward()
            outs.append((o, lvg.grad))
    finally:
        torch.set_num_threads(n)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_bernoulli_accuracy_sweep(isa_runner):
    """The float32 softplus and sigmoid of the kernels over the logits where they are representable: the value
    within a few ulp of its magnitude (softplus(l) + |x l|); the gradient sigmoid(l) - x within a few ulp of
    max(sigmoid(l), x) (the subtraction cancels as in torch's own float32 BCE-with-logits backward)."""
    l = torch.linspace(-87, 87, 100001).reshape(-1, 1)
    for xv in (0.0, 1.0, 0.25):
        x = torch.full_like(l, xv)
        exp = ref.bernoulli_nll(x.double(), l.double(), reduction="none")
        scale = (torch.nn.functional.softplus(l.double()) + (x.double() * l.double()).abs()).squeeze(1)
        sig = torch.sigmoid(l.double())

        def run():
            lg = l.clone().requires_grad_()
            out = fastvae.bernoulli_nll(x, lg, reduction="none")
            out.sum().backward()
            return out, lg.grad
        for isa, (out, grad) in isa_runner(run).items():
            # the reference's own softplus(l) - x l cancels for x = 1, l >> 0: its error is float64 eps of scale
            assert_within(out, exp, 4 * EPS[torch.float32] * scale, f"{isa} bernoulli_nll x={xv}")
            assert_within(grad, sig - xv, 4 * EPS[torch.float32] * torch.maximum(sig, torch.tensor(xv)),
                          f"{isa} d logits x={xv}")


def test_cpu_autocast_bfloat16_network():
    """Under CPU autocast a Linear layer hands bfloat16 activations to the ops: they run in float32 and the
    gradients reach the float32 parameters."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 16)
    x, target = torch.randn(4, 8), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(x)
        assert h.dtype == torch.bfloat16
        mu, lv = h[:, :8], h[:, 8:]
        z, kl = fastvae.reparameterize_kl(mu, lv)
        loss = fastvae.gaussian_nll(target, z) + kl.mean() + fastvae.bernoulli_nll(torch.sigmoid(x.repeat(1, 2)), h)
    assert z.dtype == torch.bfloat16 and kl.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert lin.weight.grad.dtype == torch.float32 and lin.weight.grad.isfinite().all()


def test_misaligned_contiguous_inputs(each_isa):
    """Contiguous views at an odd element offset reach the kernels without a copy: unaligned vector loads."""
    n = 3 * 1001
    x, mean, lv = (torch.randn(n + o)[o:].view(3, 1001) for o in (1, 3, 5))
    assert all(t.data_ptr() % 16 for t in (x, mean, lv))
    for fn, args in ((fastvae.gaussian_nll, (x, mean, lv)), (fastvae.gaussian_nll, (x, mean, lv[1])),
                     (fastvae.bernoulli_nll, (torch.sigmoid(x), mean)), (fastvae.kl_normal, (mean, lv, x, lv[2]))):
        assert torch.equal(fn(*args, reduction="none"), fn(*[a.clone() for a in args], reduction="none"))
    g = torch.Generator().manual_seed(0)
    z, kl = fastvae.reparameterize_kl(mean, lv, generator=g)
    z2, kl2 = fastvae.reparameterize_kl(mean.clone(), lv.clone(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, z2) and torch.equal(kl, kl2)
