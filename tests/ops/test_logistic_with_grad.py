"""The single discretized logistic's forward with gradients (CPU; fastvae/ops/logistic.py's _with_grad, a C++
autograd node, and the op discretized_logistic_nll_with_grad): the kernel computes the per-sample losses' gradients
in the forward's pass and the backward scales them. It must give the plain path's values and gradients bit for bit
(the same per-element math, the same sums, the incoming gradient applied as the registered backward applies it),
recompute where a stored gradient is not finite, for a second backward and for double backward, and refuse to be
differentiated itself."""
import pytest
import torch

import fastvae
from fastvae.ops import logistic as L
from helpers import f64, gen

NLL = fastvae.discretized_logistic_nll
op_wg = torch.ops.fastvae.discretized_logistic_nll_with_grad


def data(shape, seed=0, dtype=torch.float64):
    k = torch.randint(0, 256, shape, generator=gen(seed))
    return (2 * k.to(torch.float64) / 255 - 1).to(dtype)


NODE = "torch::autograd::CppNode<fastvae::(anonymous namespace)::LogisticWithGrad>"  # the fast path's grad_fn


def _plain(monkeypatch):
    """The public function without the forward with gradients: its previous fast path (_registry.direct)."""
    monkeypatch.setattr(L, "_with_grad", lambda x, lg, m, ls, n_bits, r, v: L._nll(x, lg, m, ls, n_bits, r, v))


def _layouts(dtype):
    """(name, x, mean, log_scale): mean of x's shape, a sampled mean (k, *x.shape), a per-feature and a 0-dim
    log_scale; rows of more than one block of the kernel (D = 600) and of one (D = 24)."""
    x = data((3, 2, 12), dtype=dtype)
    xl = data((2, 600), seed=5, dtype=dtype)
    near = lambda x, s: x + 0.2 * f64(*x.shape, seed=s).to(dtype)  # noqa: E731  (a decoder's mean, near x)
    ls = lambda *shape, s: 0.5 * f64(*shape, seed=s).to(dtype) - 3  # noqa: E731
    return [("x's shape", x, near(x, 1), ls(3, 2, 12, s=2)),
            ("long rows", xl, near(xl, 3), ls(2, 600, s=4)),
            ("sampled mean", x, near(x.expand(4, 3, 2, 12), 6), ls(4, 3, 2, 12, s=7)),
            ("per-feature log_scale", x, near(x, 8), ls(2, 12, s=9)),
            ("0-dim log_scale", x, near(x, 10), torch.tensor(-2.5, dtype=dtype))]


def _run(x, m, ls, reduction, twice=False):
    """The loss and the gradients of (m, ls) for a fixed incoming gradient (with a zero in it: 0 times a finite
    gradient is 0, as the registered backward gives), and again through a retained graph when twice."""
    m, ls = m.detach().requires_grad_(), ls.detach().requires_grad_()
    out = NLL(x, m, ls, reduction=reduction)
    g = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape) if out.dim() else torch.tensor(
        0.7, dtype=out.dtype)
    if out.dim():
        g.view(-1)[0] = 0
    gm, gls = torch.autograd.grad(out, (m, ls), g, retain_graph=twice)
    res = [out.detach(), gm, gls]
    if twice:
        res += torch.autograd.grad(out, (m, ls), g)
    return out.grad_fn.name(), res


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_values_and_gradients_are_the_plain_paths_bit_for_bit(reduction, dtype, monkeypatch, each_isa):
    for name, x, m, ls in _layouts(dtype):
        kind, got = _run(x, m, ls, reduction, twice=True)
        assert kind == NODE, name  # (the path under test was taken)
        with monkeypatch.context() as mp:
            _plain(mp)
            kind2, want = _run(x, m, ls, reduction, twice=True)
        assert kind2 != kind
        for a, b, what in zip(got, want, ("loss", "grad mean", "grad log_scale", "2nd grad mean", "2nd log_scale")):
            assert a.shape == b.shape and a.dtype == b.dtype, (name, what)
            assert torch.equal(a, b), (name, what, (a - b).abs().max())


def test_no_gradient_wanted_takes_the_plain_op():
    x, m, ls = data((2, 5)), f64(2, 5, seed=1), f64(2, 5, seed=2)
    assert NLL(x, m, ls).grad_fn is None
    with torch.no_grad():
        assert NLL(x, m.requires_grad_(), ls).grad_fn is None
    xg = x.clone().requires_grad_()  # x is data: its gradient is 0, and it alone asks for no forward with gradients
    loss = NLL(xg, m.detach(), ls)
    assert loss.grad_fn.name() != NODE
    loss.backward()
    assert torch.equal(xg.grad, torch.zeros_like(x))


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_a_gradient_that_is_not_finite_is_recomputed(reduction, monkeypatch):
    """float32, a scale of e^-200 (its e^100 overflows) and a mean 0.3 off x: the loss and the stored gradients of
    that sample are infinite (nonfinite = 1). They are then not used: the registered backward recomputes, where the
    zero incoming gradient of that sample (reduction "none") gives 0, not 0 * inf = NaN."""
    x = data((3, 4), dtype=torch.float32)
    m = x.clone()
    m[0, 0] += 0.3
    ls = torch.full((3, 4), -3.0)
    ls[0] = -200.0
    out, nonfinite, gm, gls = op_wg(x, m, ls, 8, 0, False)
    assert int(nonfinite) == 1 and torch.isinf(out[0]) and torch.isinf(gm[0, 0])
    kind, got = _run(x, m, ls, reduction, twice=True)
    assert kind == NODE
    with monkeypatch.context() as mp:
        _plain(mp)
        _, want = _run(x, m, ls, reduction, twice=True)
    for a, b in zip(got, want):
        assert torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0))
    if reduction == "none":
        assert torch.equal(got[1][0], torch.zeros(4))  # the zero incoming gradient of the infinite sample


def test_the_flag_says_whether_every_gradient_is_finite():
    x = data((2, 300))
    m, ls = x + 0.01, torch.full((2, 300), -3.0, dtype=torch.float64)
    assert int(op_wg(x, m, ls, 8, 0, False)[1]) == 0
    ls[1, 299] = float("nan")  # the last element of a row of more than one block
    out, nonfinite, gm, gls = op_wg(x, m, ls, 8, 0, False)
    assert int(nonfinite) == 1 and torch.isnan(out[1]) and torch.isfinite(out[0])


def test_double_backward_is_refused_as_on_the_plain_path():
    x = data((2, 5))
    m, ls = f64(2, 5, seed=1).requires_grad_(), f64(2, 5, seed=2).requires_grad_()
    loss = NLL(x, m, ls)
    assert loss.grad_fn.name() == NODE
    (gm,) = torch.autograd.grad(loss, m, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through fastvae.discretized_logistic_nll"):
        gm.sum().backward()


def test_the_op_itself_has_no_derivative():
    x = data((2, 5))
    m, ls = f64(2, 5, seed=1).requires_grad_(), f64(2, 5, seed=2)
    out = op_wg(x, m, ls, 8, 0, False)[0]
    with pytest.raises(RuntimeError, match="has no derivative of its own: differentiate "
                                           "fastvae.discretized_logistic_nll"):
        out.sum().backward()


def test_the_op_checks_its_arguments():
    x, m = data((2, 5)), f64(2, 5, seed=1)
    with pytest.raises(ValueError, match="without logit_probs means must have K = 1"):
        op_wg(x, m[..., None].expand(2, 5, 3), m[..., None].expand(2, 5, 3), 8)
    with pytest.raises(ValueError, match="x must lie in"):
        op_wg(x + 0.004, m, m, 8, 0, True)
    with pytest.raises(ValueError, match="reduction must be"):
        op_wg(x, m, m, 8, 3)
    out, nonfinite, gm, gls = op_wg(x, m, m, 8, 2)
    assert out.shape == () and nonfinite.dtype == torch.int32 and gm.shape == gls.shape == m.shape


def test_opcheck():
    x = data((2, 5))
    m, ls = f64(2, 5, seed=1), f64(2, 5, seed=2)
    torch.library.opcheck(op_wg, (x, m, ls, 8, 1, True),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
