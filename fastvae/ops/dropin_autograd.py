"""The fake (meta) implementations and autograd formulas of the drop-ins' ops (fastvae/ops/dropin.py): a backward
calls the fused backward op, or, for a double backward (create_graph=True), takes torch-op forms of the gradients,
differentiable again. The gradient of an operand read periodically is summed over its tiles."""
import torch

from ._registry import LIB, create_graph, fused_backward, not_differentiable, ops


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
