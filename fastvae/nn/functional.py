"""torch.nn.functional's VAE losses with torch's signatures and semantics, on fastvae's fused kernels.

`binary_cross_entropy_with_logits` and `gaussian_nll_loss` take exactly torch's arguments and give torch's values:
element-wise losses, broadcasting as torch broadcasts, `reduction="mean"` the mean over ELEMENTS (not fastvae's
per-sample mean). The loss, its reduction and its backward are one pass each. Inputs the kernels do not take (another
device, integer or mixed dtypes, the legacy size_average/reduce arguments, a tensor subclass with
__torch_function__, a torch.func transform in progress) run torch's own function, so what torch refuses is refused,
with torch's message prefixed by this function's name."""
import math

import torch
import torch.nn.functional as F
from torch.overrides import has_torch_function_variadic

from ..ops import dropin
from .._checks import has_values
from ..distributions import fusable

__all__ = ["binary_cross_entropy_with_logits", "gaussian_nll_loss"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_REDUCTIONS = ("none", "mean", "sum")

# torch's own functions, taken before anything is patched
TORCH = {"binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
         "gaussian_nll_loss": F.gaussian_nll_loss}


def _torch_fallback(name):
    """torch's `name` with its arguments, an error it raises re-raised with fastvae's function named."""
    def call(*args, **kwargs):
        try:
            return TORCH[name](*args, **kwargs)
        except (ValueError, TypeError, RuntimeError) as e:
            raise _named(e, f"fastvae.nn.functional.{name}") from e
    return call


def _named(e, where):
    try:
        return type(e)(f"{where}: {e}")
    except Exception:  # an exception class with another constructor: torch's own, unchanged
        return e


def _reduce_args(reduction, n):
    """(factor, event_dims) of the fused ops for torch's element-wise reduction over n elements."""
    if reduction == "none":
        return 1.0, 0
    return (1.0 / n if reduction == "mean" else 1.0), None


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None, reduction="mean",
                                     pos_weight=None):
    """torch.nn.functional.binary_cross_entropy_with_logits, fused: w ((1 + (pw - 1) y) softplus(-x) + (1 - y) x)
    per element, stable for any logit, then the reduction, in one pass (backward likewise)."""
    fallback = _torch_fallback("binary_cross_entropy_with_logits")
    args = (input, target, weight, size_average, reduce, reduction, pos_weight)
    tensors = [t for t in (input, target, weight, pos_weight) if t is not None]
    if (size_average is not None or reduce is not None or reduction not in _REDUCTIONS
            or has_torch_function_variadic(*tensors) or not fusable(*tensors)
            or any(t.dtype != input.dtype or t.device != input.device for t in tensors)
            or target.shape != input.shape or input.numel() == 0
            or (any(t.shape != input.shape for t in tensors)  # (torch.broadcast_shapes costs ~20 us a call)
                and torch.broadcast_shapes(*(t.shape for t in tensors)) != input.shape)):
        return fallback(*args)
    factor, event_dims = _reduce_args(reduction, input.numel())
    return dropin.bce_with_logits(input, target, weight, pos_weight, factor=factor, event_dims=event_dims)


def _var_operand(input, var):
    """torch's rules for var's shape: input's shape, input's shape without its last dim, or input's shape with one
    dim of size 1 (homoscedastic); var as the kernels take it (unsqueezed in the second case)."""
    if var.shape == input.shape:
        return var
    if input.shape[:-1] == var.shape:
        return var.unsqueeze(-1)
    if input.dim() == var.dim() and sum(v for i, v in zip(input.shape, var.shape) if i != v) == 1:
        return var
    raise ValueError(f"fastvae.nn.functional.gaussian_nll_loss: var is of incorrect size: expected "
                     f"{tuple(input.shape)}, {tuple(input.shape[:-1])} or {tuple(input.shape)} with one dim of size 1; "
                     f"got {tuple(var.shape)}")


def gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean"):
    """torch.nn.functional.gaussian_nll_loss, fused: (log max(var, eps) + (input - target)^2 / max(var, eps)) / 2
    (+ log(2 pi) / 2 with full) per element, then the reduction, in one pass (backward likewise). As in torch, var is
    clamped at eps without stopping its gradient (the derivative at the clamped value reaches var)."""
    fallback = _torch_fallback("gaussian_nll_loss")
    args = (input, target, var, full, eps, reduction)
    var_t = var if isinstance(var, torch.Tensor) else None
    tensors = [t for t in (input, target, var_t) if t is not None]
    if (not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor)
            or not (var_t is not None or isinstance(var, float)) or not isinstance(eps, float)
            or not isinstance(full, bool) or reduction not in _REDUCTIONS
            or has_torch_function_variadic(*tensors) or not fusable(*tensors)
            or any(t.dtype != input.dtype or t.device != input.device for t in tensors)):
        return fallback(*args)
    if var_t is None:
        if var < 0:
            raise ValueError(f"fastvae.nn.functional.gaussian_nll_loss: var has negative entry/entries: var must be "
                             f">= 0; got {var}")
        var_t = torch.tensor(var, dtype=input.dtype, device=input.device)
    else:
        if not has_values(var_t):
            pass  # no values to read while tracing (meta, fake, torch.compile): torch's own check breaks the graph
        elif torch.any(var_t < 0):
            raise ValueError("fastvae.nn.functional.gaussian_nll_loss: var has negative entry/entries: var must be "
                             f">= 0; got a minimum of {var_t.min().item():g}")
        var_t = _var_operand(input, var_t)
    shape = input.shape
    if target.shape != shape or var_t.shape != shape:  # (torch.broadcast_shapes costs ~20 us a call)
        try:
            shape = torch.broadcast_shapes(input.shape, target.shape, var_t.shape)
        except RuntimeError:
            return fallback(*args)
    if shape.numel() == 0:
        return fallback(*args)
    factor, event_dims = _reduce_args(reduction, shape.numel())
    return dropin.normal_nll(target, input, var_t, "var", floor=eps, const=_HALF_LOG_2PI if full else 0.0,
                                 factor=factor, event_dims=event_dims)

