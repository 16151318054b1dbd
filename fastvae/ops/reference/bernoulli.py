"""bernoulli_nll's twin."""
import math

import torch

from ._common import _lead, _per_sample, _reduce


def _softplus(l):
    """log(1 + e^l) to working precision for every l, with the gradient sigmoid(l) (at 0 too). Not
    torch.nn.functional.softplus, which returns l itself above l = 20 (an error of e^-20 ~ 2e-9), nor
    BCE-with-logits, whose log(1 + e^-|l|) loses the relative precision of small results (1e-12 at l = 9)."""
    return torch.where(l > 0, l + torch.log1p(torch.exp(-l.clamp_min(0))), torch.log1p(torch.exp(l.clamp_max(0))))


def bernoulli_nll(x, logits, *, reduction="mean", validate_args=True):
    elem = _softplus(logits) - x * logits
    # an infinite logit: softplus(l) - x l = w |l| + log(1 + e^-|l|) -> w * inf, with w = 1 - x for l > 0 and x
    # otherwise, and 0 when w = 0 (x in {0, 1} on the likely side): the limit, not inf - inf
    # (constants, not w * inf: the masked gradient 0 * inf would be NaN)
    w = torch.where(logits > 0, 1 - x, x).detach()
    inf = torch.full_like(elem, math.inf)
    signed = torch.where(w > 0, inf, torch.where(w < 0, -inf, torch.full_like(elem, math.nan)))  # NaN x stays NaN
    limit = torch.where(w == 0, torch.zeros_like(elem), signed)
    elem = torch.where(logits.isinf(), limit, elem)
    return _reduce(_per_sample(elem, _lead(logits, x)), reduction)
