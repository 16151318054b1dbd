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

The package, one concern a module: dataset.py (Data, DataError, the reading rule of pixels and labels, the split),
files.py (a file's header checked before its data is read), idx.py (IDX files, the named data sets), arrays.py
(.npy/.npz files, torch Datasets) and load.py (load_data, the specs, keep_labels); every name is importable from
fastvae.data as it was when they were one file.
"""
from .arrays import from_dataset, load_array_file
from .dataset import SPLIT_SEED, TEST_FRACTION, Data, DataError
from .files import _memory_bytes, _open  # noqa: F401 (fastvae.data._memory_bytes, as before)
from .idx import DATA_DIR_ENV, NAMED, SYSTEM_DATA_DIR, load_idx_dir, load_named, read_idx
from .load import BINARIZE_SEED, keep_labels, load_data, load_digits, resolve_spec, spec_name

__all__ = ["Data", "DataError", "load_data", "load_digits", "load_named", "load_idx_dir", "load_array_file",
           "from_dataset", "read_idx", "keep_labels", "resolve_spec", "spec_name", "SPLIT_SEED", "TEST_FRACTION",
           "BINARIZE_SEED", "SYSTEM_DATA_DIR", "DATA_DIR_ENV", "NAMED"]
