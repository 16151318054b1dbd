"""bernoulli_nll, the likelihood of binary data (or probabilities), fused: built as the Gaussian family's ops are
(gaussian.py: the checks, the reductions inside the op, the fast path of _operands.py, the fake implementation and
autograd formula beside the public function). Its one extra: the check that x lies in [0, 1], which also recognises
a call in fastvae 0.1's argument order."""
import warnings

import torch

from .. import _checks
from ._composites import routed
from ._operands import (_FAILED, _REDUCTION, _acc, _compute_dtype, _fast, _likelihood_operands, _loss_shape,
                        _per_sample_shape, _rows, _spread)
from ._registry import LIB, create_graph, direct, fused_backward, not_differentiable, ops
from ._transforms import plain


# ---- bernoulli_nll -----------------------------------------------------------------------------------------------

def bernoulli_nll(x, logits, *, reduction="mean", validate_args=True):
    """-log Bernoulli(x | sigmoid(logits)) = softplus(logits) - x * logits, stable for any logit; x in [0, 1]
    (binarized data, or probabilities). logits may carry a leading sample dim (k, *x.shape).

    The data comes first, as in every fastvae likelihood (gaussian_nll(x, mean), discretized_logistic_nll(x, ...)).
    validate_args (default True) checks that x lies in [0, 1] (one read of x): a call in the order of fastvae 0.1,
    bernoulli_nll(logits, x), is recognised (the first operand outside [0, 1], the second inside it), answered with
    a FutureWarning and run as meant; any other x outside [0, 1] is refused. validate_args=False skips the check."""
    r = _REDUCTION.get(reduction) if type(reduction) is str else None
    if r is not None and type(validate_args) is bool and _fast(x, logits):
        try:  # the op checks x in [0, 1] (validate_x); refused, the checks below tell the old order from bad data
            return _bernoulli_nll(logits, x, r, validate_args)
        except _FAILED:
            pass
    r = _REDUCTION[_checks.reduction(reduction)]
    x_range = None
    if _checks.flag(validate_args, "validate_args"):
        x, logits, x_range = _bernoulli_order(x, logits)
    _likelihood_operands(x, logits, "logits")
    if x_range is not None:
        raise ValueError(f"fastvae.bernoulli_nll: x must lie in [0, 1] (binary data or probabilities); got values in "
                         f"[{x_range[0]:g}, {x_range[1]:g}]. The arguments are (x, logits): the data first")
    dt = _compute_dtype(logits.device, x, logits)
    return routed.bernoulli_nll(logits.to(dt), x.to(dt), r, False)


def _in_unit_interval(t):
    lo, hi = torch.aminmax(plain(t))  # every element (under vmap too), detached
    return not (lo < 0 or hi > 1), (float(lo), float(hi))


def _bernoulli_order(x, logits):
    """(x, logits, None) as meant: the arguments themselves, or swapped (with a FutureWarning) for a call written in
    fastvae 0.1's order bernoulli_nll(logits, x); (x, logits, (min, max)) when x has values outside [0, 1]."""
    _checks.tensor(x, "x", min_dim=1)
    _checks.tensor(logits, "logits", min_dim=1)
    if not _checks.has_values(x) or not _checks.has_values(logits) or x.numel() == 0:
        return x, logits, None
    x_ok, x_range = _in_unit_interval(x)
    if x_ok:
        return x, logits, None
    sampled_swap = x.dim() == logits.dim() + 1  # (logits (k, B, ...), x (B, ...)) in the old order
    if logits.numel() and (sampled_swap or x.shape == logits.shape) and _in_unit_interval(logits)[0]:
        warnings.warn(
            "fastvae.bernoulli_nll takes (x, logits) (the data first, like gaussian_nll(x, mean)); this call passed "
            "(logits, x) in fastvae 0.1's order and was run as bernoulli_nll(x=second, logits=first). Write "
            "bernoulli_nll(x, logits): the old order will be refused in a later version", FutureWarning, stacklevel=3)
        return logits, x, None
    return x, logits, x_range


@torch.library.register_fake(LIB + "bernoulli_nll")
def _(logits, x, reduction=0, validate_x=False):
    return logits.new_empty(_loss_shape(x, logits, reduction), dtype=_acc(logits.dtype))


@torch.library.register_fake(LIB + "bernoulli_nll_backward")
def _(grad, logits, x, reduction=0):
    return logits.new_empty(logits.shape)


def _bnll_setup(ctx, inputs, output):
    logits, x, ctx.reduction, _ = inputs
    ctx.save_for_backward(logits, x)


def _bnll_backward(ctx, grad):
    logits, x = ctx.saved_tensors
    need_logits, need_x = ctx.needs_input_grad[:2]
    grad_logits = g = None
    if need_x or create_graph():
        g = _rows(_spread(grad, _per_sample_shape(x, logits), ctx.reduction).to(logits.dtype), logits)
    if need_logits and create_graph():  # d/dlogits = grad * (sigmoid(logits) - x)
        grad_logits = g * (torch.sigmoid(logits) - x)
    elif need_logits:
        grad_logits = fused_backward(ops.bernoulli_nll_backward, grad, logits, x, ctx.reduction)
    # d/dx = -grad * logits (x enters linearly), summed over a leading sample dim
    grad_x = -(g * logits).sum_to_size(x.shape) if need_x else None
    return grad_logits, grad_x, None, None


torch.library.register_autograd(LIB + "bernoulli_nll", _bnll_backward, setup_context=_bnll_setup)
_bernoulli_nll = direct(ops.bernoulli_nll, _bnll_setup, _bnll_backward)
not_differentiable("bernoulli_nll_backward", "fastvae.bernoulli_nll")
