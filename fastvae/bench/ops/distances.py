"""The distances' benchmarked ops: mmd, energy_distance, sliced_wasserstein."""
import importlib

import torch

import fastvae
from fastvae import reference

from .common import (CODE_D, MMD_BANDWIDTHS, MMD_SCALES, Op, SW_PROJECTIONS, Unavailable, _compile, _import,
                     _need_fastvae, _randn)


# ---- distances ---------------------------------------------------------------------------------------------------
# Inputs: codes x (N, 64) requiring grad and prior samples y (N, 64) (the same samples for every provider that
# takes y). Useful FLOPs count the matmul-equivalent work of the pairwise terms: forward 2d per pair for each of
# the x-x, y-y and x-y matrices; backward (gradient for x) 2d to recompute and 2d to accumulate per pair of the
# x-x and x-y matrices. So fwd 6 d N^2, bwd 8 d N^2.

def _pairwise_flops(n, mode):
    d = CODE_D
    f, b = 6 * d * n * n, 8 * d * n * n
    return {"forward": f, "backward": b, "full": f + b}[mode]


def _make_codes(n, dtype, device, gen):
    return (_randn((n, CODE_D), dtype, device, gen, grad=True, scale=0.8, shift=0.1),
            _randn((n, CODE_D), dtype, device, gen))


def _imq_nxn(x, y):
    """pythae-style WAE MMD (unbiased, imq kernel summed over 7 scales) on full N x N distance matrices."""
    n, d = x.shape
    c_base = 2.0 * d

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(s * c_base / (s * c_base + d2) for s in MMD_SCALES)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = 1.0 - torch.eye(n, dtype=x.dtype, device=x.device)
    return (kxx * off).sum() / (n * (n - 1)) + (kyy * off).sum() / (n * (n - 1)) - 2 * kxy.mean()


def _energy_nxn(x, y):
    """Energy distance (biased) on full N x N distance matrices, as plain PyTorch code writes it."""
    return 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()


def _geomloss(loss, backend, **kw):
    geomloss = _import("geomloss")
    if backend == "online":
        try:
            importlib.import_module("pykeops")
        except Exception as e:
            raise Unavailable(f"pykeops not importable ({type(e).__name__}: {e}); geomloss online needs it") from e
    sl = geomloss.SamplesLoss(loss, backend=backend, **kw)
    return lambda x, y: sl(x, y)


def _pairwise_mem(n, s):
    """Memory models of the N x N providers (y has N rows too): the reference builds the (N, N, d) differences
    for the x-x, y-y and x-y pairs and autograd keeps them (~6 N^2 d); the N x N forms keep about ten N x N
    matrices (the distances, a kernel term per bandwidth, their sums)."""
    d = CODE_D
    ref = lambda n, s: 6 * n * n * d * s  # noqa: E731
    nxn = lambda n, s: 10 * n * n * s  # noqa: E731
    return {"eager": ref, "compile": nxn, "nxn-cdist": nxn, "geomloss-tensorized": nxn}


def _distance_ops():
    ops = []

    def mmd(ns):
        f = _need_fastvae("mmd", ns)
        return lambda x, y: f(x, y, kernel="imq", bandwidth=MMD_BANDWIDTHS, estimator="unbiased")

    ops.append(Op(
        "mmd", "pairwise", [1024, 2048, 4096], [128], _make_codes,
        {
            "fastvae": lambda: mmd(fastvae),
            "eager": lambda: mmd(reference),
            "compile": lambda: _compile(mmd(reference)),
            "nxn-cdist": lambda: _imq_nxn,
            "geomloss-tensorized": lambda: _geomloss("gaussian", "tensorized", blur=1.0),
            "geomloss-online": lambda: _geomloss("gaussian", "online", blur=1.0),
        },
        lambda n: f"{n}x{CODE_D}",
        flops_model=_pairwise_flops, mem_model=_pairwise_mem(None, None),
        doc="imq kernel summed over 7 bandwidths (pythae's WAE scales), unbiased, y = N prior samples; geomloss "
            "rows are its single-Gaussian kernel loss (one bandwidth, biased), the library alternative"))

    def energy(ns):
        f = _need_fastvae("energy_distance", ns)
        return lambda x, y: f(x, y)

    ops.append(Op(
        "energy_distance", "pairwise", [1024, 2048, 4096], [128], _make_codes,
        {
            "fastvae": lambda: energy(fastvae),
            "eager": lambda: energy(reference),
            "compile": lambda: _compile(energy(reference)),
            "nxn-cdist": lambda: _energy_nxn,
            "geomloss-tensorized": lambda: _geomloss("energy", "tensorized"),
            "geomloss-online": lambda: _geomloss("energy", "online"),
        },
        lambda n: f"{n}x{CODE_D}",
        flops_model=_pairwise_flops, mem_model=_pairwise_mem(None, None),
        doc="energy distance between x and N prior samples y"))

    def make_sw(n, dtype, device, gen):
        x, y = _make_codes(n, dtype, device, gen)
        theta = torch.randn((CODE_D, SW_PROJECTIONS), generator=gen)
        theta = (theta / theta.norm(dim=0, keepdim=True)).to(device=device, dtype=dtype)
        return x, y, theta

    def sw(ns):
        f = _need_fastvae("sliced_wasserstein", ns)
        return lambda x, y, theta: f(x, None, projections=theta, p=2)

    def sw_matmul_sort(x, y, theta):
        """What SWAE code does: project both sides, sort both, compare (y = prior samples)."""
        px, _ = torch.sort(x @ theta, dim=0)
        py, _ = torch.sort(y @ theta, dim=0)
        return ((px - py) ** 2).mean()

    def sw_pot():
        ot = _import("ot")
        return lambda x, y, theta: ot.sliced_wasserstein_distance(x, y, n_projections=SW_PROJECTIONS, p=2,
                                                                  projections=theta)

    L = SW_PROJECTIONS
    ops.append(Op(
        "sliced_wasserstein", "pairwise", [1024, 2048, 4096], [128], make_sw,
        {
            "fastvae": lambda: sw(fastvae),
            "eager": lambda: sw(reference),
            "compile": lambda: _compile(sw(reference)),
            "eager-matmul-sort": lambda: sw_matmul_sort,
            "pot": sw_pot,
        },
        lambda n: f"{n}x{CODE_D}",
        flops_model=lambda n, mode: {"forward": 2 * n * CODE_D * L, "backward": 2 * n * CODE_D * L,
                                     "full": 4 * n * CODE_D * L}[mode],
        doc=f"SW_2^2 over {L} given directions; fastvae/eager/compile use y=None (exact normal quantiles), "
            "eager-matmul-sort and POT use N prior samples. FLOPs: the projection matmul only (the rest is "
            "sorting), so % of matmul rate is low by nature"))
    return ops
