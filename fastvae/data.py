"""Data sets for the VAE family, held as whole tensors (on the training device when they fit).

`load_data(spec)` understands:
  "digits"         scikit-learn's bundled 8x8 digits (1797 images, no download), a fixed seeded 80/20 split;
  "fashion"        the system's Fashion-MNIST (Debian: `apt-get install dataset-fashion-mnist` puts the IDX files in
                   /usr/share/datasets/fashion-mnist), 60000 + 10000 28x28 images; FASTVAE_DATA_DIR=DIR looks in
                   DIR/fashion-mnist (or DIR's torchvision layout) instead;
  "mnist"          the same for MNIST, which no Debian package provides: DIR/mnist under FASTVAE_DATA_DIR;
  "mnist:DIR"      MNIST IDX files in DIR (train-images-idx3-ubyte[.gz] ...; DIR, DIR/raw, DIR/MNIST/raw);
  "fashion:DIR"    the same for Fashion-MNIST (DIR/FashionMNIST/raw also searched);
  "npz:FILE"       arrays x_train/y_train/x_test/y_test (or x/y, or one unnamed array), "npy:FILE" one array;
  a torch.utils.data.Dataset (items x or (x, y)), split 80/20 with the same fixed seed.
Pixel values end up in [0, 1], read by their type, the same way for every source and every split: uint8 is divided
by 255 and uint16 by 65535; integers (of any type) and bools holding only 0 and 1 are binary pixels, kept as they
are; floats must already lie in [0, 1]. Other integer data (int16 up to 1000, say) has no range to read it by and is
refused, as are NaN/inf, empty data sets, and labels (y) that are not class ids 0..K-1 (integers, K at most the
number of samples). Files are checked against their headers before their data is read (a header that declares
more than the file can hold, or more than this machine's memory, is refused without reading or allocating it).
"""
import gzip
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

SPLIT_SEED = 0          # the train/test split never depends on the training seed
TEST_FRACTION = 0.2
BINARIZE_SEED = 1234    # static binarization draws from its own stream, so every run sees the same bits
_READ_CHUNK = 1 << 24
# Deflate (gzip, zip) expands a stream by at most 1032:1: a header that declares more than that times the
# compressed size cannot be telling the truth, and is refused before anything is decompressed.
_DEFLATE_MAX_RATIO = 1032
_READ_ERRORS = (OSError, EOFError, zlib.error)   # gzip.BadGzipFile is an OSError

# Data sets known by name: where the system's packages install them, and the package that does (None: no package).
SYSTEM_DATA_DIR = "/usr/share/datasets"
DATA_DIR_ENV = "FASTVAE_DATA_DIR"          # a folder searched instead of SYSTEM_DATA_DIR
NAMED = {"fashion": ("Fashion-MNIST", "fashion-mnist", "dataset-fashion-mnist"), "mnist": ("MNIST", "mnist", None)}

_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


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


# -------------------------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)


def _open(path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _memory_bytes():
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_declared(path, shape, dtype, n_bytes, holds, how):
    """Refuses a header whose data cannot be there (more than the `holds` bytes the file can hold, `how` says why)
    or could not be loaded (the data and its float32 copy need more than this machine's memory)."""
    what = f"shape {tuple(shape)} of {dtype.name} ({n_bytes} bytes)"
    if n_bytes > holds:
        raise DataError(f"{path} is truncated or corrupt: its header declares {what}, but {how}")
    memory, need = _memory_bytes(), n_bytes + 4 * math.prod(shape)
    if memory is not None and need > memory:
        raise DataError(f"{path}: its header declares {what}; loading it needs {need / 2**30:.1f} GiB, more than "
                        f"this machine's {memory / 2**30:.1f} GiB of memory")


def _read_exact(f, n, path, what):
    """Reads exactly n bytes into one buffer, chunk by chunk: memory grows only with what the file really holds
    (the buffer's pages are touched as they are filled), and a short file is refused where it ends."""
    buf = np.empty(n, np.uint8)
    view, got = memoryview(buf), 0
    while got < n:
        try:
            k = f.readinto(view[got:got + _READ_CHUNK])
        except _READ_ERRORS as e:
            raise DataError(f"{path}: could not read {what} ({e}); the file is corrupt or truncated") from e
        if not k:
            raise DataError(f"{path} is truncated: its header declares {n} bytes of {what}, but the file holds "
                            f"only {got}")
        got += k
    return buf


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
    with _open(path) as f:
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


# -------------------------------------------------------------------------------------------------------------------
# reading pixels and labels (every source goes through these two)


def _pixels(parts):
    """[(numpy array of samples, where it came from)] of one data set -> float32 tensors in [0, 1], every part
    read by the same rule (the module doc's), so that a train split cannot be scaled unlike its test split."""
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


# -------------------------------------------------------------------------------------------------------------------
# other sources


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
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:
        raise ImportError(f"the digits data set comes with scikit-learn, which could not be imported ({e}); "
                          "pip install 'torch-fastvae[train]' installs it") from e
    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    y = torch.from_numpy(d.target.astype(np.int64))
    return _split(x, y, "digits", (1, 8, 8), 10)


def _images(a):
    """(N, H, W) -> (N, 1, H, W); (N, D) and (N, C, H, W) as they are."""
    return a[:, None] if a.dim() == 3 else a


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _check_npy_header(f, holds, where):
    """The header of the .npy stream f against the `holds` bytes its file (or archive entry) can hold."""
    version = np.lib.format.read_magic(f)
    if version not in _NPY_HEADER_READERS:
        raise DataError(f"{where}: .npy format version {version} is not read here (expected 1.0 or 2.0)")
    shape, _, dtype = _NPY_HEADER_READERS[version](f)
    if not dtype.hasobject:
        header = f.tell()
        _check_declared(where, shape, dtype, math.prod(shape) * dtype.itemsize, holds - header,
                        f"it holds at most {holds - header} bytes after its header")


def _check_array_file(path):
    """Every .npy header of path (one array, or each entry of an .npz) is checked before numpy reads the data."""
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                _check_npy_header(f, os.path.getsize(path), path)
            return
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                holds = info.file_size
                if info.compress_type != zipfile.ZIP_STORED:
                    holds = min(holds, _DEFLATE_MAX_RATIO * info.compress_size)
                with z.open(info) as f:
                    _check_npy_header(f, holds, f"{path}[{info.filename.removesuffix('.npy')}]")
    except DataError:
        raise
    except Exception as e:  # numpy and zipfile raise ValueError, OSError, BadZipFile ... on a bad file
        raise DataError(f"{path}: not a readable .npy/.npz file ({type(e).__name__}: {e})") from e


def load_array_file(path):
    """.npy (one array of samples, split with the fixed seed) or .npz (x_train/y_train/x_test/y_test, x/y, or a
    single array)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (expected a .npy or .npz array file)")
    _check_array_file(path)
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

    if "x_train" in arrays:
        if "x_test" not in arrays:
            raise DataError(f"{path}: has x_train but no x_test (keys: {sorted(arrays)})")
        x_keys, y_keys = ("x_train", "x_test"), ("y_train", "y_test")
    elif "x" in arrays or len(arrays) == 1:
        x_keys, y_keys = ("x" if "x" in arrays else next(iter(arrays)),), ("y",)
    else:
        raise DataError(f"{path}: expected arrays x_train/x_test, x (and y), or a single array; got keys "
                        f"{sorted(arrays)}")
    for k in x_keys:
        if arrays[k].ndim < 2:
            raise DataError(f"{path}: {k} must hold samples (N, ...) with at least 2 dims; got shape "
                            f"{arrays[k].shape}")
    xs = [_images(t) for t in _pixels([(arrays[k], f"{path}[{k}]") for k in x_keys])]
    if xs[0].shape[1:] != xs[-1].shape[1:]:
        raise DataError(f"{path}: x_train samples {tuple(xs[0].shape[1:])} and x_test samples "
                        f"{tuple(xs[1].shape[1:])} differ in shape")
    present = [k for k in y_keys if k in arrays]
    ys, n_classes = [None] * len(xs), 0
    if present:
        if len(present) != len(y_keys):
            raise DataError(f"{path}: has {present[0]} but not {[k for k in y_keys if k not in arrays][0]}: "
                            f"label both splits or neither (keys: {sorted(arrays)})")
        for k, x in zip(y_keys, xs):
            if arrays[k].shape != (x.shape[0],):
                raise DataError(f"{path}[{k}]: expected one label per sample, shape ({x.shape[0]},); got shape "
                                f"{arrays[k].shape}")
        ys, n_classes = _labels([(arrays[k], f"{path}[{k}]") for k in y_keys])
    if len(xs) == 2:
        return Data(name, xs[0], xs[1], ys[0], ys[1], tuple(xs[0].shape[1:]), n_classes)
    return _split(xs[0], ys[0], name, tuple(xs[0].shape[1:]), n_classes)


def _numpy(v):
    """A dataset item (tensor, array, number, PIL image ...) as a numpy array."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    return np.asarray(v)


def from_dataset(dataset, name="dataset"):
    """Any map-style torch Dataset whose items are x or (x, y) -> Data (stacked once, then split)."""
    if not hasattr(dataset, "__len__"):
        raise TypeError(f"data must be a map-style Dataset (with len() and indexing); got {type(dataset).__name__}")
    xs, ys = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        x, y = (item[0], item[1] if len(item) > 1 else None) if isinstance(item, (tuple, list)) else (item, None)
        xs.append(_numpy(x))
        ys.append(None if y is None else _numpy(y))
    if not xs:
        raise DataError(f"{name}: the dataset is empty")
    if len({a.shape for a in xs}) > 1:
        raise DataError(f"{name}: its items differ in shape ({xs[0].shape} and "
                        f"{next(a.shape for a in xs if a.shape != xs[0].shape)}); expected samples of one shape")
    (x,) = _pixels([(np.stack(xs), name)])
    x = _images(x)
    if x.dim() < 2:
        raise DataError(f"{name}: its items must be samples with at least 1 dim; got items of shape {xs[0].shape}")
    y, n_classes = None, 0
    if any(v is not None for v in ys):
        if any(v is None or v.shape != () for v in ys):
            raise DataError(f"{name}: every item must be (x, y) with one scalar label y, or x alone; found "
                            f"{sum(v is None for v in ys)} item(s) without a label and labels of shapes "
                            f"{sorted({v.shape for v in ys if v is not None})}")
        (y,), n_classes = _labels([(np.stack(ys), name)])
    return _split(x, y, name, tuple(x.shape[1:]), n_classes)


# -------------------------------------------------------------------------------------------------------------------
# the entry point


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
