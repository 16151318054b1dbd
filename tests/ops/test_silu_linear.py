"""fastvae.silu_linear: F.linear(F.silu(input), weight, bias) keeping only its input for the backward (SiLU recomputed
there). Against the plain form: values bitwise (the same torch ops in the forward), gradients of input, weight and
bias to rounding (float64 1e-12: the same products summed by other matmul calls; float32 1e-5), gradcheck and
gradgradcheck, 3-D inputs, no bias; what the backward keeps (one activation less per layer); the plain form under
no grad, autocast, torch.func and forward AD; bad input named."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd.forward_ad import dual_level, make_dual, unpack_dual

import fastvae

from helpers import gen

S = fastvae.silu_linear


def _inputs(shape=(11, 7), D=5, dtype=torch.float64, bias=True, seed=0):
    g = gen(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    w = torch.randn(D, shape[-1], generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(D, generator=g, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    return x, w, b


def _plain(x, w, b):
    return F.linear(F.silu(x), w, b)


def _grads(fn, leaves, g):
    out = fn(*leaves)
    return out, torch.autograd.grad(out, [t for t in leaves if t is not None], g)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=str)
@pytest.mark.parametrize("shape,bias", [((11, 7), True), ((3, 4, 7), True), ((11, 7), False), ((1, 1), True)])
def test_values_and_gradients_are_the_plain_forms(shape, bias, dtype, tol):
    leaves = _inputs(shape, dtype=dtype, bias=bias)
    g = torch.randn(*shape[:-1], 5, generator=gen(3), dtype=torch.float64).to(dtype)
    out, grads = _grads(S, leaves, g)
    assert out.grad_fn is not None and "SiLULinear" in type(out.grad_fn).__name__  # (the fused path was taken)
    ref, ref_grads = _grads(_plain, leaves, g)
    assert torch.equal(out, ref)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=tol, atol=tol)


def test_gradcheck_and_gradgradcheck():
    x, w, b = _inputs((4, 3), D=2)
    assert torch.autograd.gradcheck(S, (x, w, b))
    assert torch.autograd.gradgradcheck(S, (x, w, b))


def _saved_bytes(fn, *args):
    """Bytes of the distinct tensors the autograd graph keeps for the backward (saved-tensor hooks)."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(seen.values())


def test_an_mlp_keeps_one_activation_per_hidden_layer_where_nn_keeps_two():
    B, H = 256, 64
    x = torch.randn(B, 32, generator=gen(1))
    W1, W2, W3 = (torch.randn(o, i, generator=gen(k)).requires_grad_() for k, (o, i) in
                  enumerate([(H, 32), (H, H), (8, H)]))

    def plain(x):
        return F.linear(F.silu(F.linear(F.silu(F.linear(x, W1)), W2)), W3)

    def fused(x):
        return S(S(F.linear(x, W1), W2), W3)
    act = B * H * 4  # one hidden activation, float32
    # plain: x, h1, silu(h1), h2, silu(h2), W2, W3 (W1 only for x's gradient, not wanted); fused: x, h1, h2, W2, W3
    assert _saved_bytes(plain, x) - _saved_bytes(fused, x) == 2 * act
    assert _saved_bytes(fused, x) == x.numel() * 4 + 2 * act + (W2.numel() + W3.numel()) * 4
    torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=0)


def test_the_plain_form_where_nothing_is_saved_or_a_transform_runs():
    x, w, b = _inputs((6, 4))
    with torch.no_grad():
        assert S(x, w, b).grad_fn is None and torch.equal(S(x, w, b), _plain(x, w, b))
    # torch.func: grad, vmap and jvp through the plain form
    gx = torch.func.grad(lambda t: S(t, w, b).sum())(x.detach())
    torch.testing.assert_close(gx, torch.func.grad(lambda t: _plain(t, w, b).sum())(x.detach()))
    vm = torch.func.vmap(lambda t: S(t, w, b))(x.detach())
    torch.testing.assert_close(vm, _plain(x, w, b).detach())
    tangent = torch.randn(6, 4, generator=gen(4), dtype=torch.float64)
    _, jv = torch.func.jvp(lambda t: S(t, w.detach(), b.detach()), (x.detach(),), (tangent,))
    _, jv_ref = torch.func.jvp(lambda t: _plain(t, w.detach(), b.detach()), (x.detach(),), (tangent,))
    torch.testing.assert_close(jv, jv_ref)
    with dual_level():
        out = S(make_dual(x.detach(), tangent), w.detach(), b.detach())
        torch.testing.assert_close(unpack_dual(out).tangent, jv_ref)
    # autocast: the plain form under autocast (bfloat16 matmul)
    xf, wf, bf = (t.detach().float().requires_grad_() for t in (x, w, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, r = S(xf, wf, bf), _plain(xf, wf, bf)
    assert a.dtype == r.dtype == torch.bfloat16 and torch.equal(a, r)


@pytest.mark.parametrize("call,exc,msg", [
    (lambda x, w, b: S(x.detach().numpy(), w, b), TypeError, "input must be a tensor"),
    (lambda x, w, b: S(x.long(), w, b), TypeError, "input must be a floating-point tensor; got torch.int64"),
    (lambda x, w, b: S(x, w.t(), b), ValueError, r"weight must be \(D, H\) with H = 4"),
    (lambda x, w, b: S(x, w, b[:2]), ValueError, r"bias must be \(5,\)"),
    (lambda x, w, b: S(x, w.float(), b), TypeError, "weight must have input's dtype torch.float64; got torch.float32"),
    (lambda x, w, b: S(x, w, 1.0), TypeError, "bias must be a tensor or None; got float"),
    (lambda x, w, b: S(x[0, 0], w, b), ValueError, "input must have a feature dim"),
])
def test_bad_input_is_named(call, exc, msg):
    x, w, b = _inputs((6, 4))
    with pytest.raises(exc, match="fastvae.silu_linear: " + msg):
        call(x, w, b)
