"""The distances' twins: mmd, energy_distance, sliced_wasserstein."""
import math

import torch

def _sq_dists(a, b):
    """|a_i - b_j|^2 from the differences themselves (exact, O(N M d) memory: small inputs only)."""
    return ((a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2).sum(-1)


def _safe_sqrt(u):
    """sqrt with derivative 0 at 0 (the gradient of |x - y| at x = y)."""
    pos = u > 0
    return torch.where(pos, torch.where(pos, u, torch.ones_like(u)).sqrt(), torch.zeros_like(u))


def _kernel_param(p, dtype):
    """A kernel parameter computed in double, saturated at the dtype's largest finite value (a tiny bandwidth):
    k(0) = 1 and k(u > 0) = 0 are then the limits, as in the kernels."""
    return min(p, torch.finfo(dtype).max)


def _inv(v):
    return math.inf if v == 0 else 1.0 / v


def _pair_kernel(u, kernel, bandwidths, d):
    if kernel == "energy":
        return -_safe_sqrt(u)
    k = torch.zeros_like(u)
    for h in bandwidths:
        if kernel == "rbf":  # exp(-u / (2 h^2))
            k = k + torch.exp(-u * _kernel_param(0.5 * _inv(h * h), u.dtype))
        elif kernel == "imq":  # C / (C + u) = 1 / (1 + u / C), C = 2 d h^2 (which overflows for a huge h)
            k = k + 1 / (1 + u * _kernel_param(0.5 * _inv(d * h * h), u.dtype))
        elif kernel == "laplacian":  # exp(-|x - y| / h)
            k = k + torch.exp(-_safe_sqrt(u) * _kernel_param(_inv(h), u.dtype))
        else:
            raise ValueError(f"kernel must be one of ('rbf', 'imq', 'laplacian', 'energy'); got {kernel!r}")
    return k


def _mean_pairs(a, b, kernel, bandwidths, unbiased, same):
    k = _pair_kernel(_sq_dists(a, b), kernel, bandwidths, a.shape[-1])
    n, m = a.shape[-2], b.shape[-2]
    if same and unbiased:
        k = k * (1 - torch.eye(n, dtype=k.dtype, device=k.device))
        return k.sum((-2, -1)) / (n * (n - 1))
    return k.sum((-2, -1)) / (n * m)


def mmd(x, y=None, *, kernel="imq", bandwidth=1.0, estimator="unbiased", generator=None, prior_samples=None):
    """MMD^2 by its definition. y None: the standard normal prior, in closed form for "rbf"; for the other kernels
    `prior_samples` (x's shape) or N samples of torch.randn stand in for it."""
    bws = [float(bandwidth)] if isinstance(bandwidth, (int, float)) else [float(h) for h in bandwidth]
    unbiased = estimator == "unbiased"
    d = x.shape[-1]
    xx = _mean_pairs(x, x, kernel, bws, unbiased, True)
    if y is None and kernel == "rbf":
        # (h^2 / (h^2 + c))^(d/2) as exp(-d/2 log1p(c / h^2)): h^2 may over- or underflow
        yy = sum(math.exp(-d / 2 * math.log1p(2 * _inv(h * h))) for h in bws)
        n2 = (x * x).sum(-1)
        xy = sum(math.exp(-d / 2 * math.log1p(_inv(h * h))) * torch.exp(-n2 / (2 * (h * h + 1))) for h in bws).mean(-1)
        return xx + yy - 2 * xy
    if y is None:
        y = prior_samples if prior_samples is not None else torch.randn(
            x.shape, dtype=x.dtype, device=x.device, generator=generator)
    return xx + _mean_pairs(y, y, kernel, bws, unbiased, True) - 2 * _mean_pairs(x, y, kernel, bws, unbiased, False)


def energy_distance(x, y=None, **kwargs):
    return mmd(x, y, kernel="energy", **kwargs)


def sliced_wasserstein(x, y=None, *, n_projections=128, p=2, projections=None, generator=None):
    """SW_p^p by sorting both projections (y None: the normal quantiles Phi^-1((i + 1/2) / N) as the target)."""
    if projections is None:
        projections = torch.randn(x.shape[-1], n_projections, dtype=x.dtype, device=x.device, generator=generator)
        projections = projections / projections.norm(dim=0, keepdim=True)
    xs = torch.sort(x @ projections, dim=-2).values
    if y is None:
        n = x.shape[-2]
        q = torch.special.ndtri((torch.arange(n, dtype=torch.float64, device=x.device) + 0.5) / n).to(x.dtype)
        ys = q.unsqueeze(-1)
    else:
        ys = torch.sort(y @ projections, dim=-2).values
    return ((xs - ys).abs() ** p).mean((-2, -1))
