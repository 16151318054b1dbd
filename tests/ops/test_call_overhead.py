"""The fixed cost of a call (issue 25): the loss ops' reduction argument (the reduction inside the op), the public
functions' fast path (the op's C++ checks, the Python checks only to word a refusal) against their checked path,
bernoulli_nll's x check inside the op, and the bench's per-call overhead rows."""
import warnings

import pytest
import torch

import fastvae
from fastvae.bench import overhead

from helpers import OPCHECK_UTILS, f64

ops = torch.ops.fastvae
SUM, MEAN = 1, 2


def _loss_calls():
    """(name, op call with a reduction, its tensors needing grad): every loss op with a reduction argument, with a
    leading sample dim (mean over k B values) and a per-feature operand among them."""
    x, m, lv = f64(3, 5), f64(3, 5, seed=1).requires_grad_(), f64(5, seed=2).requires_grad_()
    ms = f64(2, 3, 5, seed=3).requires_grad_()
    p = torch.rand(3, 5, dtype=torch.float64)
    mu, lvq, mp = f64(4, 6, seed=4).requires_grad_(), f64(4, 6, seed=5).requires_grad_(), f64(6, seed=6)
    return [
        ("gaussian_nll", lambda r: ops.gaussian_nll(x, m, lv, r), [m, lv]),
        ("gaussian_nll sampled", lambda r: ops.gaussian_nll(x, ms, None, r), [ms]),
        ("bernoulli_nll", lambda r: ops.bernoulli_nll(m, p, r), [m]),
        ("bernoulli_nll sampled", lambda r: ops.bernoulli_nll(ms, p, r, True), [ms]),
        ("kl_normal", lambda r: ops.kl_normal(mu, lvq, mp.requires_grad_(), None, r), [mu, lvq, mp]),
    ]


@pytest.mark.parametrize("case", _loss_calls(), ids=lambda c: c[0])
@pytest.mark.parametrize("reduction", [SUM, MEAN])
def test_the_ops_reduce_as_the_per_sample_values_sum_and_average(case, reduction):
    _, call, inputs = case
    per_sample = call(0)
    want = per_sample.sum() if reduction == SUM else per_sample.mean()
    got = call(reduction)
    assert got.shape == () and got.dtype == per_sample.dtype
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    g_want = torch.autograd.grad(want, inputs)
    g_got = torch.autograd.grad(got, inputs)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    # the differentiable backward (create_graph) spreads the reduced gradient as the fused one does
    g_cg = torch.autograd.grad(call(reduction), inputs, create_graph=True)
    for a, b in zip(g_cg, g_want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda *a: call(reduction), inputs)


def test_a_reduced_float32_loss_is_float32_and_summed_in_double():
    x, m = torch.rand(64, 784, dtype=torch.float64), torch.randn(64, 784, dtype=torch.float64)
    got = ops.gaussian_nll(x.float(), m.float(), None, MEAN)
    assert got.dtype == torch.float32 and got.shape == ()
    want = ops.gaussian_nll(x.float(), m.float(), None, 0).double().mean()  # the float32 per-sample values
    assert abs(got.double() - want) <= torch.finfo(torch.float32).eps * abs(want)  # one rounding of the mean


@pytest.mark.parametrize("shape", [(), (1,), (1, 5), (1, 1, 5)])
def test_a_broadcast_per_feature_operand_is_expanded_by_the_op_and_its_gradient_summed_back(shape):
    x, m = f64(3, 5), f64(3, 5, seed=1).requires_grad_()
    lv = f64(*shape, seed=2).requires_grad_()
    full = lv.detach().reshape(-1)[:1].expand(5).clone() if lv.numel() == 1 else lv.detach().reshape(5).clone()
    full.requires_grad_()
    got = ops.gaussian_nll(x, m, lv, MEAN)
    want = ops.gaussian_nll(x, m, full, MEAN)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    (g_lv,) = torch.autograd.grad(got, [lv])
    (g_full,) = torch.autograd.grad(want, [full])
    assert g_lv.shape == lv.shape
    torch.testing.assert_close(g_lv, g_full.sum_to_size(5).reshape(shape) if lv.numel() == 5 else
                               g_full.sum().reshape(shape), rtol=1e-14, atol=1e-15)
    mu, lvq = f64(3, 5, seed=3).requires_grad_(), f64(3, 5, seed=4)
    assert torch.autograd.gradcheck(lambda a, b: ops.kl_normal(mu, lvq, a, b, SUM), (lv, lv.detach().clone()
                                                                                        .requires_grad_()))


def test_an_operand_that_broadcasts_only_over_the_batch_is_refused_by_the_op():
    x = torch.rand(3, 5)
    with pytest.raises(ValueError, match=r"fastvae.gaussian_nll: logvar must have shape \[3, 5\] or broadcast over"):
        ops.gaussian_nll(x, x, torch.zeros(3, 1))


OPCHECK_REDUCED = [
    ("gaussian_nll", lambda: (f64(3, 5), f64(3, 5, seed=1).requires_grad_(), f64(seed=2).requires_grad_(), SUM)),
    ("kl_normal", lambda: (f64(3, 4).requires_grad_(), f64(3, 4, seed=1), f64(1, 4, seed=2).requires_grad_(),
                           f64(seed=3).requires_grad_(), 0)),
    ("gaussian_nll", lambda: (f64(3, 5), f64(3, 5, seed=1).requires_grad_(), f64(5, seed=2).requires_grad_(), MEAN)),
    ("gaussian_nll_backward", lambda: (f64(), f64(3, 5), f64(2, 3, 5, seed=1), None, True, False, SUM)),
    ("bernoulli_nll", lambda: (f64(2, 3, 5).requires_grad_(), torch.rand(3, 5, dtype=torch.float64), MEAN, True)),
    ("bernoulli_nll_backward", lambda: (f64(), f64(3, 5), torch.rand(3, 5, dtype=torch.float64), MEAN)),
    ("kl_normal", lambda: (f64(3, 4).requires_grad_(), f64(3, 4, seed=1).requires_grad_(), f64(4, seed=2), None,
                           SUM)),
    ("kl_normal_backward", lambda: (f64(), f64(3, 4), f64(3, 4, seed=1), None, f64(4, seed=2),
                                    [True, True, False, True], MEAN)),
]


@pytest.mark.parametrize("case", OPCHECK_REDUCED, ids=lambda c: c[0])
def test_opcheck_with_a_reduction(case):
    name, make = case
    torch.library.opcheck(getattr(ops, name).default, make(), test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("bad", [3, -1])
def test_the_ops_refuse_an_unknown_reduction(bad):
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match="fastvae.kl_normal: reduction must be 0"):
        ops.kl_normal(x, x, None, None, bad)
    with pytest.raises(ValueError, match="fastvae.bernoulli_nll_backward: reduction must be 0"):
        ops.bernoulli_nll_backward(torch.ones(()), x, x, bad)


def test_a_reduced_backward_refuses_a_per_sample_gradient():
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match=r"fastvae.gaussian_nll_backward: grad must have shape \[\]"):
        ops.gaussian_nll_backward(torch.ones(2), x, x, None, True, False, MEAN)


def test_the_op_checks_x_in_the_unit_interval_when_asked():
    logits = torch.randn(2, 3)
    x = torch.rand(2, 3)
    ops.bernoulli_nll(logits, x, 0, True)
    x_nan = x.clone()
    x_nan[0, 0] = float("nan")
    assert ops.bernoulli_nll(logits, x_nan, 0, True)[0].isnan()  # NaN passes (a NaN in is a NaN out)
    for bad in (1.5, -0.1):
        xb = x.clone()
        xb[1, 2] = bad
        with pytest.raises(ValueError, match=r"fastvae.bernoulli_nll: x must lie in \[0, 1\]"):
            ops.bernoulli_nll(logits, xb, 0, True)
        ops.bernoulli_nll(logits, xb, 0, False)  # unchecked


class _Sub(torch.Tensor):
    """A tensor subclass: the public functions take their checked path for it."""


def _pairs():
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(s, generator=g, dtype=torch.float64)
    x = torch.rand((4, 6), generator=g, dtype=torch.float64)
    mu, lv, m, lvd, mp, lp = r(4, 3), r(4, 3), r(4, 6), r(6), r(3), r(4, 3)
    return [
        ("kl_normal", lambda f: fastvae.kl_normal(f(mu), f(lv))),
        ("kl_normal prior", lambda f: fastvae.kl_normal(f(mu), f(lv), f(mp), f(lp), reduction="sum")),
        ("gaussian_nll", lambda f: fastvae.gaussian_nll(f(x), f(m), f(lvd), reduction="none")),
        ("gaussian_nll unit", lambda f: fastvae.gaussian_nll(f(x), f(m))),
        ("gaussian_nll 0-dim logvar", lambda f: fastvae.gaussian_nll(f(x), f(m), f(lvd[0]), reduction="sum")),
        ("gaussian_nll (1, D) logvar", lambda f: fastvae.gaussian_nll(f(x), f(m), f(lvd[None]))),
        ("kl_normal (1, d) prior", lambda f: fastvae.kl_normal(f(mu), f(lv), f(mp[None]), f(lp[:1]))),
        ("bernoulli_nll", lambda f: fastvae.bernoulli_nll(f(x), f(m), reduction="sum")),
        ("reparameterize", lambda f: fastvae.reparameterize(f(mu), f(lv), n_samples=2)),
        ("reparameterize_kl", lambda f: fastvae.reparameterize_kl(f(mu), f(lv))),
        ("reparameterize_tril", lambda f: fastvae.reparameterize_tril(f(mu), f(_tril(4, 3)))),
        ("reparameterize_tril n_samples", lambda f: fastvae.reparameterize_tril(f(mu), f(_tril(4, 3)), n_samples=2)),
    ] + _distance_pairs(r)


def _tril(R, d):
    """A valid Cholesky factor (R, d, d), float64: a lower triangle with a diagonal away from zero."""
    A = f64(R, d, d, seed=9)
    return torch.tril(A, -1) + torch.diag_embed(1 + A.diagonal(dim1=-2, dim2=-1).abs())


def _distance_pairs(r):
    x, y, xb, yb = r(6, 3), r(6, 3), r(2, 5, 3), r(2, 5, 3)
    return [
        ("mmd", lambda f: fastvae.mmd(f(x), f(y))),
        ("mmd rbf bandwidths", lambda f: fastvae.mmd(f(x), f(y), kernel="rbf", bandwidth=[0.5, 2.0])),
        ("mmd prior imq", lambda f: fastvae.mmd(f(x))),
        ("mmd prior rbf biased", lambda f: fastvae.mmd(f(x), kernel="rbf", estimator="biased")),
        ("mmd batched", lambda f: fastvae.mmd(f(xb), f(yb), kernel="laplacian", bandwidth=(1.5,))),
        ("energy_distance", lambda f: fastvae.energy_distance(f(x), f(y))),
        ("energy_distance prior", lambda f: fastvae.energy_distance(f(xb))),
        ("sliced_wasserstein", lambda f: fastvae.sliced_wasserstein(f(x), f(y), n_projections=4)),
        ("sliced_wasserstein prior p=1", lambda f: fastvae.sliced_wasserstein(f(x), n_projections=3, p=1)),
        ("sliced_wasserstein batched", lambda f: fastvae.sliced_wasserstein(f(xb), f(yb), n_projections=5, p=1.5)),
        ("sliced_wasserstein batched prior", lambda f: fastvae.sliced_wasserstein(f(xb), n_projections=2)),
    ]


@pytest.mark.parametrize("case", _pairs(), ids=lambda c: c[0])
def test_the_fast_path_equals_the_checked_path(case):
    _, call = case
    torch.manual_seed(7)
    fast = call(lambda t: t)
    torch.manual_seed(7)
    checked = call(lambda t: t.as_subclass(_Sub))  # a subclass: the checked path
    fast, checked = (fast, checked) if isinstance(fast, tuple) else ((fast,), (checked,))
    for a, b in zip(fast, checked):
        assert type(a) is torch.Tensor
        torch.testing.assert_close(a, b.as_subclass(torch.Tensor), rtol=0, atol=0)


@pytest.mark.parametrize("case", [c for c in _pairs() if c[0].split()[0] in (
    "reparameterize_tril", "mmd", "energy_distance", "sliced_wasserstein")], ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_fast_path_gradients_equal_the_checked_path(case, dtype):
    """The fast path's autograd (`direct`: an autograd.Function of the op's formulas) against the checked path's
    (torch's registered autograd kernel), bitwise, with the same seed."""
    _, call = case

    def run(sub):
        leaves = []

        def f(t):
            leaf = t.to(dtype).requires_grad_()
            leaves.append(leaf)
            return leaf.as_subclass(_Sub) if sub else leaf
        torch.manual_seed(3)
        out = call(f)
        out = out if isinstance(out, tuple) else (out,)
        loss = sum((o.as_subclass(torch.Tensor).double() * (i + 1)).sum() for i, o in enumerate(out))
        return [o.as_subclass(torch.Tensor) for o in out], torch.autograd.grad(loss, leaves)
    out_fast, g_fast = run(False)
    out_checked, g_checked = run(True)
    for a, b in zip(out_fast + list(g_fast), out_checked + list(g_checked)):
        torch.testing.assert_close(a, b.as_subclass(torch.Tensor), rtol=0, atol=0)


def test_the_tril_op_checks_the_values_when_asked():
    mu, seed = torch.zeros(2, 3), torch.zeros(1, dtype=torch.int64)
    good = _tril(2, 3).float()
    ops.reparameterize_tril(mu, good, seed, None, True)
    nan_diag = good.clone()
    nan_diag[1, 2, 2] = float("nan")
    assert ops.reparameterize_tril(mu, nan_diag, seed, None, True)[1][1].isnan()  # NaN passes on the diagonal
    upper, nan_upper, zero = good.clone(), good.clone(), good.clone()
    upper[1, 0, 2] = 1e-30
    nan_upper[0, 1, 2] = float("nan")  # NaN is not zero: refused above the diagonal
    zero[1, 1, 1] = 0.0
    for bad, message in ((upper, "lower triangular"), (nan_upper, "lower triangular"), (zero, "singular")):
        with pytest.raises(ValueError, match=f"fastvae.reparameterize_tril: scale_tril (must be|is) {message}"):
            ops.reparameterize_tril(mu, bad, seed, None, True)
        ops.reparameterize_tril(mu, bad, seed, None, False)  # unchecked
        ops.reparameterize_tril(mu, bad, seed, None)  # unchecked by default
        with pytest.raises(ValueError, match=f"^fastvae.reparameterize_tril: scale_tril (must be|is) {message}"):
            fastvae.reparameterize_tril(mu, bad)
        fastvae.reparameterize_tril(mu, bad, validate_args=False)


def test_opcheck_tril_with_the_value_check():
    torch.library.opcheck(ops.reparameterize_tril.default, (f64(3, 4).requires_grad_(), _tril(3, 4).requires_grad_(),
                                                            torch.zeros(1, dtype=torch.int64), 2, True),
                          test_utils=OPCHECK_UTILS)


def test_a_refused_random_call_draws_one_seed():
    """A call the op refuses on the fast path is refused by the checked path with the seed already drawn: the
    generator moves as for one call."""
    torch.manual_seed(5)
    torch.randint(0, 2**62, (1,))
    want = torch.randint(0, 2**62, (1,))
    bad, x = _tril(2, 3), f64(4, 3)
    bad[0, 0, 2] = 1.0
    for refused in (lambda: fastvae.reparameterize_tril(x[:2], bad),
                    lambda: fastvae.mmd(x, bandwidth=-1.0),
                    lambda: fastvae.sliced_wasserstein(x, p=0.5)):
        torch.manual_seed(5)
        with pytest.raises(ValueError):
            refused()
        assert torch.equal(torch.randint(0, 2**62, (1,)), want)


def test_the_distances_fast_path_refuses_what_the_checked_path_refuses():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"^y must have 2 dims like x"):
        fastvae.mmd(x, x.unsqueeze(0))  # the op would take (1, 4, 3) against x unsqueezed
    with pytest.raises(ValueError, match=r"^bandwidth must be positive and finite; got nan"):
        fastvae.mmd(x, x, bandwidth=float("nan"))
    with pytest.raises(ValueError, match=r"^bandwidth must not be an empty sequence"):
        fastvae.mmd(x, x, bandwidth=[])
    with pytest.raises(ValueError, match=r"^kernel must be one of"):
        fastvae.mmd(x, x, kernel="gauss")
    with pytest.raises(ValueError, match=r"^x needs at least 2 samples"):
        fastvae.mmd(x[:1], x)
    xb = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"^y must have the batch size 2 of x; got 3"):
        fastvae.sliced_wasserstein(xb, torch.randn(3, 2, 5))  # B N equal: the projections alone would not tell
    with pytest.raises(ValueError, match=r"^y must have the dimension d = 5"):
        fastvae.sliced_wasserstein(xb, torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"^p must be a finite number >= 1; got inf"):
        fastvae.sliced_wasserstein(xb, p=float("inf"))
    with pytest.raises(ValueError, match=r"is empty"):
        fastvae.mmd(torch.randn(0, 4, 3), torch.randn(0, 4, 3))


def test_sliced_wasserstein_under_autocast_projects_in_the_samples_dtype():
    x, y = torch.randn(64, 8), torch.randn(64, 8)
    torch.manual_seed(1)
    want = fastvae.sliced_wasserstein(x, y, n_projections=16)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fastvae.sliced_wasserstein(x, y, n_projections=16)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_refused_fast_call_gives_the_public_message_and_consumes_no_extra_seed():
    with pytest.raises(ValueError, match=r"^logvar must have the shape of mu \(3, 4\); got \(3, 1\)$"):
        fastvae.kl_normal(torch.randn(3, 4), torch.randn(3, 1))
    with pytest.raises(ValueError, match=r"^mean must have the shape of x"):
        fastvae.gaussian_nll(torch.randn(3, 4), torch.randn(3, 5))
    # an operand the op does not take as it is (one value per sample) runs through the checked path's layout
    x, m = torch.rand(3, 4), torch.randn(3, 4)
    lv = torch.randn(3, 1)
    torch.testing.assert_close(fastvae.gaussian_nll(x, m, lv), fastvae.gaussian_nll(x, m, lv.expand(3, 4).clone()))


def test_bernoulli_old_order_is_still_recognised_on_the_fast_path():
    logits, x = torch.randn(3, 4) * 3, torch.rand(3, 4)
    logits[0, 0] = 5.0  # surely outside [0, 1]
    with pytest.warns(FutureWarning, match="fastvae 0.1's order"):
        old = fastvae.bernoulli_nll(logits, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = fastvae.bernoulli_nll(x, logits)
    torch.testing.assert_close(old, new)


@pytest.mark.slow
def test_the_overhead_rows_and_table():
    rows = overhead.overhead_rows("cpu", quick=True, names=["kl_normal", "bernoulli_nll", "mmd"], log=lambda m: None)
    got = {(r["shape"], r["provider"], r["mode"]) for r in rows if r["status"] == "ok"}
    for mode in overhead.MODES:
        for p in ("fastvae", "op", "eager"):
            assert ("kl_normal", p, mode) in got and ("mmd", p, mode) in got
        assert ("bernoulli_nll", "torch", mode) in got
    assert all(r["p50_ms"] > 0 for r in rows if r["status"] == "ok")
    table = overhead.overhead_table(rows)
    assert "| kl_normal | no_grad | float32 |" in table and "public / op" in table


@pytest.mark.slow
def test_the_functions_with_a_fast_path_compile_without_a_graph_break():
    """torch.compile traces the checked path (fused_call_ok is False while tracing): no graph break, the values of
    eager for the same seed (tril's value checks skipped while tracing, as documented)."""
    def f(x, y, mu, L):
        z, log_q = fastvae.reparameterize_tril(mu, L)
        return (fastvae.mmd(x, y) + fastvae.energy_distance(x) + fastvae.sliced_wasserstein(x, y, n_projections=3)
                + z.square().mean() - log_q.mean())
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = (f64(6, 3), f64(6, 3, seed=1), f64(4, 3, seed=2).requires_grad_(), _tril(4, 3).requires_grad_())
    torch.manual_seed(0)
    want = f(*args)
    g_want = torch.autograd.grad(want, args[2:])
    torch.manual_seed(0)
    got = compiled(*args)
    g_got = torch.autograd.grad(got, args[2:])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
