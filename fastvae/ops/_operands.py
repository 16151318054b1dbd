"""What the likelihood and KL ops share (gaussian.py, bernoulli.py; logistic.py takes a few): the ops' reduction
codes, the compute dtype of the Gaussian kernels, the layout of a secondary operand against the main one, the shapes
of per-sample losses and of sampled outputs, and the fast path of a call whose operands the op takes as they are."""
import math

import torch

from .. import _checks
from ._registry import _16BIT, compute_dtype
from ._transforms import fused_call_ok

_REDUCTION = {"none": 0, "sum": 1, "mean": 2}  # the ops' reduction argument
_PLAIN = frozenset((torch.Tensor, torch.nn.Parameter))  # tensors without a __torch_function__ or dispatch of their own


def _compute_dtype(device, *tensors):
    """The Gaussian ops' kernels take float16/bfloat16 on CUDA (float32 arithmetic inside), not on the CPU."""
    return compute_dtype(*tensors, kernels_16bit=device.type == "cuda")


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def _reduce(per_sample, reduction):
    """(for the ops without a reduction argument: logistic.py)"""
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def _spread(grad, shape, reduction):
    """The per-sample gradient (shape `shape`) of a loss reduced by the op (0 none, 1 sum, 2 mean): the
    differentiable backward formulas take it per sample."""
    if reduction == 0:
        return grad
    g = grad.expand(shape)
    return g / math.prod(shape) if reduction == 2 else g


# ---- the fast path -----------------------------------------------------------------------------------------------
# A call whose operands the op takes as they are (plain tensors of one dtype its kernels take, no layout to make)
# goes straight to the op (`direct`: the registered op and its autograd formula, without the round trip through
# torch's Python autograd kernel), whose C++ checks are then the only ones (the binding makes them anyway). When
# the op refuses the call, the public function's own checks run and raise their error (the messages name the
# argument as they always did); everything else (other dtypes, broadcast operands, tensor subclasses, meta and fake
# tensors, torch.compile, torch.func transforms) takes the checked path below each fast path.
_FAILED = (RuntimeError, ValueError, TypeError)


def _fast(a, b):
    """Whether a and b (the two main operands) can go to the op as they are: plain torch.Tensors or Parameters (not
    another subclass: no fake or functional tensor), one dtype the kernels take on their device, neither a meta
    tensor (whose op has no checks) nor empty (refused by the public functions, computed by the ops), and no
    torch.compile trace or torch.func transform active (fused_call_ok)."""
    if not fused_call_ok() or type(a) not in _PLAIN or type(b) not in _PLAIN:
        return False
    dt = a.dtype
    if dt is not b.dtype or a.is_meta or b.is_meta or a.numel() == 0 or b.numel() == 0:
        return False
    return dt is torch.float32 or dt is torch.float64 or (a.is_cuda and dt in _16BIT)



def _fast_operand(p, dtype, main):
    """Whether the secondary operand p (a log-variance or a prior parameter) can go to the op as it is: None, or a
    plain tensor of the main operands' dtype with their shape or fewer dims (the op takes any p that broadcasts over
    the feature dims, and refuses the rest: then the checked path below lays p out or words the refusal)."""
    return p is None or (type(p) in _PLAIN and p.dtype is dtype and not p.is_meta and
                         (p.dim() < main.dim() or p.shape == main.shape or p.shape[0] == 1))


def _fast_seed(t):
    """The seed of a random op for a call on the fast path (draw_seed with generator None)."""
    return torch.randint(0, 2**62, (1,), device=t.device, dtype=torch.int64)


def _feature_operand(p, name, main, feature_shape):
    """Lay out a secondary operand against `main` (shape (rows, *F) or (k, B, *F)): returned unchanged when it has
    main's shape (per element), expanded to F when it broadcasts over the trailing dims (per feature: a 0-dim
    tensor, a (D,) vector, ...), or expanded to main's shape when it only broadcasts there (e.g. one value per
    sample). Anything else is an error: never silent broadcasting against the batch."""
    if p is None:
        return None
    _checks.tensor(p, name)
    _checks.same_device(main, "the main operand", p, name)
    if p.shape == main.shape:
        return p
    shape = tuple(p.shape)
    while len(shape) > len(feature_shape) and shape[0] == 1:
        shape = shape[1:]
    if len(shape) <= len(feature_shape) and _broadcastable(shape, feature_shape):
        return p.reshape(shape).expand(feature_shape).contiguous()
    if _broadcastable(tuple(p.shape), tuple(main.shape)):
        return p.expand(main.shape).contiguous()
    raise ValueError(
        f"{name} must have shape {tuple(main.shape)} (per element) or broadcast over the feature dims "
        f"{tuple(feature_shape)} (e.g. a 0-dim tensor); got {tuple(p.shape)}")


def _broadcastable(src, dst):
    if len(src) > len(dst):
        return False
    return all(s == 1 or s == d for s, d in zip(src[::-1], dst[::-1]))


def _likelihood_operands(x, main, main_name):
    _checks.tensor(x, "x", min_dim=1)
    _checks.tensor(main, main_name, min_dim=1)
    _checks.same_device(main, main_name, x, "x")
    if main.shape != x.shape and main.shape[1:] != x.shape:
        raise ValueError(
            f"{main_name} must have the shape of x {tuple(x.shape)} or (k, *x.shape); got {tuple(main.shape)}")
    _checks.nonempty_batch(x, "x")
    _checks.nonempty_batch(main, main_name)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sampled(t, k):
    return (k, *t.shape) if k is not None else tuple(t.shape)


def _empty(ref):
    return ref.new_empty((0,))


def _rows(grad, like):
    """A per-sample gradient ((B,) or (k, B)) shaped to broadcast against `like` ((B, *F) or (k, B, *F))."""
    return grad.reshape(*grad.shape, *([1] * (like.dim() - grad.dim())))


def _sum_samples(t, k):
    """Sums the leading sample dim of t (k, *shape) when the op drew n_samples = k."""
    return t if k is None else t.sum(0)


def _per_sample_shape(x, main):
    return (main.shape[0], x.shape[0]) if main.dim() == x.dim() + 1 else (x.shape[0],)


def _loss_shape(x, main, reduction):
    return () if reduction else _per_sample_shape(x, main)
