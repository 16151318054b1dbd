"""What every family's benchmarked ops share: the sizes of their inputs, the Op record, the Unavailable of a
provider that cannot run here, and the helpers that build inputs, providers and bytes models."""
import importlib
import math

import torch

import fastvae

LATENT = 1024          # feature width of the elementwise ops
TRIL_D = 32            # latent dim of reparameterize_tril
CODE_D = 64            # code dim of the distances
MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)   # pythae's WAE imq scales of C = 2 d h^2
MMD_BANDWIDTHS = tuple(math.sqrt(s) for s in MMD_SCALES)  # the same kernel sum in fastvae's bandwidth units
SW_PROJECTIONS = 256


class Unavailable(Exception):
    """A provider that cannot run here; the message says why."""


def _need_fastvae(name, module=fastvae):
    if not hasattr(module, name):
        where = "fastvae" if module is fastvae else module.__name__
        raise Unavailable(f"{where}.{name} does not exist in this build (not merged yet)")
    return getattr(module, name)


def _import(name):
    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or a package that fails while importing
        raise Unavailable(f"{name} not importable: {type(e).__name__}: {e}") from e


class Op:
    """One benchmarked op. `make(n, dtype, device, gen)` returns the inputs (tuple); `providers` maps a provider
    name to a builder returning a callable; `bytes_model(n, itemsize, mode)` / `flops_model(n, mode)` give the
    work of one call in that mode (None where not modelled). `annotate(provider, fn, input_sets, row)`, where given,
    returns extra fields for each measured row of an e2e op (e.g. per-epoch seconds, a profiled share)."""

    def __init__(self, name, kind, sizes, quick_sizes, make, providers, size_label, bytes_model=None,
                 flops_model=None, doc="", cuda_sizes=None, budget_scale=1.0, mem_model=None, annotate=None):
        self.name, self.kind, self.sizes, self.quick_sizes = name, kind, sizes, quick_sizes
        # provider -> (n, itemsize) -> bytes a call (forward + backward) needs at least: providers that would
        # exceed the machine's free memory are skipped with a row saying so, not run into the OOM killer
        self.mem_model = mem_model or {}
        self.budget_scale = budget_scale  # the target workloads get more reps
        self.cuda_sizes = cuda_sizes or {"elementwise": [4096, 16384, 65536], "pairwise": [4096, 16384, 65536],
                                         "e2e": [256, 1024, 4096]}.get(kind, sizes)
        self.make, self.providers, self.size_label = make, providers, size_label
        self.bytes_model, self.flops_model, self.doc = bytes_model, flops_model, doc
        self.annotate = annotate


def _randn(shape, dtype, device, gen, grad=False, scale=1.0, shift=0.0):
    t = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(scale).add_(shift)
    return t.to(device=device, dtype=dtype).requires_grad_(grad)


def _compile(fn):
    return torch.compile(fn, dynamic=False)


def _bytes(fwd, bwd):
    """bytes model from per-mode element-pass counts: fwd/bwd are functions (n, itemsize) -> bytes."""
    def model(n, itemsize, mode):
        f, b = fwd(n, itemsize), bwd(n, itemsize)
        return {"forward": f, "backward": b, "full": f + b}[mode]
    return model


def _elems(passes):
    return lambda n, s: passes * n * LATENT * s


def _dist():
    return _import("torch.distributions")
