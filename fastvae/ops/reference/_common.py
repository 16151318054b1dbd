"""What the reference twins share: the per-sample sums and reductions of the losses, and a e^(c/2) computed as the
kernels compute it."""
import math

import torch

_LOG_2PI = math.log(2 * math.pi)


def _per_sample(t, lead):
    """Sum over all dims after the first `lead` ones."""
    return t.reshape(*t.shape[:lead], -1).sum(-1)


def _reduce(per_sample, reduction):
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be one of ('none', 'sum', 'mean'); got {reduction!r}")


def _lead(main, x):
    return 2 if main.dim() == x.dim() + 1 else 1


def _mul_exp_half(a, c):
    """a e^(c/2) as (a q) q with q = e^(c/4) (e^(c/2) alone overflows first), 0 where a == 0 whatever c is (unless
    c is NaN): the kernels' mul_q2. c is replaced by 0 there before the exp, so that the gradient is 0 too (a where()
    after it would give 0 * inf = NaN)."""
    c = torch.where((a == 0) & ~c.isnan(), torch.zeros_like(c), c)
    q = torch.exp(0.25 * c)
    return (a * q) * q
