"""Argument checks of the public functions and of the models: each error names the argument, what was expected and
what was found. Every check takes the value first and its name second.

Two kinds of scalar checks, which differ on purpose:
  - the ops' (count, number, flag) take numpy scalars, and number passes NaN and inf through (a NaN in is a NaN
    out of an op);
  - the models' configuration (integer, integers, real, boolean) takes Python ints, finite reals and True/False
    only, within bounds (a latent_dim of 2.5 or True, a beta of NaN is refused, never truncated or read).
And the memory check (check_fits) that refuses up front what could only end in an allocation failure."""
import math
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


def generator(g, device=None, name="generator"):
    """None or a torch.Generator on the CPU or on `device` (the inputs' device) when given."""
    if g is None:
        return None
    if not isinstance(g, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None; got {type(g).__name__}")
    if device is not None and g.device.type != "cpu" and g.device != device:
        raise ValueError(f"generator must be on the CPU or on the device of the inputs ({device}); "
                         f"got a generator on {g.device}")
    return g


# -------------------------------------------------------------------------------------------------------------------
# the models' configuration and arguments


def is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def integer(v, name, minimum, maximum=None):
    """v as an int in [minimum, maximum]: bools and floats (2.5, and 2.0 too) are refused, not truncated."""
    if not is_int(v):
        raise TypeError(f"{name} must be an int; got {type(v).__name__} {v!r}")
    if v < minimum or (maximum is not None and v > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}; got {v}")
    return int(v)


def integers(v, name, minimum, length=None):
    """v, a list or tuple (of `length` items when given) of ints >= minimum, as a list of ints."""
    if not isinstance(v, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of ints; got {type(v).__name__} {v!r}")
    if length is not None and len(v) != length:
        raise ValueError(f"{name} must hold {length} ints; got {list(v)!r}")
    return [integer(x, f"{name}[{i}]", minimum) for i, x in enumerate(v)]


def real(v, name, *, positive=False):
    """v as a finite float >= 0 (> 0 when positive)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number; got {type(v).__name__} {v!r}")
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}; got {v!r}")
    return float(v)


def boolean(v, name):
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False; got {type(v).__name__} {v!r}")
    return v


def device_memory(device):
    """The memory of device in bytes (physical memory for the CPU), or None where it is not known."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        from .data import files
        return files._memory_bytes()
    return None


def check_fits(n_bytes, device, what):
    """Refuses up front what could only end in an allocation failure (or the OOM killer) on device."""
    memory = device_memory(torch.device(device))
    if memory is not None and n_bytes > memory:
        raise ValueError(f"{what} would need {n_bytes / 2**30:.1f} GiB, more than the {memory / 2**30:.1f} GiB of "
                         f"memory of {device}")
