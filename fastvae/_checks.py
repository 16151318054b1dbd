"""Argument checks of the public functions: each error names the argument, what was expected and what was found."""
import numbers

import torch

REDUCTIONS = ("none", "sum", "mean")


def tensor(t, name, *, min_dim=0, floating=True):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s); got shape {tuple(t.shape)}")
    return t


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


def n_samples(k):
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"n_samples must be a positive int or None; got {k!r}")
    if k < 1:
        raise ValueError(f"n_samples must be >= 1; got {k}")
    return int(k)


def reduction(r):
    if r not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {r!r}")
    return r


def generator(g):
    if g is not None and not isinstance(g, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(g).__name__}")
    return g
