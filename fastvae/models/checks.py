"""Argument checks of the VAE family: each error names the argument, what was expected and what was found (the
choices go through fastvae._checks.choice, as the ops' do). And the memory check that refuses up front what could
only end in an allocation failure."""
import math
import numbers

import torch


def generator(name, g):
    if g is not None and not isinstance(g, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None; got {type(g).__name__}")


def is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def integer(name, v, minimum, maximum=None):
    """v as an int in [minimum, maximum]: bools and floats (2.5, and 2.0 too) are refused, not truncated."""
    if not is_int(v):
        raise TypeError(f"{name} must be an int; got {type(v).__name__} {v!r}")
    if v < minimum or (maximum is not None and v > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}; got {v}")
    return int(v)


def integers(name, v, minimum, length=None):
    if not isinstance(v, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of ints; got {type(v).__name__} {v!r}")
    if length is not None and len(v) != length:
        raise ValueError(f"{name} must hold {length} ints; got {list(v)!r}")
    return [integer(f"{name}[{i}]", x, minimum) for i, x in enumerate(v)]


def real(name, v, *, positive=False):
    """v as a finite float >= 0 (> 0 when positive)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number; got {type(v).__name__} {v!r}")
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}; got {v!r}")
    return float(v)


def boolean(name, v):
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False; got {type(v).__name__} {v!r}")
    return v


def device_memory(device):
    """The memory of device in bytes (physical memory for the CPU), or None where it is not known."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        from ..data import _memory_bytes
        return _memory_bytes()
    return None


def check_fits(n_bytes, device, what):
    """Refuses up front what could only end in an allocation failure (or the OOM killer) on device."""
    memory = device_memory(torch.device(device))
    if memory is not None and n_bytes > memory:
        raise ValueError(f"{what} would need {n_bytes / 2**30:.1f} GiB, more than the {memory / 2**30:.1f} GiB of "
                         f"memory of {device}")
