"""The discretized logistic mixture's forward with gradients (CPU; fastvae/ops/logistic.py's _with_grad, a C++ autograd
node, and the op discretized_logistic_mixture_nll_with_grad): the kernel computes the per-sample losses' gradients
with respect to logit_probs, means and log_scales in the forward's pass and the backward scales them. Its loss is the
plain forward's and its gradients the registered backward's, bit for bit (the same log masses, log-sum-exps and sums,
the incoming gradient multiplied last on both paths); it recomputes where a stored gradient is not finite and for a
second backward, refuses double backward as the plain path does, and the op refuses to be differentiated itself."""
import pytest
import torch

import fastvae
from fastvae.ops import logistic as L
from helpers import gen

MIX = fastvae.discretized_logistic_mixture_nll
op_wg = torch.ops.fastvae.discretized_logistic_mixture_nll_with_grad
NODE = "torch::autograd::CppNode<fastvae::(anonymous namespace)::LogisticWithGrad>"  # the fast path's grad_fn


def data(shape, seed=0, dtype=torch.float64):
    k = torch.randint(0, 256, shape, generator=gen(seed))
    return (2 * k.to(torch.float64) / 255 - 1).to(dtype)


def params(shape, K, seed, dtype):
    g = gen(seed)
    lg = torch.randn(*shape, K, generator=g, dtype=torch.float64) * 2
    m = torch.randn(*shape, K, generator=g, dtype=torch.float64) * 0.5
    ls = torch.randn(*shape, K, generator=g, dtype=torch.float64) * 1.5 - 2
    return lg.to(dtype), m.to(dtype), ls.to(dtype)


def _plain(monkeypatch):
    """The public function without the forward with gradients: the op and its registered backward."""
    monkeypatch.setattr(L, "_with_grad", lambda x, lg, m, ls, n_bits, r, v: L._nll(x, lg, m, ls, n_bits, r, v))


def _layouts(dtype):
    """(name, x, logit_probs, means, log_scales): a mixture of x's shape, rows of more than one block and chunk of the
    kernel (D = 600), a sampled one (k, *x.shape, K) and K = 1."""
    x, xl = data((3, 2, 12), dtype=dtype), data((2, 600), seed=5, dtype=dtype)
    return [("K 4", x, *params((3, 2, 12), 4, 1, dtype)),
            ("long rows, K 10", xl, *params((2, 600), 10, 2, dtype)),
            ("sampled, K 3", x, *params((4, 3, 2, 12), 3, 3, dtype)),
            ("K 1", x, *params((3, 2, 12), 1, 4, dtype))]


def _run(x, params, reduction, needs=(True, True, True), twice=True):
    """The loss and the gradients of the parameters that need one, for a fixed incoming gradient (with a zero in it),
    and again through a retained graph when twice."""
    ps = [p.detach().requires_grad_(n) for p, n in zip(params, needs)]
    out = MIX(x, *ps, reduction=reduction)
    g = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape) if out.dim() else torch.tensor(
        0.7, dtype=out.dtype)
    if out.dim():
        g.view(-1)[0] = 0
    wanted = [p for p in ps if p.requires_grad]
    res = [out.detach(), *torch.autograd.grad(out, wanted, g, retain_graph=twice)]
    if twice:
        res += torch.autograd.grad(out, wanted, g)
    return out.grad_fn.name(), res


def _same(got, want, name):
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), (
            name, (a - b).abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_values_and_gradients_are_the_plain_paths_bit_for_bit(reduction, dtype, monkeypatch, each_isa):
    for name, x, *ps in _layouts(dtype):
        kind, got = _run(x, ps, reduction)
        assert kind == NODE, name  # (the path under test was taken)
        with monkeypatch.context() as mp:
            _plain(mp)
            kind2, want = _run(x, ps, reduction)
        assert kind2 != kind
        _same(got, want, name)


@pytest.mark.parametrize("needs", [(False, True, False), (True, False, False), (False, False, True)])
def test_some_parameters_without_gradient(needs, monkeypatch):
    name, x, *ps = _layouts(torch.float64)[0]
    kind, got = _run(x, ps, "none", needs)
    assert kind == NODE
    _plain(monkeypatch)
    _same(got, _run(x, ps, "none", needs)[1], needs)


def test_a_gradient_that_is_not_finite_is_recomputed(monkeypatch):
    """A NaN log_scale: that sample's loss and stored gradients are NaN (nonfinite = 1), so the backward recomputes
    through the registered backward; the other samples keep their values."""
    name, x, *ps = _layouts(torch.float32)[0]
    ps[2] = ps[2].clone()
    ps[2][1, 0, 3, 2] = float("nan")
    out, nonfinite, *grads = op_wg(x, *ps, 8, 0, False)
    assert int(nonfinite) == 1 and torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    kind, got = _run(x, ps, "none")
    assert kind == NODE
    _plain(monkeypatch)
    _same(got, _run(x, ps, "none")[1], name)


def test_the_flag_says_whether_every_gradient_is_finite():
    x = data((2, 300))
    lg, m, ls = params((2, 300), 5, 6, torch.float64)
    assert int(op_wg(x, lg, m, ls, 8, 0, False)[1]) == 0
    m[1, 299, 4] = float("nan")  # the last element of a row of more than one block
    out, nonfinite, *grads = op_wg(x, lg, m, ls, 8, 0, False)
    assert int(nonfinite) == 1 and torch.isnan(out[1]) and torch.isfinite(out[0])


def test_no_gradient_wanted_takes_the_plain_op():
    name, x, *ps = _layouts(torch.float64)[0]
    assert MIX(x, *ps).grad_fn is None
    with torch.no_grad():
        assert MIX(x, *(p.requires_grad_() for p in ps)).grad_fn is None


def test_double_backward_is_refused_as_on_the_plain_path():
    name, x, *ps = _layouts(torch.float64)[0]
    ps = [p.requires_grad_() for p in ps]
    loss = MIX(x, *ps)
    assert loss.grad_fn.name() == NODE
    (gm,) = torch.autograd.grad(loss, ps[1], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through fastvae.discretized_logistic_nll"):
        gm.sum().backward()


def test_the_op_itself_has_no_derivative():
    name, x, lg, m, ls = _layouts(torch.float64)[0]
    out = op_wg(x, lg, m.requires_grad_(), ls, 8, 0, False)[0]
    with pytest.raises(RuntimeError, match="has no derivative of its own: differentiate "
                                           "fastvae.discretized_logistic_mixture_nll"):
        out.sum().backward()


def test_the_op_checks_its_arguments():
    name, x, lg, m, ls = _layouts(torch.float64)[0]
    op = "discretized_logistic_mixture_nll_with_grad"
    with pytest.raises(ValueError, match=f"fastvae.{op}: logit_probs must have shape"):
        op_wg(x, lg[..., :2], m, ls, 8)
    with pytest.raises(ValueError, match=f"fastvae.{op}: x must lie in"):
        op_wg(x + 0.004, lg, m, ls, 8, 0, True)
    with pytest.raises(ValueError, match=f"fastvae.{op}: reduction must be"):
        op_wg(x, lg, m, ls, 8, 3)
    with pytest.raises(TypeError, match=f"fastvae.{op}: "):
        op_wg(x, lg.to(torch.int64), m, ls, 8)
    out, nonfinite, g_lg, g_m, g_ls = op_wg(x, lg, m, ls, 8, 2)
    assert out.shape == () and nonfinite.dtype == torch.int32 and g_lg.shape == g_m.shape == g_ls.shape == m.shape


def test_opcheck():
    name, x, lg, m, ls = _layouts(torch.float64)[0]
    torch.library.opcheck(op_wg, (x, lg, m, ls, 8, 1, True),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_gradients_against_float64_finite_differences():
    x = data((2, 3))
    ps = [p.requires_grad_() for p in params((2, 3), 3, 7, torch.float64)]
    assert MIX(x, *ps).grad_fn.name() == NODE
    assert torch.autograd.gradcheck(lambda *p: MIX(x, *p, reduction="none"), ps)
