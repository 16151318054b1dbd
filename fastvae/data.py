"""Data sets for the VAE family, held as whole tensors (on the training device when they fit).

`load_data(spec)` understands:
  "digits"         scikit-learn's bundled 8x8 digits (1797 images, no download), a fixed seeded 80/20 split;
  "mnist:DIR"      MNIST IDX files in DIR (train-images-idx3-ubyte[.gz] ...; DIR, DIR/raw, DIR/MNIST/raw);
  "fashion:DIR"    the same for Fashion-MNIST (DIR/FashionMNIST/raw also searched);
  "npz:FILE"       arrays x_train/y_train/x_test/y_test (or x/y, or one unnamed array), "npy:FILE" one array;
  a torch.utils.data.Dataset (items x or (x, y)), split 80/20 with the same fixed seed.
Pixel values end up in [0, 1] (integer data is divided by its type's maximum, 16 for digits).
"""
import gzip
import math
import os
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

SPLIT_SEED = 0          # the train/test split never depends on the training seed
TEST_FRACTION = 0.2
BINARIZE_SEED = 1234    # static binarization draws from its own stream, so every run sees the same bits
_READ_CHUNK = 1 << 24

_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataError(ValueError):
    """A data file is missing, truncated or malformed; the message names the file and what was expected."""


@dataclass
class Data:
    """Train and test tensors. x: (N, *shape) float32 in [0, 1]; y: (N,) int64 labels or None."""
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


# -------------------------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)


def _open(path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _read_exact(f, n, path, what):
    """Reads n bytes in bounded chunks (so a lying size allocates only what the file really holds)."""
    parts, got = [], 0
    while got < n:
        try:
            chunk = f.read(min(_READ_CHUNK, n - got))
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: could not read {what} ({e}); the file is corrupt or truncated") from e
        if not chunk:
            raise DataError(f"{path} is truncated: its header declares {n} bytes of {what}, but the file holds "
                            f"only {got}")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_idx(path):
    """Reads one IDX file (`.gz` or not) into a numpy array.

    The header (two zero bytes, a type code, the number of dims, then each dim as a big-endian int32) is checked
    against the file's size before the data is read: a header that declares more data than the file holds is
    refused without allocating it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (expected an IDX file such as train-images-idx3-ubyte[.gz])")
    with _open(path) as f:
        head = _read_exact(f, 4, path, "the IDX magic number")
        if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
            raise DataError(f"{path} is not an IDX file: its magic number is {head.hex()}, expected 0000 followed by "
                            f"a type code in {{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}} and a non-zero "
                            f"number of dims")
        dtype, ndim = _IDX_DTYPES[head[2]], head[3]
        dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, f"the {ndim} dims of the IDX header"))
        n_bytes = math.prod(dims) * dtype.itemsize
        header_bytes = 4 + 4 * ndim
        if not path.endswith(".gz"):
            held = os.path.getsize(path) - header_bytes
            if held != n_bytes:
                state = "is truncated" if held < n_bytes else "has trailing data"
                raise DataError(f"{path} {state}: its header declares shape {tuple(dims)} of {dtype.name} "
                                f"({n_bytes} bytes), but the file holds {held} bytes after the header")
        else:
            _check_gzip_size(path, header_bytes + n_bytes, dims, dtype)
        raw = _read_exact(f, n_bytes, path, f"data (shape {tuple(dims)}, {dtype.name})")
        try:
            extra = f.read(1)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: the gzip stream is corrupt after the data ({e})") from e
        if extra:
            raise DataError(f"{path} has trailing data after the {n_bytes} bytes its header declares "
                            f"(shape {tuple(dims)})")
    return np.frombuffer(raw, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _check_gzip_size(path, expected, dims, dtype):
    """A gzip file records its uncompressed size mod 2^32 in its last 4 bytes: a cheap refusal of a header that
    declares more than the file holds (the chunked read catches the rest)."""
    size = os.path.getsize(path)
    if size < 18:
        raise DataError(f"{path} is too short ({size} bytes) to be a gzip file")
    with open(path, "rb") as raw:
        raw.seek(-4, os.SEEK_END)
        isize = struct.unpack("<I", raw.read(4))[0]
    if expected < 2**32 and isize < expected:
        raise DataError(f"{path} is truncated: its header declares shape {tuple(dims)} of {dtype.name} "
                        f"({expected} bytes with the header), but the gzip stream holds {isize} bytes")


_IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def _find_idx(directory, stem, subdirs):
    tried = []
    for sub in ("", "raw", *subdirs):
        for ext in ("", ".gz"):
            p = os.path.join(directory, sub, stem + ext)
            tried.append(p)
            if os.path.isfile(p):
                return p
    raise DataError(f"{stem}[.gz] not found; looked for: {', '.join(tried)}")


def load_idx_dir(directory, name="mnist"):
    """MNIST-layout IDX files of one directory (or its torchvision raw/ subfolder) -> Data."""
    subdirs = {"mnist": ("MNIST/raw",), "fashion": ("FashionMNIST/raw", "Fashion-MNIST/raw")}.get(name, ())
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no such directory (expected the folder holding the {name} IDX files)")
    arrays = {}
    for key, stem in _IDX_NAMES.items():
        path = _find_idx(directory, stem, subdirs)
        a = read_idx(path)
        want = 3 if key.endswith("_x") else 1
        if a.ndim != want:
            raise DataError(f"{path}: expected {'images (N, H, W)' if want == 3 else 'labels (N,)'}, "
                            f"got an array of shape {a.shape}")
        arrays[key] = (a, path)
    for split in ("train", "test"):
        (x, px), (y, py) = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{px} holds {x.shape[0]} images but {py} holds {y.shape[0]} labels")
    tx, vx = (_to_unit(arrays[k][0], arrays[k][1])[:, None] for k in ("train_x", "test_x"))
    ty, vy = (torch.from_numpy(arrays[k][0].astype(np.int64)) for k in ("train_y", "test_y"))
    n_classes = int(max(ty.max(), vy.max())) + 1
    return Data(name, tx, vx, ty, vy, tuple(tx.shape[1:]), n_classes)


# -------------------------------------------------------------------------------------------------------------------
# other sources


def _to_unit(a, where, scale=None):
    """A numpy array -> float32 tensor in [0, 1]; integer data is divided by `scale` or its type's maximum."""
    a = np.asarray(a)
    if a.dtype == np.bool_:
        return torch.from_numpy(a.astype(np.float32))
    if np.issubdtype(a.dtype, np.integer):
        top = scale or (255 if a.max(initial=0) > 1 else 1)
        return torch.from_numpy(a.astype(np.float32) / top)
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{where}: expected numeric data, got dtype {a.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if not torch.isfinite(t).all():
        raise DataError(f"{where}: the data holds NaN or inf values")
    return t


def _split(x, y, name, shape, n_classes):
    n = x.shape[0]
    if n < 2:
        raise DataError(f"{name}: needs at least 2 samples to split into train and test; got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = max(1, int(round(n * TEST_FRACTION)))
    test, train = perm[:n_test], perm[n_test:]
    return Data(name, x[train], x[test], None if y is None else y[train], None if y is None else y[test],
                shape, n_classes)


def load_digits():
    """scikit-learn's bundled 8x8 digits, (N, 1, 8, 8) in [0, 1], with the fixed seeded split."""
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    y = torch.from_numpy(d.target.astype(np.int64))
    return _split(x, y, "digits", (1, 8, 8), 10)


def _images(a):
    """(N, H, W) -> (N, 1, H, W); (N, D) and (N, C, H, W) as they are."""
    return a[:, None] if a.dim() == 3 else a


def load_array_file(path):
    """.npy (one array of samples, split with the fixed seed) or .npz (x_train/y_train/x_test/y_test, x/y, or a
    single array)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (expected a .npy or .npz array file)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, OSError, zipfile errors ... on a bad file
        raise DataError(f"{path}: not a readable .npy/.npz file ({type(e).__name__}: {e})") from e
    name = os.path.basename(path)
    if isinstance(loaded, np.ndarray):
        arrays = {"x": loaded}
    else:
        try:
            arrays = {k: loaded[k] for k in loaded.files}
        except Exception as e:
            raise DataError(f"{path}: an array in the archive is unreadable ({type(e).__name__}: {e})") from e
        finally:
            loaded.close()
    if not arrays:
        raise DataError(f"{path}: the archive holds no arrays")

    def labels(key, n):
        if key not in arrays:
            return None
        y = arrays[key]
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: {key} must be integer labels of shape ({n},); got {y.dtype} {y.shape}")
        return torch.from_numpy(y.astype(np.int64))

    def samples(key):
        a = arrays[key]
        if a.ndim < 2:
            raise DataError(f"{path}: {key} must hold samples (N, ...) with at least 2 dims; got shape {a.shape}")
        return _images(_to_unit(a, f"{path}[{key}]"))

    if "x_train" in arrays:
        if "x_test" not in arrays:
            raise DataError(f"{path}: has x_train but no x_test (keys: {sorted(arrays)})")
        tx, vx = samples("x_train"), samples("x_test")
        if tx.shape[1:] != vx.shape[1:]:
            raise DataError(f"{path}: x_train samples {tuple(tx.shape[1:])} and x_test samples "
                            f"{tuple(vx.shape[1:])} differ in shape")
        ty, vy = labels("y_train", tx.shape[0]), labels("y_test", vx.shape[0])
        n_classes = int(max(ty.max(), vy.max())) + 1 if ty is not None and vy is not None else 0
        return Data(name, tx, vx, ty if n_classes else None, vy if n_classes else None, tuple(tx.shape[1:]),
                    n_classes)
    key = "x" if "x" in arrays else next(iter(arrays)) if len(arrays) == 1 else None
    if key is None:
        raise DataError(f"{path}: expected arrays x_train/x_test, x (and y), or a single array; got keys "
                        f"{sorted(arrays)}")
    x = samples(key)
    y = labels("y", x.shape[0])
    n_classes = int(y.max()) + 1 if y is not None else 0
    return _split(x, y, name, tuple(x.shape[1:]), n_classes)


def from_dataset(dataset, name="dataset"):
    """Any map-style torch Dataset whose items are x or (x, y) -> Data (stacked once, then split)."""
    xs, ys = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if isinstance(item, (tuple, list)):
            x, y = item[0], (item[1] if len(item) > 1 else None)
        else:
            x, y = item, None
        xs.append(torch.as_tensor(x))
        if y is not None:
            ys.append(int(y))
    if not xs:
        raise DataError(f"{name}: the dataset is empty")
    x = torch.stack(xs)
    x = _images(x.float() / (255.0 if not x.is_floating_point() and x.max() > 1 else 1.0))
    y = torch.tensor(ys, dtype=torch.int64) if len(ys) == len(xs) else None
    return _split(x, y, name, tuple(x.shape[1:]), int(y.max()) + 1 if y is not None else 0)


# -------------------------------------------------------------------------------------------------------------------
# the entry point


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
    else:
        kind, _, arg = spec.partition(":")
        if not arg:
            raise ValueError(f"data spec {spec!r}: expected digits, mnist:DIR, fashion:DIR, npz:FILE or npy:FILE")
        if kind in ("mnist", "fashion"):
            data = load_idx_dir(os.path.expanduser(arg), kind)
        elif kind in ("npz", "npy"):
            data = load_array_file(os.path.expanduser(arg))
        else:
            raise ValueError(f"data spec {spec!r}: unknown kind {kind!r} (expected digits, mnist, fashion, npz, npy)")
    if binarize:
        g = torch.Generator().manual_seed(BINARIZE_SEED)
        data.test_x = torch.bernoulli(data.test_x.clamp(0, 1), generator=g)
        if binarize == "static":
            data.train_x = torch.bernoulli(data.train_x.clamp(0, 1), generator=g)
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
