"""Distances between a batch of codes and a target (another sample or the standard normal prior) for the
statistical-distance autoencoders (WAE-MMD, InfoVAE, SWAE, energy distance), computed in tiles: nothing N x N
is ever stored, forward or backward.

Random parts (the prior samples of MMD with kernels other than "rbf", the projection directions of
sliced-Wasserstein) come from the Philox stream of a seed drawn from `generator` (see functional.py): the same
generator state gives the same result, on any device and thread count."""
import collections.abc
import math
import numbers

import numpy as np
import torch

from . import _checks
from . import _ops_distances  # noqa: F401  (registers fake and autograd implementations)
from .functional import _draw_seed

_ops_ns = torch.ops.fastvae

KERNELS = ("rbf", "imq", "laplacian", "energy")
ESTIMATORS = ("unbiased", "biased")


def _compute_dtype(*tensors):
    """float64 if any operand is float64, else float32 (16-bit codes are computed and returned in float32, on
    every device: the pair sums need the range and the digits)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _samples(t, name):
    _checks.tensor(t, name)
    if t.dim() not in (2, 3):
        raise ValueError(f"{name} must have shape (N, d) or (B, N, d); got {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    return t


def _pair(x, y):
    """Checks y against x (same device, same batch and code dims); returns both as (B, n, d) and whether x was batched."""
    _samples(x, "x")
    if y is not None:
        _samples(y, "y")
        _checks.same_device(x, "x", y, "y")
        if y.dim() != x.dim():
            raise ValueError(f"y must have {x.dim()} dims like x {tuple(x.shape)}; got {tuple(y.shape)}")
        if y.shape[-1] != x.shape[-1]:
            raise ValueError(f"y must have the dimension d = {x.shape[-1]} of x; got d = {y.shape[-1]} "
                             f"(x {tuple(x.shape)}, y {tuple(y.shape)})")
        if x.dim() == 3 and y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have the batch size {x.shape[0]} of x; got {y.shape[0]}")
    batched = x.dim() == 3
    if not batched:
        x = x.unsqueeze(0)
        y = None if y is None else y.unsqueeze(0)
    return x, y, batched


def _bandwidths(bandwidth):
    """A positive finite number or a non-empty sequence (list, tuple) of them, as a list of floats: not a string
    (a sequence of characters), a dict or a bool."""
    seq = isinstance(bandwidth, collections.abc.Sequence) and not isinstance(bandwidth, (str, bytes))
    values = list(bandwidth) if seq else [bandwidth]
    if not values:
        raise ValueError("bandwidth must not be an empty sequence")
    for h in values:
        if isinstance(h, (bool, np.bool_)) or not isinstance(h, numbers.Real):
            raise TypeError(f"bandwidth must be a positive number or a sequence (list, tuple) of them; got "
                            f"{type(h).__name__} {h!r}" + (f" in a {type(bandwidth).__name__}" if seq else ""))
        if not 0 < h < math.inf:
            raise ValueError(f"bandwidth must be positive and finite; got {h!r}")
    return [float(h) for h in values]


def _mmd_options(kernel, bandwidth, estimator):
    """The checked (kernel, bandwidths, unbiased) of mmd and MMDLoss."""
    kernel = _checks.choice(kernel, "kernel", KERNELS)
    unbiased = _checks.choice(estimator, "estimator", ESTIMATORS) == "unbiased"
    return kernel, _bandwidths(bandwidth), unbiased


def _sw_options(n_projections, p):
    """The checked (n_projections, p) of sliced_wasserstein and SlicedWassersteinLoss."""
    n_projections = _checks.count(n_projections, "n_projections")
    p = _checks.number(p, "p")
    if not 1 <= p < math.inf:
        raise ValueError(f"p must be a finite number >= 1; got {p!r}")
    return n_projections, p


def _projections(projections, x):
    """Given directions (d, L): a floating-point tensor on the device of x (B, N, d). Values are not read (that
    would synchronise a CUDA device on every call): NaN directions give a NaN distance."""
    _checks.tensor(projections, "projections")
    _checks.same_device(x, "x", projections, "projections")
    d = x.shape[-1]
    if projections.dim() != 2 or projections.shape[0] != d or projections.shape[1] < 1:
        raise ValueError(f"projections must have shape (d, L) = ({d}, L) with L >= 1; got {tuple(projections.shape)}")
    return projections


def mmd(x, y=None, *, kernel="imq", bandwidth=1.0, estimator="unbiased", generator=None):
    """Squared maximum mean discrepancy between the samples x (N, d) and y (M, d); (B, N, d) and (B, M, d) give (B,).

    kernel, with h the bandwidth: "rbf" exp(-|x-y|^2 / (2 h^2)); "imq" C / (C + |x-y|^2), C = 2 d h^2;
    "laplacian" exp(-|x-y| / h); "energy" -|x-y| (MMD^2 is then the energy distance; bandwidth ignored).
    bandwidth: a positive number or a list/tuple of them (the kernel is the sum over the bandwidths, one pass).
    estimator: "unbiased" (U-statistic, can be negative) or "biased" (V-statistic).
    y None: the standard normal prior N(0, I_d); exact closed-form prior terms for "rbf", N samples drawn from
    `generator` for the other kernels."""
    kernel, bws, unbiased = _mmd_options(kernel, bandwidth, estimator)
    xb, yb, batched = _pair(x, y)
    _checks.generator(generator, xb.device)
    if unbiased and xb.shape[1] < 2:
        raise ValueError(f"x needs at least 2 samples for the unbiased estimator; got N = {xb.shape[1]}")
    if unbiased and yb is not None and yb.shape[1] < 2:
        raise ValueError(f"y needs at least 2 samples for the unbiased estimator; got M = {yb.shape[1]}")
    dt = _compute_dtype(xb, yb)
    seed = _draw_seed(xb.device, generator) if yb is None and kernel != "rbf" else None
    out = _ops_ns.mmd(xb.to(dt), None if yb is None else yb.to(dt), seed, kernel, bws, unbiased)
    return out if batched else out[0]


def energy_distance(x, y=None, **kwargs):
    """The energy distance 2 E|x - y| - E|x - x'| - E|y - y'| = mmd(x, y, kernel="energy", ...)."""
    if "kernel" in kwargs:
        raise TypeError("energy_distance takes no kernel argument (it is mmd with kernel='energy')")
    return mmd(x, y, kernel="energy", **kwargs)


def sliced_wasserstein(x, y=None, *, n_projections=128, p=2, projections=None, generator=None):
    """SW_p^p between x (N, d) and y (N, d) (or (B, N, d) -> (B,)): the mean over unit directions theta of
    (1/N) sum_i |sort(x theta)_i - sort(y theta)_i|^p. No p-th root: take it yourself.

    projections (d, L): the directions, used as given. None: n_projections directions uniform on the sphere,
    drawn from `generator`. y None: the standard normal prior, whose sorted projection is the exact normal
    quantile Phi^-1((i + 1/2) / N) (no prior samples)."""
    n_projections, p = _sw_options(n_projections, p)
    xb, yb, batched = _pair(x, y)
    N, d = xb.shape[1], xb.shape[2]
    if yb is not None and yb.shape[1] != N:
        raise ValueError(f"y must have the number of samples of x (N = {N}) for sliced_wasserstein; got {yb.shape[1]}")
    _checks.generator(generator, xb.device)
    if projections is not None:
        projections = _projections(projections, xb)
    dt = _compute_dtype(xb, yb, projections)
    if projections is None:
        seed = _draw_seed(xb.device, generator)
        if seed.device.type not in ("cpu", "meta"):  # random_directions has no CUDA kernel yet: draw on the host
            seed = seed.cpu()
        theta = _ops_ns.random_directions(seed, d, n_projections).to(device=xb.device, dtype=dt)
    else:
        theta = projections.to(dt)
    B, L = xb.shape[0], theta.shape[1]

    def project(s):  # (B, L, N), one row per direction, from one 2-D matmul (contiguous as it is when B = 1)
        return (theta.mT @ s.to(dt).reshape(B * N, d).mT).view(L, B, N).permute(1, 0, 2)

    px = project(xb)
    py = None if yb is None else project(yb)
    out, _, _ = _ops_ns.sliced_wasserstein_projected(px, py, p)
    return out if batched else out[0]
