"""A decoder's last linear layer fused with its Bernoulli loss, for large batches: Liger-Kernel's answer for large
vocabularies (the output projection and the cross-entropy in chunks, never the whole logits) applied to a VAE's
pixels.

    linear_bce_with_logits(h, weight, target, bias) == F.binary_cross_entropy_with_logits(F.linear(h, weight, bias),
                                                                                         target, reduction=...)

computed in chunks of rows: each chunk's logits (rows x D), its loss and d loss / d logits (fastvae's fused
Bernoulli kernel, one pass), and at once the chunk's share of the gradients of h, weight and bias (two matmuls). The
(B, D) logits and their gradient never exist whole: the peak is a chunk's (about 16 MiB of them by default), and what is
kept for the backward is the gradients themselves (the size of h, weight and bias), scaled by the incoming gradient
there. Where that cannot be (a per-row incoming gradient that is not uniform, with reduction="none"; a double
backward), the backward recomputes from the saved inputs, chunk by chunk, or through torch's ops.

Reductions as torch's: "mean" over all B x D elements, "sum", and "none" gives the (B,) per-row sums (the per-sample
negative log-likelihood a VAE wants; the (B, D) elements are what this op exists not to build). A target that needs
its gradient, an empty batch, a torch.func transform and forward-mode AD take the unfused form (F.linear, then the
loss)."""
import torch
import torch.nn.functional as F

from ._transforms import fused_call_ok

__all__ = ["linear_bce_with_logits", "silu_linear"]

_REDUCTIONS = ("none", "mean", "sum")
_CHUNK_BYTES = 16 * 2**20  # logits and their gradient of one chunk, float32


def _check_tensors(name, tensors, bias):
    """Each (arg, t) of tensors a floating-point tensor, bias a tensor or None: else a TypeError naming name and arg."""
    for arg, t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a tensor; got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: {arg} must be a floating-point tensor; got {t.dtype}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{name}: bias must be a tensor or None; got {type(bias).__name__}")


def _check(h, weight, target, bias, reduction, chunk_size):
    name = "fastvae.linear_bce_with_logits"
    _check_tensors(name, (("input", h), ("weight", weight), ("target", target)), bias)
    if h.dim() != 2:
        raise ValueError(f"{name}: input must be (B, H); got shape {tuple(h.shape)}")
    if weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"{name}: weight must be (D, H) with H = {h.shape[1]} (input's last dim, as nn.Linear's "
                         f"weight); got shape {tuple(weight.shape)}")
    D = weight.shape[0]
    if bias is not None and bias.shape != (D,):
        raise ValueError(f"{name}: bias must be ({D},) (weight's first dim); got shape {tuple(bias.shape)}")
    if target.shape != (h.shape[0], D):
        raise ValueError(f"{name}: target must be (B, D) = {(h.shape[0], D)}; got shape {tuple(target.shape)}")
    for arg, t in (("weight", weight), ("target", target), ("bias", bias)):
        if t is not None and t.device != h.device:
            raise ValueError(f"{name}: {arg} is on {t.device}, input on {h.device}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}; got {reduction!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"{name}: chunk_size must be None or an int >= 1; got {chunk_size!r}")


def _unfused(h, weight, target, bias, reduction):
    logits = F.linear(h, weight, bias)
    if reduction == "none":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
    return F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)


def _chunks(B, D, chunk_size):
    c = chunk_size or max(1, _CHUNK_BYTES // (8 * max(D, 1)))
    return [(i, min(B, i + c)) for i in range(0, B, c)]


def _rows_and_dlogits(logits, target, factor, want_grad):
    """(factor * the per-row BCE sums, d of them / d logits or None) of one chunk (fastvae's fused kernel)."""
    D = logits.shape[1]
    if logits.dtype not in (torch.float32, torch.float64):  # (16-bit logits under autocast: the loss in float32)
        logits = logits.float()
    target = target.to(logits.dtype)
    if not want_grad:
        return torch.ops.fastvae.dropin_bce_with_logits(logits, target, None, None, factor, D), None
    if logits.device.type == "cpu":
        out, _, dl, _ = torch.ops.fastvae.dropin_bce_with_logits_with_grad(logits, target, None, None, factor, D,
                                                                          [True, False])
    else:
        out = torch.ops.fastvae.dropin_bce_with_logits(logits, target, None, None, factor, D)
        dl, _ = torch.ops.fastvae.dropin_bce_with_logits_backward(torch.ones_like(out), logits, target, None, None,
                                                                  factor, D, [True, False])
    return out, dl.view(logits.shape)


def _factor(reduction, target):
    """The kernel's factor: 1 / (B D) for torch's "mean" over elements, else 1."""
    n = target.numel()
    return 1.0 / n if reduction == "mean" else 1.0


def _reduce(rows, reduction, dtype):
    """The (B,) per-row sums (factor included) as the reduction asks, in the input's dtype."""
    out = rows if reduction == "none" else rows.sum()
    return out if out.dtype == dtype else out.to(dtype)


def _pass(h, weight, target, bias, factor, chunk_size, row_scale=None, want=(True, True, True)):
    """The chunked pass: per-row losses (B,) and the gradients of h, weight, bias wanted (None otherwise), each row's
    share scaled by row_scale[r] when given."""
    B, D = target.shape
    rows = torch.empty(B, dtype=torch.float32 if h.dtype != torch.float64 else h.dtype, device=h.device)
    gh = torch.empty_like(h) if want[0] else None
    gw = torch.zeros(weight.shape, dtype=torch.float32 if weight.dtype != torch.float64 else weight.dtype,
                     device=weight.device) if want[1] else None
    gb = torch.zeros(D, dtype=gw.dtype if gw is not None else torch.float32, device=h.device) \
        if want[2] and bias is not None else None
    for i, j in _chunks(B, D, chunk_size):
        logits = F.linear(h[i:j], weight, bias)
        out, dl = _rows_and_dlogits(logits, target[i:j], factor, any(want))
        rows[i:j] = out
        if dl is None:
            continue
        if row_scale is not None:
            dl = dl * row_scale[i:j, None].to(dl.dtype)
        dl = dl.to(logits.dtype)
        if gh is not None:
            gh[i:j] = dl @ weight.to(dl.dtype)
        if gw is not None:
            gw += (dl.t() @ h[i:j].to(dl.dtype)).to(gw.dtype)
        if gb is not None:
            gb += dl.sum(0).to(gb.dtype)
        del logits, dl
    return rows, gh, gw, gb


class _LinearBce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, target, bias, reduction, chunk_size):
        factor = _factor(reduction, target)
        want = ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[3]
        rows, gh, gw, gb = _pass(h, weight, target, bias, factor, chunk_size, want=want)
        ctx.reduction, ctx.chunk_size, ctx.factor = reduction, chunk_size, factor
        ctx.save_for_backward(h, weight, target, bias, gh, gw, gb)
        return _reduce(rows, reduction, h.dtype)

    @staticmethod
    def backward(ctx, grad):
        h, weight, target, bias, gh, gw, gb = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: torch's ops on the saved inputs, differentiable again
            needs = ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[3]
            wrt = [t for t, n in zip((h, weight, bias), needs) if n]
            got = iter(torch.autograd.grad(_unfused(h, weight, target, bias, ctx.reduction), wrt, grad,
                                           create_graph=True))
            res = [next(got) if n else None for n in needs]
            return res[0], res[1], None, res[2], None, None
        if ctx.reduction == "none" and grad.numel() and not bool((grad == grad.reshape(-1)[0]).all()):
            # a per-row incoming gradient: the chunked pass again, each row scaled by its own
            want = ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[3]
            _, gh, gw, gb = _pass(h, weight, target, bias, ctx.factor, ctx.chunk_size, row_scale=grad.detach(),
                                  want=want)
            g = None
        else:
            g = grad.reshape(-1)[0] if grad.numel() else grad.new_zeros(())

        def scale(t, like):
            return None if t is None else (t * g if g is not None else t).to(like.dtype)
        return scale(gh, h), scale(gw, weight), None, scale(gb, bias) if bias is not None else None, None, None


def linear_bce_with_logits(input, weight, target, bias=None, *, reduction="mean", chunk_size=None):
    """F.binary_cross_entropy_with_logits(F.linear(input, weight, bias), target, reduction) without the (B, D) logits:
    see the module docstring. input (B, H), weight (D, H) (nn.Linear's), bias (D,) or None, target (B, D) in [0, 1];
    reduction "mean" (over all elements, torch's), "sum", or "none" (the (B,) per-row sums). chunk_size: rows per
    chunk (default: about 16 MiB of logits and gradient per chunk)."""
    _check(input, weight, target, bias, reduction, chunk_size)
    mixed64 = any(t is not None and t.dtype == torch.float64 and t.dtype != input.dtype for t in (weight, bias))
    if target.requires_grad or target.numel() == 0 or mixed64 or not fused_call_ok():
        return _unfused(input, weight, target, bias, reduction)
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (input, weight, bias)):
        rows = _pass(input, weight, target, bias, _factor(reduction, target), chunk_size, want=(False,) * 3)[0]
        return _reduce(rows, reduction, input.dtype)
    return _LinearBce.apply(input, weight, target, bias, reduction, chunk_size)


# ---- SiLU then a linear layer, the activation recomputed in the backward ----------------------------------------

def silu_linear(input, weight, bias=None):
    """F.linear(F.silu(input), weight, bias), keeping for the backward only `input` (and the parameters): SiLU's output,
    which the linear layer would save for its weight gradient, is recomputed there from `input` (one SiLU per
    backward). In an MLP of Linear, SiLU, Linear, ... layers written as Linear, silu_linear, silu_linear, ... each
    hidden layer then keeps one activation for the backward where nn.SiLU and nn.Linear keep two (the pre-activation
    and the activation): the memory of a large-batch training step, the same values (the same torch ops: F.silu,
    matmuls, aten.silu_backward) and gradients to rounding. No grad wanted, autocast, a torch.func transform,
    forward-mode AD or torch.compile take the plain form (F.silu then F.linear); a double backward differentiates the
    backward's own torch ops (SiLU's derivative written out, aten.silu_backward having no derivative)."""
    name = "fastvae.silu_linear"
    _check_tensors(name, (("input", input), ("weight", weight)), bias)
    if input.dim() < 1:
        raise ValueError(f"{name}: input must have a feature dim (..., H); got a 0-dim tensor")
    if weight.dim() != 2 or weight.shape[1] != input.shape[-1]:
        raise ValueError(f"{name}: weight must be (D, H) with H = {input.shape[-1]} (input's last dim, as nn.Linear's "
                         f"weight); got shape {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"{name}: bias must be ({weight.shape[0]},) (weight's first dim); got shape "
                         f"{tuple(bias.shape)}")
    for arg, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != input.device:
            raise ValueError(f"{name}: {arg} is on {t.device}, input on {input.device}")
        if t is not None and t.dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
            raise TypeError(f"{name}: {arg} must have input's dtype {input.dtype}; got {t.dtype}")
    wanted = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias))
    if not wanted or not fused_call_ok() or torch.is_autocast_enabled(input.device.type):
        return F.linear(F.silu(input), weight, bias)
    return _SiLULinear.apply(input, weight, bias)


class _SiLULinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return F.linear(F.silu(x), weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight, bias = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            ga = g @ weight
            if torch.is_grad_enabled():  # a double backward: silu's derivative in differentiable ops
                s = torch.sigmoid(x)
                gx = ga * (s * (1 + x * (1 - s)))
            else:
                gx = torch.ops.aten.silu_backward(ga, x)
        if ctx.needs_input_grad[1]:
            gw = g2.mT @ F.silu(x).reshape(-1, x.shape[-1])  # the activation, recomputed
        if bias is not None and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb
