"""Data loading: digits, IDX files (written here, including corrupt ones), arrays, Datasets, binarization."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch

from fastvae.data import DataError, load_data, read_idx


def _idx_bytes(a, code=0x08, dims=None):
    dims = a.shape if dims is None else dims
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + a.astype(a.dtype.newbyteorder(">")).tobytes()


def _write(path, payload):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)
    return str(path)


def _mnist_dir(root, n_train=12, n_test=5, gz=True, h=6, w=6):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
        y = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        _write(os.path.join(root, f"{split}-images-idx3-ubyte{ext}"), _idx_bytes(x))
        _write(os.path.join(root, f"{split}-labels-idx1-ubyte{ext}"), _idx_bytes(y))
        arrays[split] = (x, y)
    return arrays


def test_digits_default_split_is_fixed_and_in_unit_range():
    a, b = load_data("digits"), load_data("digits")
    assert a.train_x.shape == (1438, 1, 8, 8) and a.test_x.shape == (359, 1, 8, 8)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    assert 0 <= a.train_x.min() and a.train_x.max() <= 1
    assert a.n_classes == 10 and a.image_shape == (1, 8, 8)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x0B, np.int16), (0x0D, np.float32)])
def test_idx_round_trip(tmp_path, gz, code, dtype):
    a = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype) if dtype != np.uint8 else \
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = _write(tmp_path / ("a.idx" + (".gz" if gz else "")), _idx_bytes(a, code))
    b = read_idx(p)
    assert b.dtype == dtype and np.array_equal(a, b)


@pytest.mark.parametrize("layout", ["", "raw", "MNIST/raw"])
def test_mnist_directory_layouts(tmp_path, layout):
    arrays = _mnist_dir(os.path.join(tmp_path, layout))
    d = load_data(f"mnist:{tmp_path}")
    assert d.train_x.shape == (12, 1, 6, 6) and d.test_x.shape == (5, 1, 6, 6)
    assert torch.allclose(d.train_x[:, 0] * 255, torch.from_numpy(arrays["train"][0]).float())
    assert torch.equal(d.test_y, torch.from_numpy(arrays["t10k"][1]).long())


def test_fashion_torchvision_layout_uncompressed(tmp_path):
    _mnist_dir(os.path.join(tmp_path, "FashionMNIST", "raw"), gz=False)
    d = load_data(f"fashion:{tmp_path}")
    assert d.name == "fashion" and d.train_x.shape[0] == 12


def test_missing_files_name_what_was_looked_for(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_data(f"mnist:{tmp_path}")
    with pytest.raises(DataError, match="no such directory"):
        load_data(f"mnist:{tmp_path}/nope")
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "absent-idx3-ubyte")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file_is_refused_with_its_name(tmp_path, gz):
    a = np.zeros((4, 5, 5), np.uint8)
    p = _write(tmp_path / ("t-idx3-ubyte" + (".gz" if gz else "")), _idx_bytes(a)[:-7])
    with pytest.raises(DataError, match="truncated") as e:
        read_idx(p)
    assert os.path.basename(p) in str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_header_declaring_huge_data_is_refused_before_allocating(tmp_path, gz):
    # 60000 x 60000 x 60000 bytes declared (~2e14): reading it would exhaust memory; the check must come first
    a = np.zeros((2, 2, 2), np.uint8)
    p = _write(tmp_path / ("h-idx3-ubyte" + (".gz" if gz else "")), _idx_bytes(a, dims=(60000, 60000, 60000)))
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_bad_magic_and_trailing_data_and_not_gzip(tmp_path):
    p = _write(tmp_path / "m-idx3-ubyte", b"\x01\x02\x08\x03" + bytes(20))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(p)
    p = _write(tmp_path / "x-idx1-ubyte", _idx_bytes(np.zeros(3, np.uint8)) + b"junk")
    with pytest.raises(DataError, match="trailing data"):
        read_idx(p)
    p = _write(tmp_path / "g-idx1-ubyte.gz.tmp", b"this is not gzip data at all, sorry")
    os.replace(p, tmp_path / "g-idx1-ubyte.gz")
    with pytest.raises(DataError, match="g-idx1-ubyte.gz"):
        read_idx(tmp_path / "g-idx1-ubyte.gz")
    p = _write(tmp_path / "e-idx1-ubyte", b"\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_images_and_labels_disagreeing_are_refused(tmp_path):
    _mnist_dir(tmp_path)
    _write(os.path.join(tmp_path, "train-labels-idx1-ubyte.gz"), _idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="12 images but .* 3 labels"):
        load_data(f"mnist:{tmp_path}")


def test_npz_and_npy(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (10, 4, 4), dtype=np.uint8),
             y_train=np.arange(10) % 3, x_test=rng.integers(0, 256, (4, 4, 4), dtype=np.uint8),
             y_test=np.arange(4) % 3)
    d = load_data(f"npz:{tmp_path}/d.npz")
    assert d.train_x.shape == (10, 1, 4, 4) and d.n_classes == 3 and d.train_x.max() <= 1
    np.save(tmp_path / "a.npy", rng.random((20, 16)).astype(np.float32))
    d = load_data(f"npy:{tmp_path}/a.npy")
    assert d.train_x.shape == (16, 16) and d.test_x.shape == (4, 16) and d.image_shape == (1, 4, 4)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DataError, match="bad.npz"):
        load_data(f"npz:{tmp_path}/bad.npz")
    with pytest.raises(DataError, match="no such file"):
        load_data(f"npz:{tmp_path}/absent.npz")
    np.savez(tmp_path / "odd.npz", a=np.zeros((3, 2)), b=np.zeros(3))
    with pytest.raises(DataError, match="keys"):
        load_data(f"npz:{tmp_path}/odd.npz")


def test_any_dataset_and_binarization():
    x = torch.rand(30, 1, 4, 4)
    y = torch.arange(30) % 5
    d = load_data(torch.utils.data.TensorDataset(x, y))
    assert d.train_x.shape == (24, 1, 4, 4) and d.n_classes == 5
    s1 = load_data("digits", binarize="static")
    s2 = load_data("digits", binarize="static")
    assert set(s1.train_x.unique().tolist()) <= {0.0, 1.0} and torch.equal(s1.train_x, s2.train_x)
    dyn = load_data("digits", binarize="dynamic")
    assert dyn.binarize == "dynamic" and set(dyn.test_x.unique().tolist()) <= {0.0, 1.0}
    assert len(dyn.train_x.unique()) > 2          # the trainer draws the bits per batch
    with pytest.raises(ValueError, match="binarize"):
        load_data("digits", binarize="sometimes")
    with pytest.raises(ValueError, match="unknown kind"):
        load_data("cifar:/tmp")
