"""The entry point: load_data(spec) reads a data spec (a string, or a Dataset) from its source, binarizes it and
puts it on the device; the specs a run records (resolve_spec, spec_name); the bundled digits; and the labels that
semi-supervised training keeps (keep_labels)."""
import os

import numpy as np
import torch

from .arrays import from_dataset, load_array_file
from .dataset import _split
from .idx import NAMED, load_idx_dir, load_named

BINARIZE_SEED = 1234    # static binarization draws from its own stream, so every run sees the same bits


def load_digits():
    """scikit-learn's bundled 8x8 digits, (N, 1, 8, 8) in [0, 1], with the fixed seeded split."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:
        raise ImportError(f"the digits data set comes with scikit-learn, which could not be imported ({e}); "
                          "pip install 'torch-fastvae[train]' installs it") from e
    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    y = torch.from_numpy(d.target.astype(np.int64))
    return _split(x, y, "digits", (1, 8, 8), 10)


def keep_labels(y, n_labelled, n_classes, seed):
    """Semi-supervised training's labels: n_labelled of the labels y (N,) kept, balanced over the classes (n_labelled
    // n_classes each, the remainder one more for the first classes), drawn by seed; the others -1 (unknown).
    Returns (the labels with -1 where hidden, the kept indices (n_labelled,) in increasing order)."""
    if n_labelled < n_classes or n_labelled > y.shape[0]:
        raise ValueError(f"labelled must be from {n_classes} (one per class) to {y.shape[0]} (the training samples); "
                         f"got {n_labelled}")
    g = torch.Generator().manual_seed(seed + 29)
    kept = []
    for c in range(n_classes):
        members = (y == c).nonzero().squeeze(1)
        want = n_labelled // n_classes + (c < n_labelled % n_classes)
        if members.numel() < want:
            raise ValueError(f"labelled={n_labelled} keeps {want} labels of class {c}, which has {members.numel()} "
                             f"training samples")
        kept.append(members[torch.randperm(members.numel(), generator=g)[:want]])
    kept = torch.cat(kept).sort().values
    hidden = torch.full_like(y, -1)
    hidden[kept] = y[kept]
    return hidden, kept


_PATH_KINDS = ("mnist", "fashion", "npz", "npy")      # the spec kinds KIND:PATH that name a file or folder


def resolve_spec(spec):
    """A data spec with its file or folder made absolute (npz:x.npz -> npz:/where/it/was/x.npz; ~ expanded), so
    that a run records data that a command run from another folder finds; other specs (and Datasets) as they are."""
    if not isinstance(spec, str):
        return spec
    kind, _, arg = spec.partition(":")
    if kind not in _PATH_KINDS or not arg:
        return spec
    return f"{kind}:{os.path.abspath(os.path.expanduser(arg))}"


def spec_name(spec):
    """A short name of what a spec (or a Dataset) holds, for a default folder: digits, fashion, mnist, the stem of
    an npz/npy file, a Dataset's class name."""
    if not isinstance(spec, str):
        return type(spec).__name__.lower()
    kind, _, arg = spec.partition(":")
    if kind in ("npz", "npy") and arg:
        return os.path.splitext(os.path.basename(arg.rstrip("/")))[0] or kind
    return kind


def load_data(spec="digits", *, binarize=None, device=None):
    """spec (a string as in the module doc, or a Dataset) -> Data, binarized ("static": once, with a fixed
    seed; "dynamic": the test set once, the train set per batch by the trainer) and moved to device when it fits
    (else kept in host memory and moved per batch)."""
    if binarize not in (None, "none", "static", "dynamic"):
        raise ValueError(f"binarize must be None, 'static' or 'dynamic'; got {binarize!r}")
    binarize = None if binarize == "none" else binarize
    if isinstance(spec, torch.utils.data.Dataset):
        data = from_dataset(spec)
    elif not isinstance(spec, str):
        raise TypeError(f"data must be a spec string or a torch Dataset; got {type(spec).__name__}")
    elif spec == "digits":
        data = load_digits()
    elif spec in NAMED:
        data = load_named(spec)
    else:
        kind, _, arg = spec.partition(":")
        if not arg:
            raise ValueError(f"data spec {spec!r}: expected digits, fashion, mnist, mnist:DIR, fashion:DIR, npz:FILE "
                             f"or npy:FILE")
        if kind in ("mnist", "fashion"):
            data = load_idx_dir(os.path.expanduser(arg), kind)
        elif kind in ("npz", "npy"):
            data = load_array_file(os.path.expanduser(arg))
        else:
            raise ValueError(f"data spec {spec!r}: unknown kind {kind!r} (expected digits, mnist, fashion, npz, npy)")
    if binarize:
        g = torch.Generator().manual_seed(BINARIZE_SEED)
        data.test_x = torch.bernoulli(data.test_x, generator=g)
        if binarize == "static":
            data.train_x = torch.bernoulli(data.train_x, generator=g)
        data.binarize = binarize
    if device is not None:
        device = torch.device(device)
        if _fits(data, device):
            data = data.to(device)
    return data


def _fits(data, device):
    """Whether the whole data set fits on device with room to spare (half of the free memory)."""
    if device.type != "cuda":
        return True
    nbytes = sum(t.numel() * t.element_size() for t in (data.train_x, data.test_x) if t is not None)
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < free // 2
