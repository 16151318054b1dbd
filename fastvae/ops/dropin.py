"""The fused ops behind fastvae's torch.distributions / torch.nn.functional drop-ins: torch's element-wise semantics
and parameterizations (scale, variance), one pass per forward and per backward (csrc/include/fastvae/dropin_math.h
has the math and its stability argument).

The private wrappers below take torch-broadcastable tensors and lay them out for the ops: the result is over the
broadcast shape S, and `event_dims` trailing dims of S are summed (0: element-wise, None: every dim, a 0-dim result;
reduction "mean" is event_dims=None with factor=1/numel). An operand whose broadcast to S repeats its own trailing
block (its shape without leading 1s is a trailing part of S: a scalar, a per-feature vector, a full tensor) goes to
the op as it is, read periodically (p[i % p.numel()]); any other is expanded to S. Dtypes promote as torch's do;
16-bit inputs are computed in float32 (on the CPU they go to the op as float32) and results are cast back to the
promoted dtype. Gradients of a periodic operand are summed over its tiles. Double backward (create_graph=True) takes
torch-op forms of the gradients, differentiable again. The ops' fake implementations and autograd formulas are in
dropin_autograd.py; the forward with gradients (the CPU's fast path with autograd) is below.

The terms are negative log densities (losses): log_prob is normal_nll with factor=-1, const=0.5 log(2 pi)."""
import math
import types

import torch

from ._registry import _C, _16BIT, _below_autograd, compute_dtype, direct, draw_seed, no_derivative, ops
from ._transforms import fused_call_ok
from .dropin_autograd import (_bce_backward, _kl_backward, _nll_backward, _rsample_backward, _save)

SPREADS = {"scale": 0, "var": 1, "logvar": 2}
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ---- layout ---------------------------------------------------------------------------------------------------------

# A call's fixed cost matters (small tensors): the common case (operands of one shape and dtype) takes the short
# paths below, and the checks are the op's (C++).

def _prepare(tensors):
    """(S, the promoted dtype, the operands as the op takes them); None stays None."""
    first = tensors[0]
    shape, dtype = first.shape, first.dtype
    same_shape = True
    for t in tensors[1:]:
        if t is not None:
            if t.dtype != dtype:
                dtype = torch.promote_types(dtype, t.dtype)
            same_shape = same_shape and t.shape == shape
    if not same_shape:
        shape = torch.broadcast_shapes(*(t.shape for t in tensors if t is not None))
    dt = torch.float32 if dtype in _16BIT and first.device.type != "cuda" else dtype
    return shape, dtype, [None if t is None else _periodic(t, shape, dt) for t in tensors]


def _periodic(t, shape, dt):
    """t as the op reads it: its trailing block when t repeats it over leading dims of size 1 or of stride 0 (an
    expanded view, such as torch.distributions' broadcast_all makes), else t expanded to shape and materialised."""
    s = t.shape
    if s == shape and t.dtype == dt and (not s or t.stride(0) != 0):
        return t
    i = 0
    while i < len(s) and (s[i] == 1 or t.stride(i) == 0):
        i += 1
    if s[i:] == shape[len(shape) - (len(s) - i):]:
        return (t[(0,) * i] if i else t).to(dt)
    return t.expand(shape).to(dt).contiguous()


def _rows(shape, event_dims):
    """(row_len, the result's shape) for summing the trailing event_dims dims of shape."""
    if event_dims is None:
        event_dims = len(shape)
    elif not isinstance(event_dims, int) or isinstance(event_dims, bool) or not 0 <= event_dims <= len(shape):
        raise ValueError(f"event_dims must be None or an int in [0, {len(shape)}] (the dims of the broadcast shape "
                         f"{tuple(shape)}); got {event_dims!r}")
    lead = shape[:len(shape) - event_dims]
    return math.prod(shape[len(lead):]), lead


def _call(op, shape, dtype, operands, event_dims, *args):
    if event_dims == 0:  # element-wise
        out = _run(op, operands, args, 1)
        out = out if out.shape == shape else out.reshape(shape)
        return out if out.dtype == dtype else out.to(dtype)
    row_len, lead = _rows(shape, event_dims)
    if row_len == 0:  # a sum over empty event dims: zeros (the op takes row_len >= 1)
        out = op(*operands, *args, 1).reshape(shape)
        out = out.sum(tuple(range(len(lead), len(shape)))) if event_dims else out
        return out.to(dtype)
    return _run(op, operands, args, row_len).reshape(lead).to(dtype)


def _run(op, operands, args, row_len):
    """op(*operands, *args, row_len), as the forward with gradients (the C++ node, _with_grad) where that is faster:
    on the CPU, in eager mode, when a gradient will be wanted."""
    if not fused_call_ok():  # torch.compile, torch.func, forward AD: the registered op (its rules, its fake)
        return op(*operands, *args, row_len)
    spec = _WITH_GRAD.get(op)
    if spec is not None and torch.is_grad_enabled() and operands[0].device.type == "cpu":
        mask = [t is not None and t.requires_grad for t in operands]
        if any(mask[:spec.n_grads]) and not any(mask[spec.n_grads:]):
            return _with_grad_call(spec, operands, args, row_len, mask[:spec.n_grads])
    return _DIRECT[op](*operands, *args, row_len)


# ---- the wrappers ---------------------------------------------------------------------------------------------------

def normal_nll(x, loc, spread, param, *, floor=0.0, const=0.0, factor=1.0, event_dims=0):
    """factor * sum over event_dims of (-log N(x | loc, spread) - 0.5 log(2 pi) + const), spread by `param`:
    "scale", "var" (max(var, floor); its gradient is the derivative at the floored value, as F.gaussian_nll_loss) or
    "logvar". Normal.log_prob: param="scale", const=0.5 log(2 pi), factor=-1."""
    code = SPREADS.get(param) if isinstance(param, str) else None
    if code is None:
        raise ValueError(f"param must be one of {tuple(SPREADS)}; got {param!r}")
    shape, dtype, ops_in = _prepare((x, loc, spread))
    return _call(ops.dropin_normal_nll, shape, dtype, ops_in, event_dims, code, float(floor), float(const),
                 float(factor))


def normal_kl(loc_p, scale_p, loc_q, scale_q, *, factor=1.0, event_dims=0):
    """factor * sum over event_dims of KL(N(loc_p, scale_p) || N(loc_q, scale_q)) (torch's _kl_normal_normal)."""
    shape, dtype, ops_in = _prepare((loc_p, scale_p, loc_q, scale_q))
    return _call(ops.dropin_normal_kl, shape, dtype, ops_in, event_dims, float(factor))


def bce_with_logits(logits, target, weight=None, pos_weight=None, *, factor=1.0, event_dims=0):
    """factor * sum over event_dims of F.binary_cross_entropy_with_logits(logits, target, weight, pos_weight,
    reduction="none"), stable for any logit (at +-inf the limit: 0 for the matching label, where torch gives NaN)."""
    shape, dtype, ops_in = _prepare((logits, target, weight, pos_weight))
    return _call(ops.dropin_bce_with_logits, shape, dtype, ops_in, event_dims, float(factor))


def normal_rsample(loc, scale, sample_shape=torch.Size(), generator=None):
    """loc + scale * eps of shape (*sample_shape, *broadcast shape), eps ~ N(0, 1) drawn inside the kernel: the
    stream of fastvae.reparameterize (the same z as reparameterize(loc, 2 log scale) for the same generator state).
    Backward regenerates eps from the seed."""
    shape, dtype = loc.shape, loc.dtype
    if scale.shape != shape or scale.dtype != dtype or (dtype in _16BIT and loc.device.type != "cuda"):
        shape = torch.broadcast_shapes(shape, scale.shape)
        dtype = torch.promote_types(dtype, scale.dtype)
        dt = compute_dtype(loc, scale, kernels_16bit=loc.device.type == "cuda")
        loc, scale = loc.expand(shape).to(dt), scale.expand(shape).to(dt)  # (the op makes them contiguous)
    if len(sample_shape) == 0:
        k = None
    else:
        k = math.prod(sample_shape)
        if k == 0:
            return (loc + 0 * scale).expand(*sample_shape, *shape).to(dtype)
    seed = draw_seed(loc.device, generator)
    z = _rsample(loc, scale, seed, k) if fused_call_ok() else ops.dropin_normal_rsample(loc, scale, seed, k)
    if len(sample_shape) > 1:
        z = z.reshape(*sample_shape, *shape)
    return z if z.dtype == dtype else z.to(dtype)



# ---- the forward with gradients (CPU) ------------------------------------------------------------------------------
# On the CPU these ops are bound by their per-element math (exponentials, logs, divisions), not by memory: the
# *_with_grad ops compute, in the forward's pass, the gradients for an incoming gradient of 1 on every output (the
# exponential of the BCE term, say, serves both), and the backward only scales them by the rows' gradients. The price:
# those full-size gradients are saved from the forward to the backward (as Liger-Kernel's fused losses do), through
# save_for_backward, so that saved-tensor hooks (offloading, the benchmark's memory count) see them; the backward
# scales them in place (they become the gradients: no new memory). It recomputes through the op's own formula
# (dropin_autograd.py) when a stored gradient is inf or NaN (where a zero incoming gradient must give 0, not 0 * inf),
# for a double backward, and for a second backward through a retained graph (the stored gradients were used up by
# the first).

class _Spec(types.SimpleNamespace):
    """kind: the C++ node's code of the op (csrc/torch/dropin/autograd.cpp); backward: the op's autograd formula
    (the recomputing fallback); n_grads: how many leading operands it can give gradients of (a gradient wanted for a
    later operand takes the plain op)."""


# The node is C++ (fastvae._C.dropin_with_grad): a torch.autograd.Function's Python round trips cost about as much
# as the kernel itself at small batches. Its backward calls _recompute for what it does not do itself.
_with_grad = _C.dropin_with_grad


def _with_grad_call(spec, operands, args, row_len, mask):
    return _with_grad(spec.kind, *operands, *(None,) * (4 - len(operands)), args, row_len, mask)


def _recompute(kind, operands, args, row_len, needs, grad):
    """The node's backward where the stored gradients do not serve (non-finite, used up, create_graph=True): the op's
    registered formula on the saved operands."""
    if kind == 3:  # rsample: operands (scale, seed), args (n_samples,)
        redo = types.SimpleNamespace(saved_tensors=tuple(operands), args=tuple(args),
                                     needs_input_grad=tuple(needs))
        return list(_rsample_backward(redo, grad)[:2])
    spec = _SPECS[kind]
    if kind == 0:  # normal_nll's param is an int
        args = (int(args[0]), *args[1:])
    redo = types.SimpleNamespace(saved_tensors=tuple(operands), args=(*args, row_len), needs_input_grad=tuple(needs))
    return list(spec.backward(redo, grad)[:len(operands)])


_C.set_dropin_recompute(_recompute)

_WITH_GRAD = {
    ops.dropin_normal_nll: _Spec(kind=0, backward=_nll_backward, n_grads=3),
    ops.dropin_normal_kl: _Spec(kind=1, backward=_kl_backward, n_grads=4),
    ops.dropin_bce_with_logits: _Spec(kind=2, backward=_bce_backward, n_grads=2),
}
_SPECS = {spec.kind: spec for spec in _WITH_GRAD.values()}


def _direct(op, backward, n_tensors):
    # the op with its registered autograd formula (dropin_autograd.py: it saves the n_tensors tensor operands),
    # without the dispatcher's round trip through torch's Python autograd kernel (_registry.direct)
    return direct(op, lambda ctx, inputs, output: _save(ctx, inputs, n_tensors), backward)


_DIRECT = {ops.dropin_normal_nll: _direct(ops.dropin_normal_nll, _nll_backward, 3),
           ops.dropin_normal_kl: _direct(ops.dropin_normal_kl, _kl_backward, 4),
           ops.dropin_bce_with_logits: _direct(ops.dropin_bce_with_logits, _bce_backward, 4)}
_rsample_node = _C.dropin_rsample  # (C++: see _with_grad)


def _rsample(loc, scale, seed, k):
    if torch.is_grad_enabled() and (loc.requires_grad or scale.requires_grad):
        return _rsample_node(loc, scale, seed, k)
    with _below_autograd():
        return ops.dropin_normal_rsample(loc, scale, seed, k)


for _name in ("normal_nll", "normal_kl", "bce_with_logits"):
    no_derivative(f"dropin_{_name}_with_grad", f"fastvae.dropin_ops.{_name}")
