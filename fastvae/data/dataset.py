"""The data set a run trains on (Data: train and test tensors) and the one rule by which every source's pixels and
labels are read (_pixels, _labels; the package's doc says it), with the fixed seeded train/test split of a source
that has none (_split) and the image layout of samples (_images)."""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

SPLIT_SEED = 0          # the train/test split never depends on the training seed
TEST_FRACTION = 0.2


class DataError(ValueError):
    """A data file is missing, truncated or malformed; the message names the file and what was expected."""


@dataclass
class Data:
    """Train and test tensors. x: (N, *shape) float32 in [0, 1]; y: (N,) int64 labels 0..n_classes-1 or None."""
    name: str
    train_x: torch.Tensor
    test_x: torch.Tensor
    train_y: Optional[torch.Tensor]
    test_y: Optional[torch.Tensor]
    shape: Tuple[int, ...]
    n_classes: int = 0
    binarize: Optional[str] = None

    @property
    def image_shape(self):
        """(C, H, W) when the samples are pictures (for PNGs), else None."""
        if len(self.shape) == 3:
            return self.shape
        if len(self.shape) == 1 and math.isqrt(self.shape[0]) ** 2 == self.shape[0]:
            s = math.isqrt(self.shape[0])
            return (1, s, s)
        return None

    def to(self, device):
        """Moves the tensors to device (the whole data set: batches are then slices, no copies per step)."""
        def mv(t):
            return None if t is None else t.to(device)
        return Data(self.name, mv(self.train_x), mv(self.test_x), mv(self.train_y), mv(self.test_y), self.shape,
                    self.n_classes, self.binarize)

    def info(self):
        return dict(name=self.name, shape=list(self.shape), n_train=int(self.train_x.shape[0]),
                    n_test=int(self.test_x.shape[0]), n_classes=self.n_classes, binarize=self.binarize)


def _pixels(parts):
    """[(numpy array of samples, where it came from)] of one data set -> float32 tensors in [0, 1], every part
    read by the same rule (the package doc's), so that a train split cannot be scaled unlike its test split."""
    for a, where in parts:
        if a.size == 0:
            raise DataError(f"{where} holds no data (shape {a.shape}); expected at least one non-empty sample")
    ints = [a for a, _ in parts if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer)]
    binary = all(((a == 0) | (a == 1)).all() for a in ints)
    out = []
    for a, where in parts:
        if a.dtype == np.bool_ or (np.issubdtype(a.dtype, np.integer) and binary):
            t = a.astype(np.float32)
        elif np.issubdtype(a.dtype, np.integer):
            if a.dtype not in (np.uint8, np.uint16):
                raise DataError(f"{where}: integer pixels of type {a.dtype} (values {a.min()}..{a.max()}) have no "
                                f"range to be read by; expected uint8 (0-255), uint16 (0-65535), integers that are "
                                f"all 0 or 1, bool, or floats in [0, 1] (convert the data, e.g. to uint8)")
            t = a.astype(np.float32) / np.iinfo(a.dtype).max
        elif np.issubdtype(a.dtype, np.floating):
            t = a.astype(np.float32)
            if not np.isfinite(t).all():
                raise DataError(f"{where}: the data holds NaN or inf values")
            lo, hi = float(t.min()), float(t.max())
            if lo < 0 or hi > 1:
                raise DataError(f"{where}: float pixels must lie in [0, 1]; found values in [{lo:.4g}, {hi:.4g}] "
                                f"(rescale the data, e.g. drop a Normalize transform)")
        else:
            raise DataError(f"{where}: expected numeric pixels; got dtype {a.dtype}")
        out.append(torch.from_numpy(np.ascontiguousarray(t)))
    return out


def _labels(parts):
    """[(numpy labels, where they came from)] of one data set -> (int64 tensors, n_classes). Labels are class ids
    0..K-1, K at most the number of samples: a larger id is no class label (and a CVAE's one-hot of that width
    would be its largest layer)."""
    for y, where in parts:
        if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: labels must be integer class ids; got dtype {y.dtype}")
        if y.size and int(y.min()) < 0:
            raise DataError(f"{where}: labels must be class ids >= 0; found {int(y.min())}")
    n = sum(y.size for y, _ in parts)
    top = max(int(y.max()) for y, _ in parts if y.size)
    if top >= n:
        raise DataError(f"{parts[0][1]}: labels run up to {top}, {top + 1} classes for {n} samples; expected class "
                        f"ids 0..K-1 with K at most the number of samples")
    return [torch.from_numpy(y.astype(np.int64)) for y, _ in parts], top + 1


def _split(x, y, name, shape, n_classes):
    n = x.shape[0]
    if n < 2:
        raise DataError(f"{name}: needs at least 2 samples to split into train and test; got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = max(1, int(round(n * TEST_FRACTION)))
    test, train = perm[:n_test], perm[n_test:]
    return Data(name, x[train], x[test], None if y is None else y[train], None if y is None else y[test],
                shape, n_classes)


def _images(a):
    """(N, H, W) -> (N, 1, H, W); (N, D) and (N, C, H, W) as they are."""
    return a[:, None] if a.dim() == 3 else a
