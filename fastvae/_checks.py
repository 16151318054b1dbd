"""Argument checks of the public functions: each error names the argument, what was expected and what was found."""
import numbers

import numpy as np
import torch
from torch._subclasses.fake_tensor import is_fake

REDUCTIONS = ("none", "sum", "mean")
INT64_MAX = 2**63 - 1  # the ops take int64 sizes


def tensor(t, name, *, min_dim=0, floating=True):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s); got shape {tuple(t.shape)}")
    return t


def has_values(t):
    """Whether t's values can be read for a check: not while torch.compile traces (a data-dependent branch would
    break the graph) and not on meta or fake tensors (shape inference has no values)."""
    return not torch.compiler.is_compiling() and not t.is_meta and not is_fake(t)


def same_device(ref, ref_name, t, name):
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}); got {t.device}")


def same_shape(ref, ref_name, t, name):
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}; got {tuple(t.shape)}")


def nonempty_batch(t, name):
    if t.dim() >= 1 and t.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (shape {tuple(t.shape)}); expected at least one sample")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")


def count(k, name):
    """A positive int (numpy integers too; not a bool, a float or a tensor) that fits the ops' int64."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be a positive int; got {type(k).__name__} {k!r}")
    if not 1 <= k <= INT64_MAX:
        raise ValueError(f"{name} must be a positive int (at most 2**63 - 1); got {k}")
    return int(k)


def n_samples(k):
    return None if k is None else count(k, "n_samples")


def number(v, name):
    """A real number (numpy scalars too; not a bool, a string or a tensor), as a float."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(v).__name__} {v!r}")
    return float(v)


def flag(v, name):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {type(v).__name__} {v!r}")
    return bool(v)


def choice(v, name, choices):
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {v!r}")
    return str(v)


def reduction(r):
    return choice(r, "reduction", REDUCTIONS)


def generator(g, device=None):
    """None or a torch.Generator on the CPU or on `device` (the inputs' device) when given."""
    if g is None:
        return None
    if not isinstance(g, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(g).__name__}")
    if device is not None and g.device.type != "cpu" and g.device != device:
        raise ValueError(f"generator must be on the CPU or on the device of the inputs ({device}); "
                         f"got a generator on {g.device}")
    return g
