"""The discretized-logistic likelihoods' twins."""
import math

import torch

from ._common import _lead, _mul_exp_half, _per_sample, _reduce


# ---- discretized logistics (the eager form: every (..., K) intermediate materialised, as PixelCNN++ / NVAE write it)

def _log_bin_mass(x, mean, log_scale, n_bits):
    """log P(x) of a logistic(mean, e^log_scale) discretized on the 2^n_bits grid in [-1, 1], edge bins with the
    tails, without cancellation: the bin is moved to the side of the mean (P is symmetric), where its ends H > L have
    H + L <= 0, and log P = logsigmoid(H) - log1p(e^L) + log(1 - e^-d), d = H - L = 2h e^-log_scale (as
    log d - d / 2 where d underflows). Ends are a e^-log_scale as (a q) q, q = e^(-log_scale / 2)."""
    levels = 2**n_bits - 1
    h = 1.0 / levels
    k = torch.round((x + 1) * (levels / 2)).clamp(0, levels)
    lo_edge, hi_edge = k == 0, k == levels
    u = (2 * k - levels) * h - mean
    flip = u > 0
    au = -u.abs()
    H = _mul_exp_half(au + h, -2 * log_scale)
    L = _mul_exp_half(au - h, -2 * log_scale)
    hi_inf = torch.where(flip, lo_edge, hi_edge)
    lo_inf = torch.where(flip, hi_edge, lo_edge)
    edge = lo_edge | hi_edge
    ld = math.log(2 * h) - log_scale
    d = torch.exp(ld)
    log1mexp = torch.where(d < 0.5, ld + torch.log(-torch.expm1(-d) / torch.where(d > 0, d, torch.ones_like(d))),
                           torch.log1p(-torch.exp(-d)))
    log1mexp = torch.where(d > 0, log1mexp, ld)  # d underflowed: (1 - e^-d) / d = 1
    zero = torch.zeros_like(H)
    return (torch.where(hi_inf, zero, torch.nn.functional.logsigmoid(H))
            - torch.where(lo_inf, zero, torch.log1p(torch.exp(L)))
            + torch.where(edge, zero, log1mexp))


def discretized_logistic_nll(x, mean, log_scale, *, n_bits=8, reduction="mean"):
    lp = _log_bin_mass(x, mean, log_scale, n_bits)
    return _reduce(_per_sample(-lp, _lead(mean, x)), reduction)


def discretized_logistic_mixture_nll(x, logit_probs, means, log_scales, *, n_bits=8, reduction="mean"):
    lp = _log_bin_mass(x.unsqueeze(-1), means, log_scales, n_bits)
    nll = -torch.logsumexp(torch.log_softmax(logit_probs, -1) + lp, -1)
    return _reduce(_per_sample(nll, 2 if means.dim() == x.dim() + 2 else 1), reduction)
