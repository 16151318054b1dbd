"""Arrays as data: .npy and .npz files (their .npy headers checked before numpy reads the data), and any map-style
torch Dataset (stacked once)."""
import math
import os
import zipfile

import numpy as np
import torch

from .dataset import Data, DataError, _images, _labels, _pixels, _split
from .files import _DEFLATE_MAX_RATIO, _check_declared

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
