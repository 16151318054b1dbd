"""Data loading: digits, IDX files (written here, including corrupt ones), arrays, Datasets, binarization."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch

from fastvae.data import DATA_DIR_ENV, SYSTEM_DATA_DIR, DataError, load_data, read_idx


def _idx_bytes(a, code=0x08, dims=None):
    dims = a.shape if dims is None else dims
    return (bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
            + a.astype(a.dtype.newbyteorder(">")).tobytes())


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


# ---- data sets by name: the system's Fashion-MNIST (Debian's dataset-fashion-mnist) -----------------------------

FASHION_DIR = os.path.join(SYSTEM_DATA_DIR, "fashion-mnist")


# CI installs dataset-fashion-mnist (and sets CI): there this test runs, and fails if the package is missing.
@pytest.mark.skipif(not os.path.isdir(FASHION_DIR) and not os.environ.get("CI"),
                    reason="apt-get install dataset-fashion-mnist")
def test_fashion_by_name_reads_the_systems_files(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    d = load_data("fashion")
    assert d.name == "fashion" and d.shape == (1, 28, 28) and d.n_classes == 10
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.train_x.dtype == torch.float32 and d.train_x.min() == 0 and d.train_x.max() == 1
    assert 0 <= d.test_x.min() and d.test_x.max() <= 1
    for y, n in ((d.train_y, 60000), (d.test_y, 10000)):
        assert y.shape == (n,) and torch.equal(y.unique(), torch.arange(10))
        assert torch.equal(torch.bincount(y), torch.full((10,), n // 10))    # Fashion-MNIST is balanced


def test_named_data_missing_says_what_to_install(tmp_path, monkeypatch, capsys):
    from fastvae.cli import main
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))          # an empty folder: the system's files are not seen
    with pytest.raises(DataError) as e:
        load_data("fashion")
    message = str(e.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "fashion-mnist") in message and "fashion:DIR" in message
    with pytest.raises(DataError, match="MNIST not found .* no system package provides it .* mnist:DIR"):
        load_data("mnist")
    assert main(["train", "--data", "fashion", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastvae train: ") and "apt-get install dataset-fashion-mnist" in err


@pytest.mark.parametrize("name,layout", [("fashion", "fashion-mnist"), ("fashion", "FashionMNIST/raw"),
                                         ("fashion", ""), ("mnist", "mnist"), ("mnist", "MNIST/raw")])
def test_named_data_in_the_folder_fastvae_data_dir_names(tmp_path, monkeypatch, name, layout):
    arrays = _mnist_dir(os.path.join(tmp_path, layout))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    d = load_data(name)
    assert d.name == name and d.train_x.shape == (12, 1, 6, 6) and d.test_x.shape == (5, 1, 6, 6)
    assert torch.equal(d.test_y, torch.from_numpy(arrays["t10k"][1]).long())


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


def test_binarizations_static_one_fixed_draw_dynamic_a_fixed_test_draw():
    """static: train and test drawn once, Bernoulli(pixel) from the fixed BINARIZE_SEED (not torch's global seed);
    dynamic: the same fixed draw of the test set (what eval reads), the train set left grey for the trainer."""
    grey = load_data("digits")
    torch.manual_seed(1)
    static = load_data("digits", binarize="static")
    torch.manual_seed(2)
    static2, dynamic = load_data("digits", binarize="static"), load_data("digits", binarize="dynamic")
    assert torch.equal(static.train_x, static2.train_x) and torch.equal(static.test_x, static2.test_x)
    assert torch.equal(dynamic.test_x, static.test_x) and torch.equal(dynamic.train_x, grey.train_x)
    assert static.binarize == "static" and dynamic.binarize == "dynamic"
    # a Bernoulli draw, not a threshold: grey pixels below 1/2 are sometimes 1, and the mean is kept
    low = (grey.train_x > 0) & (grey.train_x < 0.5)
    assert 0.1 < static.train_x[low].mean() < 0.4
    assert abs(static.train_x.mean() - grey.train_x.mean()) < 0.01


# ---- files cannot exhaust memory ----------------------------------------------------------------------------------


def _gzip_zeros(path, header, n_bytes):
    """A gzip file: header then n_bytes of zeros, written in chunks (32 MiB of zeros compress to ~32 KiB)."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        chunk = bytes(1 << 20)
        for _ in range(n_bytes >> 20):
            f.write(chunk)
    return str(path)


def _peak_bytes(fn):
    """The peak of traced allocations while fn runs (numpy's buffers are traced too)."""
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_gzip_bomb_is_refused_without_decompressing_it(tmp_path):
    # the header declares 2^40 bytes; the stream holds 32 MiB: 1032 (deflate's largest expansion) times the
    # file's size is far less than declared, so nothing is decompressed (the old reader read all 32 MiB first)
    p = _gzip_zeros(tmp_path / "bomb-idx3-ubyte.gz", bytes([0, 0, 8, 3]) + struct.pack(">3I", 1024, 1024, 1 << 20),
                    32 << 20)

    def read():
        with pytest.raises(DataError, match="truncated or corrupt.*decompresses to at most") as e:
            read_idx(p)
        assert "bomb-idx3-ubyte.gz" in str(e.value)
    assert _peak_bytes(read) < 4 << 20


def test_gzip_stream_longer_than_declared_is_refused_after_the_declared_bytes(tmp_path):
    p = _gzip_zeros(tmp_path / "long-idx3-ubyte.gz", bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 2, 2), 32 << 20)

    def read():
        with pytest.raises(DataError, match="trailing data"):
            read_idx(p)
    assert _peak_bytes(read) < 4 << 20


def test_header_declaring_more_than_memory_is_refused(tmp_path, monkeypatch):
    import fastvae.data.files as fd
    monkeypatch.setattr(fd, "_memory_bytes", lambda: 1 << 20)     # a 1 MiB machine: 100 x 64 x 64 does not fit
    x = np.zeros((100, 64, 64), np.uint8)
    for name in ("m-idx3-ubyte", "m-idx3-ubyte.gz"):
        with pytest.raises(DataError, match="more than this machine's"):
            read_idx(_write(tmp_path / name, _idx_bytes(x)))
    np.save(tmp_path / "m.npy", x)
    np.savez_compressed(tmp_path / "m.npz", x=x)
    for spec in (f"npy:{tmp_path}/m.npy", f"npz:{tmp_path}/m.npz"):
        with pytest.raises(DataError, match="more than this machine's"):
            load_data(spec)


def test_npz_entry_declaring_more_than_it_holds_is_refused(tmp_path):
    import io
    import zipfile
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (1000, 1000)})
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as z:
        z.writestr("x.npy", head.getvalue() + bytes(16))
    with pytest.raises(DataError, match=r"lie.npz\[x\] is truncated or corrupt"):
        load_data(f"npz:{tmp_path}/lie.npz")


# ---- pixels are read by their type, into [0, 1] -------------------------------------------------------------------


@pytest.mark.parametrize("code,dtype,top", [(0x0B, np.int16, 1000), (0x0C, np.int32, 70000), (0x09, np.int8, 100)])
def test_idx_integer_types_without_a_pixel_range_are_refused(tmp_path, code, dtype, top):
    # int16 pixels up to 1000 used to come out as 1000 / 255 = 3.9, int32 ones as 274
    _mnist_dir(tmp_path)
    x = np.linspace(0, top, 12 * 36).astype(dtype).reshape(12, 6, 6)
    _write(os.path.join(tmp_path, "train-images-idx3-ubyte.gz"), _idx_bytes(x, code))
    with pytest.raises(DataError, match=f"train-images-idx3-ubyte.gz: integer pixels of type {np.dtype(dtype).name}"):
        load_data(f"mnist:{tmp_path}")


def test_unsigned_pixels_are_divided_by_their_types_maximum(tmp_path):
    x = np.array([[0, 1000], [65535, 7]], np.uint16)
    np.save(tmp_path / "u16.npy", x)
    d = load_data(f"npy:{tmp_path}/u16.npy")
    got = torch.cat([d.train_x, d.test_x]).flatten().sort().values
    assert torch.equal(got, torch.from_numpy(np.sort(x.flatten()).astype(np.float32) / 65535))   # exact: one rounding


def test_binary_integers_are_kept_and_decided_over_the_whole_data_set(tmp_path):
    # x_train happens to hold only 0 and 1 while x_test holds 0..255: both are 8-bit pixels (/255); before, the
    # train split was read as binary and the test split as 8-bit
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "mixed.npz", x_train=rng.integers(0, 2, (6, 4), dtype=np.uint8),
             x_test=rng.integers(0, 256, (3, 4), dtype=np.uint8))
    d = load_data(f"npz:{tmp_path}/mixed.npz")
    assert d.train_x.max() == np.float32(1 / 255) and d.test_x.max() <= 1
    np.save(tmp_path / "bits.npy", rng.integers(0, 2, (8, 4)))                      # int64 0/1: binary pixels
    d = load_data(f"npy:{tmp_path}/bits.npy")
    assert set(torch.cat([d.train_x, d.test_x]).unique().tolist()) == {0.0, 1.0}
    np.save(tmp_path / "bools.npy", rng.integers(0, 2, (8, 4)).astype(bool))
    assert load_data(f"npy:{tmp_path}/bools.npy").train_x.dtype == torch.float32


@pytest.mark.parametrize("values,match", [
    (np.arange(16).reshape(4, 4) * 20, "integer pixels of type int64"),      # np.array of 0..300: no type range
    (np.linspace(-0.5, 2.0, 16).reshape(4, 4), r"float pixels must lie in \[0, 1\]; found values in \[-0.5, 2\]"),
    (np.array([[0.5, np.nan]] * 4), "NaN or inf"),
])
def test_arrays_outside_the_pixel_rules_are_refused(tmp_path, values, match):
    np.save(tmp_path / "a.npy", values)
    with pytest.raises(DataError, match=match):
        load_data(f"npy:{tmp_path}/a.npy")
    with pytest.raises(DataError, match=match):
        load_data(torch.utils.data.TensorDataset(torch.from_numpy(values)))


def test_dataset_pixels_follow_the_same_rules():
    x = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    d = load_data(torch.utils.data.TensorDataset(x))
    assert torch.equal(torch.cat([d.train_x, d.test_x]).sort(0).values,
                       (x.float() / 255).sort(0).values)
    with pytest.raises(DataError, match="int16"):
        load_data(torch.utils.data.TensorDataset((x.to(torch.int16) * 4)))


# ---- empty data, labels ------------------------------------------------------------------------------------------


def test_idx_with_no_images_is_refused(tmp_path):
    _mnist_dir(tmp_path)
    _write(os.path.join(tmp_path, "train-images-idx3-ubyte.gz"), _idx_bytes(np.zeros((0, 6, 6), np.uint8)))
    _write(os.path.join(tmp_path, "train-labels-idx1-ubyte.gz"), _idx_bytes(np.zeros(0, np.uint8)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz holds no data"):
        load_data(f"mnist:{tmp_path}")


def test_idx_labels_that_are_not_class_ids_are_refused(tmp_path):
    _mnist_dir(tmp_path)
    y = np.array([0, 1, -3] + [0] * 9, np.int8)
    _write(os.path.join(tmp_path, "train-labels-idx1-ubyte.gz"), _idx_bytes(y, 0x09))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: labels must be class ids >= 0; found -3"):
        load_data(f"mnist:{tmp_path}")
    _write(os.path.join(tmp_path, "train-labels-idx1-ubyte.gz"), _idx_bytes(np.zeros(12, np.float32), 0x0D))
    with pytest.raises(DataError, match="labels must be integer class ids; got dtype float32"):
        load_data(f"mnist:{tmp_path}")


@pytest.mark.parametrize("arrays,match", [
    (dict(x_train=np.zeros((0, 4)), x_test=np.zeros((3, 4))), r"\[x_train\] holds no data"),
    (dict(x=np.zeros((5, 0))), r"\[x\] holds no data"),
    (dict(x=np.zeros((6, 4)), y=np.array([0, 1, 2, -1, 0, 1])), "class ids >= 0; found -1"),
    (dict(x=np.zeros((6, 4)), y=np.array([0, 1, 2.5, 1, 0, 1])), "integer class ids; got dtype float64"),
    (dict(x=np.zeros((6, 4)), y=np.array([0, 1, 10**9, 1, 0, 1])), "1000000001 classes for 6 samples"),
    (dict(x=np.zeros((6, 4)), y=np.zeros(5, np.int64)), r"\[y\]: expected one label per sample, shape \(6,\)"),
    (dict(x_train=np.zeros((6, 4)), y_train=np.zeros(6, np.int64), x_test=np.zeros((2, 4))), "label both splits"),
])
def test_npz_contents_that_cannot_be_a_data_set_are_refused(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=match) as e:
        load_data(f"npz:{tmp_path}/d.npz")
    assert "d.npz" in str(e.value) and "\n" not in str(e.value)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_dataset_labels_must_be_scalar_class_ids():
    x = torch.rand(6, 4)
    with pytest.raises(DataError, match="integer class ids; got dtype float32"):
        load_data(torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 2.5, 1, 0, 1])))   # was read as 2
    with pytest.raises(DataError, match="one scalar label"):
        load_data(_ListDataset([(x[0], 1), (x[1],), (x[2], 0)] * 2))


def test_a_spec_that_is_neither_string_nor_dataset_names_data():
    for spec in (5, None, b"digits"):
        with pytest.raises(TypeError, match="data must be a spec string or a torch Dataset; got"):
            load_data(spec)
