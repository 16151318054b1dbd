"""Distances between a batch of codes and a target (another sample or the standard normal prior) for the
statistical-distance autoencoders (WAE-MMD, InfoVAE, SWAE, energy distance), computed in tiles: nothing N x N
is ever stored, forward or backward.

Random parts (the prior samples of MMD with kernels other than "rbf", the projection directions of
sliced-Wasserstein) come from the Philox stream of a seed drawn from `generator` (see gaussian.py): the same
generator state gives the same result, on any device and thread count.

Each op's public function, fake implementation and autograd formula stand together, as in gaussian.py.
Double backward: sliced-Wasserstein's gradient is a scatter through the saved permutations, which has a
differentiable form; MMD's tiled backward has none, so differentiating its gradient raises."""
import collections.abc
import math
import numbers
from contextlib import nullcontext

import numpy as np
import torch

from .. import _checks
from ._composites import routed
from ._operands import _FAILED, _PLAIN, _fast_seed
from ._registry import (LIB, compute_dtype, create_graph, direct, draw_seed, fused_backward, not_differentiable,
                        ops)
from ._transforms import fused_call_ok

KERNELS = ("rbf", "imq", "laplacian", "energy")
ESTIMATORS = ("unbiased", "biased")
_UNBIASED = {"unbiased": True, "biased": False}


def _compute_dtype(*tensors):
    """The distance kernels take float32 and float64 on every device: 16-bit codes are computed (and returned) in
    float32, since the pair sums need the range and the digits."""
    return compute_dtype(*tensors)


def _samples(t, name):
    _checks.tensor(t, name)
    if t.dim() not in (2, 3):
        raise ValueError(f"{name} must have shape (N, d) or (B, N, d); got {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    return t


def _pair(x, y):
    """Checks y against x (same device, same batch and code dims); returns both as (B, n, d) and whether x was
    batched."""
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


# ---- the fast path -----------------------------------------------------------------------------------------------
# As in the Gaussian family (_operands.py): a call whose samples the ops take as they are (plain tensors of one
# float32/float64 dtype, (N, d) or (B, N, d), nothing empty, no generator) goes straight to the op and its autograd
# formula (`direct`); the binding's checks are then the only ones. When the op refuses, the checks of the public
# function run and raise their own error; the rest (16-bit or mixed dtypes, subclasses, meta and fake tensors,
# torch.compile, torch.func transforms) takes the checked path.

def _fast_samples(x, y):
    if not fused_call_ok() or type(x) not in _PLAIN:
        return False
    dt, nd = x.dtype, x.dim()
    if not (dt is torch.float32 or dt is torch.float64) or not (nd == 2 or nd == 3) or x.is_meta or not x.numel():
        return False
    return y is None or (type(y) in _PLAIN and y.dtype is dt and y.dim() == nd and not y.is_meta and y.numel() > 0)


def _fast_bandwidths(bandwidth):
    """bandwidth as the op takes it (a list of floats) when it is a float or a list/tuple of floats, else None
    (ints, numpy scalars and the rest take the checked path, which converts or refuses them)."""
    t = type(bandwidth)
    if t is float:
        return [bandwidth]
    if (t is list or t is tuple) and all(type(h) is float for h in bandwidth):
        return list(bandwidth)
    return None


# ---- mmd ---------------------------------------------------------------------------------------------------------

def mmd(x, y=None, *, kernel="imq", bandwidth=1.0, estimator="unbiased", generator=None):
    """Squared maximum mean discrepancy between the samples x (N, d) and y (M, d); (B, N, d) and (B, M, d) give (B,).

    kernel, with h the bandwidth: "rbf" exp(-|x-y|^2 / (2 h^2)); "imq" C / (C + |x-y|^2), C = 2 d h^2;
    "laplacian" exp(-|x-y| / h); "energy" -|x-y| (MMD^2 is then the energy distance; bandwidth ignored).
    bandwidth: a positive number or a list/tuple of them (the kernel is the sum over the bandwidths, one pass).
    estimator: "unbiased" (U-statistic, can be negative) or "biased" (V-statistic).
    y None: the standard normal prior N(0, I_d); exact closed-form prior terms for "rbf", N samples drawn from
    `generator` for the other kernels.
    Limit: on CUDA the backward takes d <= 256 (ValueError otherwise); any number of bandwidths and batches."""
    unbiased = _UNBIASED.get(estimator) if type(estimator) is str else None
    seed = None
    if unbiased is not None and generator is None and type(kernel) is str and _fast_samples(x, y):
        bws = _fast_bandwidths(bandwidth)
        if bws is not None:
            if y is None and kernel != "rbf":
                seed = _fast_seed(x)  # kept for the checked path: a refused call draws no second seed
            try:
                if x.dim() == 3:
                    return _mmd(x, y, seed, kernel, bws, unbiased)
                return _mmd(x.unsqueeze(0), None if y is None else y.unsqueeze(0), seed, kernel, bws, unbiased)[0]
            except _FAILED:
                pass  # the checks below say why
    kernel, bws, unbiased = _mmd_options(kernel, bandwidth, estimator)
    xb, yb, batched = _pair(x, y)
    _checks.generator(generator, xb.device)
    if unbiased and xb.shape[1] < 2:
        raise ValueError(f"x needs at least 2 samples for the unbiased estimator; got N = {xb.shape[1]}")
    if unbiased and yb is not None and yb.shape[1] < 2:
        raise ValueError(f"y needs at least 2 samples for the unbiased estimator; got M = {yb.shape[1]}")
    dt = _compute_dtype(xb, yb)
    if seed is None and yb is None and kernel != "rbf":
        seed = draw_seed(xb.device, generator)
    out = routed.mmd(xb.to(dt), None if yb is None else yb.to(dt), seed, kernel, bws, unbiased)
    return out if batched else out[0]


def energy_distance(x, y=None, **kwargs):
    """The energy distance 2 E|x - y| - E|x - x'| - E|y - y'| = mmd(x, y, kernel="energy", ...)."""
    if "kernel" in kwargs:
        raise TypeError("energy_distance takes no kernel argument (it is mmd with kernel='energy')")
    return mmd(x, y, kernel="energy", **kwargs)


@torch.library.register_fake(LIB + "mmd")
def _(x, y, seed, kernel, bandwidth, unbiased):
    return x.new_empty((x.shape[0],))


@torch.library.register_fake(LIB + "mmd_backward")
def _(grad, x, y, seed, kernel, bandwidth, unbiased, need_y):
    return x.new_empty(x.shape), (y.new_empty(y.shape) if need_y and y is not None else x.new_empty((0,)))


def _mmd_setup(ctx, inputs, output):
    x, y, seed, kernel, bandwidth, unbiased = inputs
    ctx.save_for_backward(x, y, seed)
    ctx.args = (kernel, bandwidth, unbiased)


def _mmd_backward(ctx, grad):
    x, y, seed = ctx.saved_tensors
    need_y = y is not None and ctx.needs_input_grad[1]
    grad_x, grad_y = fused_backward(ops.mmd_backward, grad, x, y, seed, *ctx.args, need_y)
    return (grad_x if ctx.needs_input_grad[0] else None), (grad_y if need_y else None), None, None, None, None


torch.library.register_autograd(LIB + "mmd", _mmd_backward, setup_context=_mmd_setup)
_mmd = direct(ops.mmd, _mmd_setup, _mmd_backward)
# reached under create_graph=True by the backward of mmd itself: that is where a double backward is refused
not_differentiable("mmd_backward", "fastvae.mmd (energy_distance, MMDLoss)", double_backward=False)


# ---- sliced_wasserstein ------------------------------------------------------------------------------------------

def sliced_wasserstein(x, y=None, *, n_projections=128, p=2, projections=None, generator=None):
    """SW_p^p between x (N, d) and y (N, d) (or (B, N, d) -> (B,)): the mean over unit directions theta of
    (1/N) sum_i |sort(x theta)_i - sort(y theta)_i|^p. No p-th root: take it yourself.

    projections (d, L): the directions, used as given. None: n_projections directions uniform on the sphere,
    drawn from `generator`. y None: the standard normal prior, whose sorted projection is the exact normal
    quantile Phi^-1((i + 1/2) / N) (no prior samples).
    Limit: on CUDA fewer than 2^31 projected values B L N (ValueError otherwise)."""
    tp, seed = type(p), None
    if (projections is None and generator is None and type(n_projections) is int and (tp is float or tp is int)
            and 1 <= n_projections <= _checks.INT64_MAX and _fast_samples(x, y) and (y is None or y.shape == x.shape)):
        seed = _fast_seed(x)  # kept for the checked path: a refused call draws no second seed
        try:
            return _sw_fast(x, y, seed, n_projections, p)
        except _FAILED:
            pass  # the checks below say why
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
        # drawn on x's device from the seed there (no host copy: graph-capturable), the same on every device
        if seed is None:
            seed = draw_seed(xb.device, generator)
        theta = ops.random_directions(seed, d, n_projections).to(dt)
    else:
        theta = projections.to(dt)
    B, L = xb.shape[0], theta.shape[1]

    def project(s):  # (B, L, N), one row per direction, from one 2-D matmul (contiguous as it is when B = 1)
        # in dt whatever autocast says: bf16 projections would round away the order the sort depends on (the
        # devices without autocast, meta, have nothing to turn off)
        off = torch.autocast(s.device.type, enabled=False) if s.device.type in ("cpu", "cuda") else nullcontext()
        with off:
            return (theta.mT @ s.to(dt).reshape(B * N, d).mT).view(L, B, N).permute(1, 0, 2)

    px = project(xb)
    py = None if yb is None else project(yb)
    out, _, _ = routed.sliced_wasserstein_projected(px, py, p)
    return out if batched else out[0]


def _sw_fast(x, y, seed, n_projections, p):
    """sliced_wasserstein's fast path: the same directions (the seed's stream), the same projections (one 2-D
    matmul each, in the samples' dtype) and the same op, without the checked path's casts, and without an autocast
    context when autocast is off (entering one costs more than the matmul at small sizes)."""
    dev = x.device.type
    if (dev == "cpu" or dev == "cuda") and torch.is_autocast_enabled(dev):
        with torch.autocast(dev, enabled=False):
            return _sw_fast(x, y, seed, n_projections, p)
    shape = x.shape
    d = shape[-1]
    theta = ops.random_directions(seed, d, n_projections)
    if x.dtype is not torch.float32:
        theta = theta.to(x.dtype)
    rows = theta.mT
    if len(shape) == 2:  # B = 1: (L, N) -> (1, L, N)
        px = (rows @ x.mT).unsqueeze(0)
        py = None if y is None else (rows @ y.mT).unsqueeze(0)
        return _sliced_wasserstein_projected(px, py, float(p))[0][0]
    B, N = shape[0], shape[1]
    px = (rows @ x.reshape(B * N, d).mT).view(n_projections, B, N).permute(1, 0, 2)
    py = None if y is None else (rows @ y.reshape(B * N, d).mT).view(n_projections, B, N).permute(1, 0, 2)
    return _sliced_wasserstein_projected(px, py, float(p))[0]


@torch.library.register_fake(LIB + "sliced_wasserstein_projected")
def _(px, py, p):
    perm_y = px.new_empty(px.shape, dtype=torch.int32) if py is not None else px.new_empty((0,), dtype=torch.int32)
    return px.new_empty((px.shape[0],)), px.new_empty(px.shape, dtype=torch.int32), perm_y


@torch.library.register_fake(LIB + "sliced_wasserstein_projected_backward")
def _(grad, px, py, perm_x, perm_y, p, need_py):
    return px.new_empty(px.shape), (py.new_empty(py.shape) if need_py and py is not None else px.new_empty((0,)))


def _sw_setup(ctx, inputs, output):
    px, py, p = inputs
    _, perm_x, perm_y = output
    ctx.save_for_backward(px, py, perm_x, perm_y)
    ctx.p = p


def _sw_backward(ctx, grad, _grad_perm_x, _grad_perm_y):
    px, py, perm_x, perm_y = ctx.saved_tensors
    need_py = py is not None and ctx.needs_input_grad[1]
    if create_graph():
        gpx, gpy = _sw_grads(grad, px, py, perm_x, perm_y, ctx.p)
    else:
        gpx, gpy = fused_backward(ops.sliced_wasserstein_projected_backward, grad, px, py, perm_x, perm_y, ctx.p,
                                  need_py)
    return (gpx if ctx.needs_input_grad[0] else None), (gpy if need_py else None), None


def _sw_grads(grad, px, py, perm_x, perm_y, p):
    """The differentiable gradients of mean_{l,i} |px[perm_x]_i - py[perm_y]_i|^p (py None: the normal quantiles
    Phi^-1((i + 1/2) / N)): |delta|^p differentiated, then scattered back through the permutations."""
    B, L, N = px.shape
    perm_x = perm_x.long()
    xs = px.gather(-1, perm_x)
    if py is None:
        ys = torch.special.ndtri((torch.arange(N, dtype=torch.float64, device=px.device) + 0.5) / N).to(px.dtype)
    else:
        perm_y = perm_y.long()
        ys = py.gather(-1, perm_y)
    delta = xs - ys
    if p == 2:
        d_loss = 2 * delta
    else:  # p sign(delta) |delta|^(p - 1), 0 at delta = 0 (also the second derivative there, through the where)
        nonzero = delta != 0
        d_loss = torch.where(nonzero, p * torch.sign(delta) * torch.where(nonzero, delta.abs(), 1) ** (p - 1), 0)
    g = grad.to(px.dtype).reshape(B, 1, 1) * d_loss / (L * N)
    gpx = torch.zeros_like(px).scatter(-1, perm_x, g)
    gpy = None if py is None else torch.zeros_like(py).scatter(-1, perm_y, -g)
    return gpx, gpy


torch.library.register_autograd(LIB + "sliced_wasserstein_projected", _sw_backward, setup_context=_sw_setup)
_sliced_wasserstein_projected = direct(ops.sliced_wasserstein_projected, _sw_setup, _sw_backward)
not_differentiable("sliced_wasserstein_projected_backward", "fastvae.sliced_wasserstein")


@torch.library.register_fake(LIB + "random_directions")
def _(seed, d, n):
    return seed.new_empty((d, n), dtype=torch.float32)
