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
torch-op forms of the gradients, differentiable again.

The terms are negative log densities (losses): log_prob is normal_nll with factor=-1, const=0.5 log(2 pi)."""
import math
import types

import torch

from ._registry import _16BIT, LIB, compute_dtype, create_graph, draw_seed, fused_backward, not_differentiable, ops
from ._transforms import fused_call_ok

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
    """op(*operands, *args, row_len), as the forward with gradients (_WithGrad) where that is faster: on the CPU, in
    eager mode, when a gradient will be wanted."""
    spec = _WITH_GRAD.get(op)
    if spec is not None and torch.is_grad_enabled() and operands[0].device.type == "cpu" and fused_call_ok():
        mask = [t is not None and t.requires_grad for t in operands]
        if any(mask[:spec.n_grads]) and not any(mask[spec.n_grads:]):
            return _WithGrad.apply(spec, args, row_len, mask[:spec.n_grads], *operands)
    return op(*operands, *args, row_len)


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
    z = ops.dropin_normal_rsample(loc, scale, draw_seed(loc.device, generator), k)
    if len(sample_shape) > 1:
        z = z.reshape(*sample_shape, *shape)
    return z if z.dtype == dtype else z.to(dtype)


# ---- fake (meta) implementations ------------------------------------------------------------------------------------

def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _numel(*tensors):
    return max(t.numel() for t in tensors if t is not None)


def _sums(ref, n, row_len):
    return ref.new_empty((n // row_len,), dtype=_acc(ref.dtype))


def _grads(ref, n, mask):
    return tuple(ref.new_empty((n if m else 0,)) for m in mask)


@torch.library.register_fake(LIB + "dropin_normal_nll")
def _(x, loc, spread, param, floor, const, factor, row_len):
    return _sums(x, _numel(x, loc, spread), row_len)


@torch.library.register_fake(LIB + "dropin_normal_nll_backward")
def _(grad, x, loc, spread, param, floor, const, factor, row_len, output_mask):
    return _grads(x, _numel(x, loc, spread), output_mask)


@torch.library.register_fake(LIB + "dropin_normal_kl")
def _(loc_p, scale_p, loc_q, scale_q, factor, row_len):
    return _sums(loc_p, _numel(loc_p, scale_p, loc_q, scale_q), row_len)


@torch.library.register_fake(LIB + "dropin_normal_kl_backward")
def _(grad, loc_p, scale_p, loc_q, scale_q, factor, row_len, output_mask):
    return _grads(loc_p, _numel(loc_p, scale_p, loc_q, scale_q), output_mask)


@torch.library.register_fake(LIB + "dropin_bce_with_logits")
def _(logits, target, weight, pos_weight, factor, row_len):
    return _sums(logits, _numel(logits, target, weight, pos_weight), row_len)


@torch.library.register_fake(LIB + "dropin_bce_with_logits_backward")
def _(grad, logits, target, weight, pos_weight, factor, row_len, output_mask):
    return _grads(logits, _numel(logits, target, weight, pos_weight), output_mask)


def _with_grads(ref, n, row_len, mask):
    return (_sums(ref, n, row_len), ref.new_empty((), dtype=torch.int32), *_grads(ref, n, mask))


@torch.library.register_fake(LIB + "dropin_normal_nll_with_grad")
def _(x, loc, spread, param, floor, const, factor, row_len, output_mask):
    return _with_grads(x, _numel(x, loc, spread), row_len, output_mask)


@torch.library.register_fake(LIB + "dropin_normal_kl_with_grad")
def _(loc_p, scale_p, loc_q, scale_q, factor, row_len, output_mask):
    return _with_grads(loc_p, _numel(loc_p, scale_p, loc_q, scale_q), row_len, output_mask)


@torch.library.register_fake(LIB + "dropin_bce_with_logits_with_grad")
def _(logits, target, weight, pos_weight, factor, row_len, output_mask):
    return _with_grads(logits, _numel(logits, target, weight, pos_weight), row_len, output_mask)


@torch.library.register_fake(LIB + "dropin_normal_rsample")
def _(loc, scale, seed, n_samples):
    return loc.new_empty(((n_samples,) if n_samples is not None else ()) + tuple(loc.shape))


@torch.library.register_fake(LIB + "dropin_normal_rsample_backward")
def _(grad_z, scale, seed, n_samples, output_mask):
    return tuple(scale.new_empty(scale.shape if m else (0,)) for m in output_mask)


# ---- autograd -------------------------------------------------------------------------------------------------------

def _fold(full, t):
    """The gradient of a periodic operand t from the full-size (N) gradient: summed over its tiles."""
    if full.numel() == t.numel():
        return full.view(t.shape)
    return full.view(-1, t.numel()).sum(0).view(t.shape)


def _tile(t, n):
    """t read periodically over n elements, as a (differentiable) flat tensor."""
    return t.reshape(1, -1).expand(n // max(t.numel(), 1), -1).reshape(n)


def _incoming(grad, factor, n, row_len):
    return factor * grad.reshape(-1, 1).expand(-1, row_len).reshape(n)


def _save(ctx, inputs, n_tensors):
    ctx.save_for_backward(*inputs[:n_tensors])
    ctx.args = inputs[n_tensors:]


def _finish(ctx, grads, tensors, mask, n_args):
    out = [_fold(g, t).to(t.dtype) if m and t is not None else None for g, t, m in zip(grads, tensors, mask)]
    return (*out, *([None] * n_args))


def _nll_backward(ctx, grad):
    x, loc, sp = ctx.saved_tensors
    param, floor, const, factor, row_len = ctx.args
    mask = [bool(m) for m in ctx.needs_input_grad[:3]]
    if create_graph():
        n = _numel(x, loc, sp)
        grads = _nll_grads(_incoming(grad, factor, n, row_len), _tile(x, n), _tile(loc, n), _tile(sp, n), param,
                           floor)
    else:
        grads = fused_backward(ops.dropin_normal_nll_backward, grad, x, loc, sp, param, floor, const, factor, row_len,
                               mask)
    return _finish(ctx, grads, (x, loc, sp), mask, 5)


def _nll_grads(g, x, m, s, param, floor):
    """Differentiable d/d(x, loc, spread) of the term (dropin_math.h), g the incoming gradient per element."""
    diff = x - m
    if param == 0:
        d = diff / s
        gx = g * d / s
        return gx, -gx, g * (1 - d * d) / s
    if param == 1:
        with torch.no_grad():
            shift = s.clamp(min=floor) - s
        vf = s + shift  # max(v, floor), the derivative of v passed through
        t = diff / vf
        return g * t, -g * t, 0.5 * g * (1 - diff * t) / vf
    inv = torch.exp(-s)
    gx = g * diff * inv
    return gx, -gx, 0.5 * g * (1 - diff * diff * inv)


torch.library.register_autograd(LIB + "dropin_normal_nll", _nll_backward,
                                setup_context=lambda ctx, inputs, output: _save(ctx, inputs, 3))
not_differentiable("dropin_normal_nll_backward", "fastvae.dropin_ops.normal_nll")


def _kl_backward(ctx, grad):
    lp, sp, lq, sq = ctx.saved_tensors
    factor, row_len = ctx.args
    mask = [bool(m) for m in ctx.needs_input_grad[:4]]
    if create_graph():
        n = _numel(lp, sp, lq, sq)
        g = _incoming(grad, factor, n, row_len)
        lp_, sp_, lq_, sq_ = (_tile(t, n) for t in (lp, sp, lq, sq))
        r, u = sp_ / sq_, (lp_ - lq_) / sq_
        glp = g * u / sq_
        grads = glp, g * (r * r - 1) / sp_, -glp, -g * (r * r - 1 + u * u) / sq_
    else:
        grads = fused_backward(ops.dropin_normal_kl_backward, grad, lp, sp, lq, sq, factor, row_len, mask)
    return _finish(ctx, grads, (lp, sp, lq, sq), mask, 2)


torch.library.register_autograd(LIB + "dropin_normal_kl", _kl_backward,
                                setup_context=lambda ctx, inputs, output: _save(ctx, inputs, 4))
not_differentiable("dropin_normal_kl_backward", "fastvae.dropin_ops.normal_kl")


def _bce_backward(ctx, grad):
    l, y, w, pw = ctx.saved_tensors
    factor, row_len = ctx.args
    mask = [bool(m) for m in ctx.needs_input_grad[:4]]
    mask[2] = mask[2] and w is not None
    mask[3] = mask[3] and pw is not None
    n = _numel(l, y, w, pw)
    grads = [None] * 4
    if create_graph():
        g = _incoming(grad, factor, n, row_len)
        l_, y_ = _tile(l, n), _tile(y, n)
        gw = g if w is None else g * _tile(w, n)
        pw_ = 1.0 if pw is None else _tile(pw, n)
        grads[0] = gw * ((1 + (pw_ - 1) * y_) * torch.sigmoid(l_) - pw_ * y_)
        grads[1] = gw * ((pw_ - 1) * torch.nn.functional.softplus(-l_) - l_)
    elif mask[0] or mask[1]:
        grads[:2] = fused_backward(ops.dropin_bce_with_logits_backward, grad, l, y, w, pw, factor, row_len, mask[:2])
    if mask[2] or mask[3]:  # the weights' gradients (rarely wanted): torch ops on the full size
        g = _incoming(grad, factor, n, row_len)
        if mask[2]:  # the unweighted term, from the op itself
            grads[2] = g * ops.dropin_bce_with_logits(l, y, None, pw, 1.0, 1)
        if mask[3]:
            y_ = _tile(y, n)
            grads[3] = (g if w is None else g * _tile(w, n)) * y_ * torch.nn.functional.softplus(-_tile(l, n))
    return _finish(ctx, grads, (l, y, w, pw), mask, 2)


torch.library.register_autograd(LIB + "dropin_bce_with_logits", _bce_backward,
                                setup_context=lambda ctx, inputs, output: _save(ctx, inputs, 4))
not_differentiable("dropin_bce_with_logits_backward", "fastvae.dropin_ops.bce_with_logits")


def _rsample_backward(ctx, grad_z):
    scale, seed = ctx.saved_tensors
    (k,) = ctx.args
    need_loc, need_scale = (bool(m) for m in ctx.needs_input_grad[:2])
    sum_k = (lambda t: t) if k is None else (lambda t: t.sum(0))
    if create_graph():
        eps = ops.dropin_normal_rsample(torch.zeros_like(scale), torch.ones_like(scale), seed, k)
        grad_loc, grad_scale = sum_k(grad_z), sum_k(grad_z * eps)
    else:  # without samples the loc gradient is grad_z itself
        grad_loc, grad_scale = fused_backward(ops.dropin_normal_rsample_backward, grad_z, scale, seed, k,
                                              [need_loc and k is not None, need_scale])
        if k is None:
            grad_loc = grad_z
    return (grad_loc if need_loc else None), (grad_scale if need_scale else None), None, None


def _rsample_setup(ctx, inputs, output):
    loc, scale, seed, k = inputs
    ctx.save_for_backward(scale, seed)
    ctx.args = (k,)


torch.library.register_autograd(LIB + "dropin_normal_rsample", _rsample_backward, setup_context=_rsample_setup)
not_differentiable("dropin_normal_rsample_backward", "fastvae.dropin_ops.normal_rsample")


# ---- the forward with gradients (CPU) ------------------------------------------------------------------------------
# On the CPU these ops are bound by their per-element math (exponentials, logs, divisions), not by memory: the
# *_with_grad ops compute, in the forward's pass, the gradients for an incoming gradient of 1 on every output (the
# exponential of the BCE term, say, serves both), and the backward only scales them by the rows' gradients. The price:
# those full-size gradients are saved from the forward to the backward (as Liger-Kernel's fused losses do), through
# save_for_backward, so that saved-tensor hooks (offloading, the benchmark's memory count) see them. The backward
# recomputes through the op's own formula (above) when a stored gradient is inf or NaN (where a zero incoming gradient
# must give 0, not 0 * inf) and for a double backward.

class _Spec(types.SimpleNamespace):
    """with_grad: the forward-with-gradients op; backward: the op's autograd formula (fallback); n_grads: how many
    leading operands it can give gradients of (a gradient wanted for a later operand takes the plain op)."""


class _WithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, args, row_len, mask, *operands):
        out, nonfinite, *derivs = spec.with_grad(*operands, *args, row_len, mask)
        ctx.finite = not nonfinite.item()
        ctx.save_for_backward(*operands, *(derivs if ctx.finite else ()))
        ctx.spec, ctx.args, ctx.n = spec, (*args, row_len), len(operands)
        return out

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        operands, derivs = saved[:ctx.n], saved[ctx.n:]
        needs = ctx.needs_input_grad[4:]
        if not ctx.finite or create_graph():
            redo = types.SimpleNamespace(saved_tensors=operands, args=ctx.args, needs_input_grad=needs)
            grads = ctx.spec.backward(redo, grad)[:ctx.n]
        else:
            rows = grad.reshape(-1, 1)
            grads = [None] * ctx.n
            for k, d in enumerate(derivs):
                if needs[k] and operands[k] is not None:
                    grads[k] = _fold(d.view(-1, ctx.args[-1]) * rows, operands[k])
        return (None, None, None, None, *grads)


_WITH_GRAD = {
    ops.dropin_normal_nll: _Spec(with_grad=ops.dropin_normal_nll_with_grad, backward=_nll_backward, n_grads=3),
    ops.dropin_normal_kl: _Spec(with_grad=ops.dropin_normal_kl_with_grad, backward=_kl_backward, n_grads=4),
    ops.dropin_bce_with_logits: _Spec(with_grad=ops.dropin_bce_with_logits_with_grad, backward=_bce_backward,
                                      n_grads=2),
}


def _no_derivative(name, public):
    def backward(ctx, *grads):
        raise RuntimeError(f"torch.ops.fastvae.{name} (the forward with gradients behind {public}) has no derivative "
                           f"of its own: differentiate {public}, whose backward is differentiable")
    torch.library.register_autograd(LIB + name, backward)


for _name in ("normal_nll", "normal_kl", "bce_with_logits"):
    _no_derivative(f"dropin_{_name}_with_grad", f"fastvae.dropin_ops.{_name}")
