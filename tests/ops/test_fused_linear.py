"""fastvae.linear_bce_with_logits: the decoder's last linear layer fused with its Bernoulli loss, in chunks, against
F.binary_cross_entropy_with_logits(F.linear(...)) in float64 (values, gradients of input, weight and bias, every
reduction, chunk boundaries, per-row incoming gradients, double backward), float32 to its rounding, its memory (the
logits never whole), bad input and the unfused fallbacks."""
import pytest
import torch
import torch.nn.functional as F

import fastvae
from fastvae.ops.fused_linear import _CHUNK_BYTES, _chunks

from helpers import gen

L = fastvae.linear_bce_with_logits


def _inputs(B=13, H=7, D=9, dtype=torch.float64, seed=0):
    g = gen(seed)
    h = torch.randn(B, H, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(D, H, generator=g, dtype=dtype) * 0.7).requires_grad_()
    b = torch.randn(D, generator=g, dtype=dtype).requires_grad_()
    x = torch.rand(B, D, generator=g, dtype=dtype)
    return h, w, b, x


def _ref(h, w, b, x, reduction):
    e = F.binary_cross_entropy_with_logits(F.linear(h, w, b), x, reduction="none")
    return e.sum(-1) if reduction == "none" else e.sum() if reduction == "sum" else e.mean()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [None, 1, 4, 13, 100])
def test_values_and_gradients_against_torch_float64(reduction, chunk_size):
    h, w, b, x = _inputs()
    got = L(h, w, x, b, reduction=reduction, chunk_size=chunk_size)
    want = _ref(h, w, b, x, reduction)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    g = torch.randn(want.shape, generator=gen(5), dtype=torch.float64)  # per-row: not uniform
    for a, c in zip(torch.autograd.grad(got, (h, w, b), g), torch.autograd.grad(want, (h, w, b), g)):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_and_gradgradcheck(reduction):
    h, w, b, x = _inputs(B=5, H=3, D=4)
    f = lambda h, w, b: L(h, w, x, b, reduction=reduction, chunk_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(f, (h, w, b))
    assert torch.autograd.gradgradcheck(f, (h, w, b))


def test_float32_within_its_rounding():
    # float32 sums of D = 300 terms and a matmul over H = 64: errors of a few eps times the summed magnitudes
    h, w, b, x = _inputs(B=40, H=64, D=300, dtype=torch.float32, seed=2)
    got = L(h, w, x, b, reduction="sum", chunk_size=7)
    h64, w64, b64 = (t.detach().double().requires_grad_() for t in (h, w, b))
    want = _ref(h64, w64, b64, x.double(), "sum")
    mag = float(F.binary_cross_entropy_with_logits(F.linear(h64, w64, b64), x.double(), reduction="none").abs().sum())
    assert abs(float(got) - float(want)) <= 64 * 2**-24 * mag
    for a, c in zip(torch.autograd.grad(got, (h, w, b)), torch.autograd.grad(want, (h64, w64, b64))):
        torch.testing.assert_close(a.double(), c, rtol=2e-5, atol=2e-5 * float(c.abs().max()))


def test_without_bias_and_with_some_inputs_frozen():
    h, w, b, x = _inputs()
    w.requires_grad_(False)
    got = L(h, w, x, None, reduction="mean")
    want = _ref(h, w, None, x, "mean")
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    (a,) = torch.autograd.grad(got, h)
    (c,) = torch.autograd.grad(want, h)
    torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_no_grad_gives_the_same_values():
    h, w, b, x = _inputs(dtype=torch.float32)
    with torch.no_grad():
        a = L(h, w, x, b, reduction="none", chunk_size=3)
    torch.testing.assert_close(a, L(h, w, x, b, reduction="none", chunk_size=3).detach(), rtol=0, atol=0)


def test_a_target_that_needs_its_gradient_takes_the_unfused_form():
    h, w, b, x = _inputs()
    x.requires_grad_()
    got = L(h, w, x, b, reduction="sum")
    (gx,) = torch.autograd.grad(got, x)
    (want,) = torch.autograd.grad(_ref(h, w, b, x, "sum"), x)
    torch.testing.assert_close(gx, want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_an_empty_batch_gives_torchs_value(reduction):
    h, w, b, x = _inputs(B=0)
    torch.testing.assert_close(L(h, w, x, b, reduction=reduction), _ref(h, w, b, x, reduction), equal_nan=True)


def test_nan_in_is_nan_out():
    h, w, b, x = _inputs()
    h = h.detach().clone()
    h[3, 1] = float("nan")
    h.requires_grad_()
    out = L(h, w, x, b, reduction="none", chunk_size=4)
    assert out[3].isnan() and out[torch.arange(13) != 3].isfinite().all()
    gh, gw = torch.autograd.grad(out.sum(), (h, w))
    assert gh[3].isnan().all() and gh[torch.arange(13) != 3].isfinite().all() and gw.isnan().any()


def test_the_logits_never_exist_whole():
    # a (B, D) float32 tensor would be 2048 x 2048 x 4 = 16 MiB; the chunks hold at most _CHUNK_BYTES of logits and
    # their gradient together, and the backward keeps the gradients of h, weight and bias
    B, H, D = 2048, 32, 2048
    assert max(j - i for i, j in _chunks(B, D, None)) * D * 8 <= _CHUNK_BYTES
    h, w, b, x = _inputs(B=B, H=H, D=D, dtype=torch.float32)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        out = L(h, w, x, b)
    assert B * D not in sizes[4:]  # beyond the inputs (h, weight, target, bias): the gradients only
    out.backward()


def test_bad_input_names_the_argument():
    h, w, b, x = _inputs()
    with pytest.raises(ValueError, match="weight must be \\(D, H\\) with H = 7"):
        L(h, w.t(), x, b)
    with pytest.raises(ValueError, match="bias must be \\(9,\\)"):
        L(h, w, x, b[:3])
    with pytest.raises(ValueError, match="target must be \\(B, D\\) = \\(13, 9\\)"):
        L(h, w, x[:4], b)
    with pytest.raises(ValueError, match="input must be \\(B, H\\)"):
        L(h[0], w, x, b)
    with pytest.raises(TypeError, match="target must be a floating-point tensor"):
        L(h, w, x.long(), b)
    with pytest.raises(ValueError, match="reduction must be one of"):
        L(h, w, x, b, reduction="batchmean")
    with pytest.raises(ValueError, match="chunk_size must be None or an int >= 1"):
        L(h, w, x, b, chunk_size=0)


def test_torch_func_transforms_and_forward_ad_give_torchs_values():
    h, w, b, x = (t.detach() for t in _inputs(B=4, H=3, D=5))
    f = lambda h: L(h, w, x, b, reduction="sum")  # noqa: E731
    r = lambda h: _ref(h, w, b, x, "sum")  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(h), torch.func.grad(r)(h))
    torch.testing.assert_close(torch.func.jacfwd(f)(h), torch.func.jacfwd(r)(h))
    v = torch.randn_like(h)
    torch.testing.assert_close(torch.func.jvp(f, (h,), (v,))[1], torch.func.jvp(r, (h,), (v,))[1])
    per_row = torch.func.vmap(lambda hi, xi: L(hi[None], w, xi[None], b, reduction="sum"))(h, x)
    torch.testing.assert_close(per_row, _ref(h, w, b, x, "none"))
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(L(fwAD.make_dual(h, v), w, x, b, reduction="none")).tangent
    torch.testing.assert_close(tangent, torch.func.jvp(lambda h: _ref(h, w, b, x, "none"), (h,), (v,))[1])
