"""The discretized-logistic likelihoods of 8-bit (n-bit) images, fused: forward and backward are one pass each over
the inputs, nothing but the inputs is kept for backward (except the single form's forward with gradients on the CPU,
below), and a mixture's log-sum-exp over its components happens inside the kernel
(csrc/include/fastvae/logistic_math.h has the math and its stability argument).

Data: x in [-1, 1] on the grid of 2^n_bits levels x_k = 2k / (2^n_bits - 1) - 1 (8-bit pixels v as
x = 2 v / 255 - 1). Each level owns the bin [x_k - h, x_k + h], h = 1 / (2^n_bits - 1); the lowest bin reaches to
-inf and the highest to +inf, so the masses of all levels sum to 1. x off the grid or outside [-1, 1] is refused
(validate_args, the default: the op checks x where its kernel reads it (validate_x), on CUDA with one synchronising
read of the result); unchecked, the kernels snap x to the nearest level in [-1, 1]. x is data: its gradient is 0 (the
loss depends on x only through its level).

The fixed cost of a call (issue 25): a call whose operands the op takes as they are (plain tensors of one dtype, the
parameters of one shape) goes straight to the op, which checks the shapes, checks x (validate_x) and reduces
("sum"/"mean" inside the op); the Python checks below run only for the other calls and to word a refusal.

Layout: the mixture dim is last: logit_probs, means and log_scales of shape (*x.shape, K), or (k, *x.shape, K) with a
leading sample dim (k decoder samples of one batch). Losses are per-sample sums over every non-batch dim of x
(channels, height, width), with the reductions of every fastvae likelihood ("none": (B,) or (k, B); "sum"; "mean").
Not included: PixelCNN++'s autoregressive coupling of the RGB channels (`coeffs`): here the channels of a pixel are
independent given the decoder's output, as in VAEs whose decoder is not autoregressive.

On the CPU, a logistic or a mixture whose parameters need gradients runs the forward with gradients
(discretized_logistic_nll_with_grad, discretized_logistic_mixture_nll_with_grad): the kernel computes the per-sample
losses' gradients in the forward's pass, keeps them for the backward (2 floats per pixel more, 3 per pixel and
component for a mixture) and the backward scales them (_with_grad): the per-element math is compute-bound there, and
the backward would compute it all again.

Double backward is not supported (refused with an error when attempted). float32/float64 on every device;
float16/bfloat16 on CUDA (computed in float32) and, on the CPU, computed in float32; losses of 16-bit inputs are
float32. torch.compile(fullgraph=True) traces the ops (the value check of x is skipped while tracing)."""
import types

import torch

from .. import _checks
from ._composites import routed
from ._operands import _FAILED, _PLAIN, _REDUCTION, _acc, _compute_dtype, _fast, _feature_operand
from ._registry import (_C, LIB, direct, fused_backward, no_derivative,
                        not_differentiable, ops)
from ._transforms import active, plain

MAX_BITS = 16


def _n_bits(n_bits):
    n = _checks.count(n_bits, "n_bits")
    if n > MAX_BITS:
        raise ValueError(f"n_bits must be an int in [1, {MAX_BITS}]; got {n}")
    return n


def _check_grid(x, n_bits, op):
    """x in [-1, 1] and within a quarter bin of a level of the 2^n_bits grid (NaN refused too). Judged in float32
    (float64 for float64 x), the precision the kernels snap x in: in 16-bit arithmetic (x + 1) (L - 1) / 2 rounds
    to a few bits, which made a 16-bit x a third of a bin off the grid look on it. The op's validate_x makes the
    same check in its kernel (logistic_off_grid in csrc/include/fastvae/logistic_math.h); this one words its
    refusals for the public functions and checks where the op cannot (under torch.func transforms, for an x whose
    cast to the compute dtype would change its value)."""
    levels = 2**n_bits - 1
    xd = plain(x)  # the values, under vmap too
    xd = xd.float() if xd.dtype in (torch.float16, torch.bfloat16) else xd
    t = (xd + 1) * (levels / 2)
    bad = (xd < -1) | (xd > 1) | ((t - torch.round(t)).abs() > 0.25) | xd.isnan()
    if bool(bad.any()):
        v = float(xd[bad][0])
        raise ValueError(
            f"fastvae.{op}: x must lie in [-1, 1] on the grid of 2**n_bits = {levels + 1} levels "
            f"2k / {levels} - 1 (8-bit pixels v as 2 v / 255 - 1); got {v!r}")


def _data_operand(x, main, main_name, n_bits, trailing):
    """Checks x against the main parameter (of shape (*x.shape, *trailing) or (k, *x.shape, *trailing))."""
    _checks.tensor(x, "x", min_dim=1)
    _checks.tensor(main, main_name, min_dim=1)
    _checks.same_device(main, main_name, x, "x")
    inner = main.shape[:main.dim() - len(trailing)] if trailing else main.shape
    if main.shape[main.dim() - len(trailing):] != trailing or (inner != x.shape and inner[1:] != x.shape):
        lead = "" if not trailing else ", K"
        raise ValueError(f"{main_name} must have shape (*x.shape{lead}) or (k, *x.shape{lead}) with x of shape "
                         f"{tuple(x.shape)}; got {tuple(main.shape)}")
    _checks.nonempty_batch(x, "x")
    _checks.nonempty_batch(main, main_name)


def _checked_call(op, x, lg, m, ls, n, r, validate, dt):
    """The op on operands checked and laid out by the public function (cast to dt here). x's values are checked by
    the op's kernel (validate_x) where it reads x as given: not under a transform (the composite runs there) nor
    when the cast to dt would round x (float64 x of a float32 loss); there, and to word a refusal, by _check_grid."""
    validate = validate and _checks.has_values(x)  # not while torch.compile traces, nor on meta or fake tensors
    in_op = validate and _acc(x.dtype) is _acc(dt) and not active()
    if validate and not in_op:
        _check_grid(x, n, op)
    try:
        return routed.discretized_logistic_nll(x.to(dt), lg, m, ls, n, r, in_op)
    except ValueError:
        if in_op:
            _check_grid(x, n, op)  # refused by the kernel's check: the refusal in the public function's words
        raise


def _fast_logistic(x, main, others, n_bits, validate_args, broadcast=False):
    """Whether a call can go to the op as it is (_operands._fast): plain tensors of one dtype, the other parameters
    of main's shape (broadcast: or of no more dims, for an expand to it), n_bits an int and validate_args a bool (the
    op's checks are then the only ones; a refusal is worded by the checked path)."""
    if type(n_bits) is not int or type(validate_args) is not bool or not _fast(x, main):
        return False
    dt, shape = main.dtype, main.shape
    return all(type(t) in _PLAIN and t.dtype is dt and (t.shape == shape or broadcast and t.dim() <= len(shape))
               for t in others)


# ---- discretized_logistic_nll -------------------------------------------------------------------------------------

def discretized_logistic_nll(x, mean, log_scale, *, n_bits=8, reduction="mean", validate_args=True):
    """-log P(x), P the mass a logistic(mean, e^log_scale) puts on x's bin of the 2^n_bits grid in [-1, 1] (the edge
    bins take the tails): per sample, summed over every non-batch dim.

    mean: x's shape, or (k, *x.shape). log_scale: mean's shape, or broadcastable over the trailing (feature) dims of
    x (e.g. a 0-dim tensor: one learned scale). Stable for every finite input (see the module docstring)."""
    r = _REDUCTION.get(reduction) if type(reduction) is str else None
    if r is not None and _fast_logistic(x, mean, (log_scale,), n_bits, validate_args, broadcast=True) and \
            0 <= mean.dim() - x.dim() <= 1:
        try:  # mean of x's shape goes as it is (K = 1 implied), a sampled one (k, *x.shape) with a trailing dim of 1
            # a log_scale that broadcasts to mean's shape (a per-feature or 0-dim one: what _feature_operand takes
            # with no more dims than mean) as an expanded view: the op copies it, autograd sums its gradient back
            ls = log_scale if log_scale.shape == mean.shape else log_scale.expand(mean.shape)
            if mean.dim() != x.dim():
                mean, ls = mean.unsqueeze(-1), ls.unsqueeze(-1)
            if mean.device.type == "cpu" and torch.is_grad_enabled() and (mean.requires_grad or ls.requires_grad):
                return _with_grad(x, None, mean, ls, n_bits, r, validate_args)
            return _nll(x, None, mean, ls, n_bits, r, validate_args)
        except _FAILED:
            pass  # the checks below say why
    r = _REDUCTION[_checks.reduction(reduction)]
    n = _n_bits(n_bits)
    _data_operand(x, mean, "mean", n, ())
    validate = _checks.flag(validate_args, "validate_args")
    _checks.tensor(log_scale, "log_scale")
    ls = _feature_operand(log_scale, "log_scale", mean, x.shape[1:])
    dt = _compute_dtype(mean.device, x, mean, ls)
    ls = ls.to(dt).expand(mean.shape)  # a per-feature scale: the op takes one per element
    return _checked_call("discretized_logistic_nll", x, None, mean.to(dt).unsqueeze(-1), ls.unsqueeze(-1), n, r,
                         validate, dt)


def discretized_logistic_mixture_nll(x, logit_probs, means, log_scales, *, n_bits=8, reduction="mean",
                                     validate_args=True):
    """-log sum_k softmax(logit_probs)_k P_k(x), P_k the discretized logistic(means_k, e^log_scales_k) of
    discretized_logistic_nll, per sample, summed over every non-batch dim of x.

    logit_probs, means, log_scales: (*x.shape, K) or (k, *x.shape, K), the mixture dim last (all three the same shape;
    nothing broadcasts). The log-sum-exp over the K components is computed inside the kernel."""
    r = _REDUCTION.get(reduction) if type(reduction) is str else None
    if r is not None and _fast_logistic(x, means, (logit_probs, log_scales), n_bits, validate_args):
        try:
            if means.device.type == "cpu" and torch.is_grad_enabled() and (
                    logit_probs.requires_grad or means.requires_grad or log_scales.requires_grad):
                return _with_grad(x, logit_probs, means, log_scales, n_bits, r, validate_args)
            return _nll(x, logit_probs, means, log_scales, n_bits, r, validate_args)
        except _FAILED:
            pass  # the checks below say why
    r = _REDUCTION[_checks.reduction(reduction)]
    n = _n_bits(n_bits)
    _checks.tensor(means, "means", min_dim=1)
    K = means.shape[-1]
    _data_operand(x, means, "means", n, (K,))
    validate = _checks.flag(validate_args, "validate_args")
    for t, name in ((logit_probs, "logit_probs"), (log_scales, "log_scales")):
        _checks.tensor(t, name)
        _checks.same_device(means, "means", t, name)
        _checks.same_shape(means, "means", t, name)
    dt = _compute_dtype(means.device, x, logit_probs, means, log_scales)
    return _checked_call("discretized_logistic_mixture_nll", x, logit_probs.to(dt), means.to(dt), log_scales.to(dt),
                         n, r, validate, dt)


@torch.library.register_fake(LIB + "discretized_logistic_nll")
def _(x, logit_probs, means, log_scales, n_bits, reduction=0, validate_x=False):
    if reduction:
        return means.new_empty((), dtype=_acc(means.dtype))
    shape = (means.shape[0], x.shape[0]) if means.dim() == x.dim() + 2 else (x.shape[0],)
    return means.new_empty(shape, dtype=_acc(means.dtype))


@torch.library.register_fake(LIB + "discretized_logistic_nll_backward")
def _(grad, x, logit_probs, means, log_scales, n_bits, reduction=0):
    g_lg = logit_probs.new_empty(logit_probs.shape) if logit_probs is not None else means.new_empty((0,))
    return g_lg, means.new_empty(means.shape), log_scales.new_empty(log_scales.shape)


def _setup(ctx, inputs, output):
    x, logit_probs, means, log_scales, ctx.n_bits, ctx.reduction, _ = inputs
    ctx.save_for_backward(x, logit_probs, means, log_scales)  # the inputs only: backward recomputes the rest


def _backward(ctx, grad):
    x, logit_probs, means, log_scales = ctx.saved_tensors
    need_x, need_lg, need_m, need_ls = ctx.needs_input_grad[:4]
    g_lg, g_m, g_ls = fused_backward(ops.discretized_logistic_nll_backward, grad, x, logit_probs, means, log_scales,
                                     ctx.n_bits, ctx.reduction)
    grad_x = torch.zeros_like(x) if need_x else None  # the loss depends on x only through its level
    return (grad_x, g_lg if need_lg and logit_probs is not None else None, g_m if need_m else None,
            g_ls if need_ls else None, None, None, None)


torch.library.register_autograd(LIB + "discretized_logistic_nll", _backward, setup_context=_setup)
_nll = direct(ops.discretized_logistic_nll, _setup, _backward)  # the fast path's call (see _registry.direct)
# reached under create_graph=True by the backward itself: that is where a double backward is refused
not_differentiable("discretized_logistic_nll_backward",
                   "fastvae.discretized_logistic_nll (discretized_logistic_mixture_nll)", double_backward=False)


# ---- the single logistic's forward with gradients (CPU) -------------------------------------------------------------

@torch.library.register_fake(LIB + "discretized_logistic_nll_with_grad")
def _(x, means, log_scales, n_bits, reduction=0, validate_x=False):
    out = torch.ops.fastvae.discretized_logistic_nll.default(x, None, means, log_scales, n_bits, reduction, validate_x)
    return out, means.new_empty((), dtype=torch.int32), means.new_empty(means.shape), log_scales.new_empty(means.shape)


no_derivative("discretized_logistic_nll_with_grad", "fastvae.discretized_logistic_nll", double_backward=False)


@torch.library.register_fake(LIB + "discretized_logistic_mixture_nll_with_grad")
def _(x, logit_probs, means, log_scales, n_bits, reduction=0, validate_x=False):
    out = torch.ops.fastvae.discretized_logistic_nll.default(x, logit_probs, means, log_scales, n_bits, reduction,
                                                             validate_x)
    return (out, means.new_empty((), dtype=torch.int32), logit_probs.new_empty(means.shape),
            means.new_empty(means.shape), log_scales.new_empty(means.shape))


no_derivative("discretized_logistic_mixture_nll_with_grad", "fastvae.discretized_logistic_mixture_nll",
              double_backward=False)


def _recompute(saved, n_bits, reduction, needs, grad):
    """The node's backward where its stored gradients do not serve (see _with_grad): the registered backward
    (_backward) on the saved x, logit_probs (None: one logistic per pixel), means and log_scales."""
    redo = types.SimpleNamespace(saved_tensors=saved, n_bits=n_bits, reduction=reduction, needs_input_grad=needs)
    return _backward(redo, grad)[:4]


# The public functions' fast path on the CPU when the parameters need gradients, a C++ autograd node
# (csrc/torch/logistic/autograd.cpp; a torch.autograd.Function's Python round trips cost several percent of the time
# at B = 64): the op's forward with gradients (discretized_logistic_nll_with_grad, or the mixture's with logit_probs)
# keeps the per-sample losses' gradients (finite ones) for the backward, which scales them by the incoming gradient
# in place (they become the gradients: no new memory) to the values of the registered backward, bit for bit. It
# recomputes through _recompute where a stored gradient is inf or NaN (a zero incoming gradient must give 0 there),
# for a double backward (refused there) and for a second backward through a retained graph (the stored gradients were
# used up by the first). The price: the gradients are kept from the forward to the backward (2 floats per pixel for
# the single form, 3 per pixel and component for a mixture).
_with_grad = _C.logistic_with_grad
_C.set_logistic_recompute(_recompute)
