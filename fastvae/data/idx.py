"""IDX files (MNIST, Fashion-MNIST): one file read with its header checked first (read_idx), the four files of a
folder (load_idx_dir), and a data set known by name in the system's folder (load_named)."""
import math
import os
import struct

import numpy as np

from . import files
from .dataset import Data, DataError, _labels, _pixels
from .files import _DEFLATE_MAX_RATIO, _READ_ERRORS, _check_declared, _read_exact

# Data sets known by name: where the system's packages install them, and the package that does (None: no package).
SYSTEM_DATA_DIR = "/usr/share/datasets"
DATA_DIR_ENV = "FASTVAE_DATA_DIR"          # a folder searched instead of SYSTEM_DATA_DIR
NAMED = {"fashion": ("Fashion-MNIST", "fashion-mnist", "dataset-fashion-mnist"), "mnist": ("MNIST", "mnist", None)}

_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path):
    """Reads one IDX file (`.gz` or not) into a numpy array.

    The header (two zero bytes, a type code, the number of dims, then each dim as a big-endian int32) is checked
    before the data is read: a header that declares more data than the file can hold (its size, or for `.gz`
    1032 times its compressed size, deflate's largest expansion) or than fits in memory is refused without
    reading or allocating it; then exactly the declared bytes are read, and one more byte is a refusal."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (expected an IDX file such as train-images-idx3-ubyte[.gz])")
    gz = path.endswith(".gz")
    with files._open(path) as f:
        head = bytes(_read_exact(f, 4, path, "the IDX magic number"))
        if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
            raise DataError(f"{path} is not an IDX file: its magic number is {head.hex()}, expected 0000 followed by "
                            f"a type code in {{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}} and a non-zero "
                            f"number of dims")
        dtype, ndim = _IDX_DTYPES[head[2]], head[3]
        dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, f"the {ndim} dims of the IDX header"))
        n_bytes = math.prod(dims) * dtype.itemsize
        size, header_bytes = os.path.getsize(path), 4 + 4 * ndim
        if gz:
            _check_declared(path, dims, dtype, n_bytes, _DEFLATE_MAX_RATIO * size,
                            f"a gzip file of {size} bytes decompresses to at most {_DEFLATE_MAX_RATIO * size}")
        else:
            _check_declared(path, dims, dtype, n_bytes, size - header_bytes,
                            f"the file holds {size - header_bytes} bytes after the header")
            if size - header_bytes > n_bytes:
                raise DataError(f"{path} has trailing data: its header declares shape {tuple(dims)} of {dtype.name} "
                                f"({n_bytes} bytes), but the file holds {size - header_bytes} bytes after the header")
        raw = _read_exact(f, n_bytes, path, f"data (shape {tuple(dims)}, {dtype.name})")
        try:
            extra = f.read(1)
        except _READ_ERRORS as e:
            raise DataError(f"{path}: the gzip stream is corrupt after the data ({e})") from e
        if extra:
            raise DataError(f"{path} has trailing data after the {n_bytes} bytes its header declares "
                            f"(shape {tuple(dims)})")
    return raw.view(dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


_IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
_IDX_SUBDIRS = {"mnist": ("MNIST/raw",), "fashion": ("FashionMNIST/raw", "Fashion-MNIST/raw")}   # torchvision's


def _find_idx(directory, stem, subdirs):
    tried = []
    for sub in ("", "raw", *subdirs):
        for ext in ("", ".gz"):
            p = os.path.join(directory, sub, stem + ext)
            tried.append(p)
            if os.path.isfile(p):
                return p
    raise DataError(f"{stem}[.gz] not found; looked for: {', '.join(tried)}")


def load_named(name):
    """A data set of NAMED ("fashion", "mnist") from its system folder: $FASTVAE_DATA_DIR when set, else
    /usr/share/datasets; in it the package's folder (fashion-mnist, mnist), then the torchvision layout. Missing:
    a one-line DataError saying where it looked and what to install (or how to point at the files)."""
    title, folder, package = NAMED[name]
    root = os.environ.get(DATA_DIR_ENV) or SYSTEM_DATA_DIR
    for directory in (os.path.join(root, folder), root):
        try:
            _find_idx(directory, _IDX_NAMES["train_x"], _IDX_SUBDIRS[name])
        except DataError:
            continue
        return load_idx_dir(directory, name)
    where = f"{os.path.join(root, folder)} ({DATA_DIR_ENV}={root})" if os.environ.get(DATA_DIR_ENV) else \
        os.path.join(root, folder)
    fix = f"install it with: apt-get install {package}" if package else "no system package provides it (download " \
        "the four IDX files into a folder)"
    raise DataError(f"--data {name}: {title} not found in {where}; {fix}, or give its folder as --data {name}:DIR "
                    f"or {DATA_DIR_ENV}=DIR")


def load_idx_dir(directory, name="mnist"):
    """MNIST-layout IDX files of one directory (or its torchvision raw/ subfolder) -> Data."""
    subdirs = _IDX_SUBDIRS.get(name, ())
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
    tx, vx = (t[:, None] for t in _pixels([arrays["train_x"], arrays["test_x"]]))
    (ty, vy), n_classes = _labels([arrays["train_y"], arrays["test_y"]])
    return Data(name, tx, vx, ty, vy, tuple(tx.shape[1:]), n_classes)
