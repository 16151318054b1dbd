"""Reading a data file safely: a header's declared size is checked against what the file can hold and this machine's
memory before anything is allocated (_check_declared), and the data is read in chunks that stop where the file ends
(_read_exact). The readers of IDX and .npy/.npz files go through these."""
import gzip
import math
import os
import zlib

import numpy as np

from .dataset import DataError

_READ_CHUNK = 1 << 24
# Deflate (gzip, zip) expands a stream by at most 1032:1: a header that declares more than that times the
# compressed size cannot be telling the truth, and is refused before anything is decompressed.
_DEFLATE_MAX_RATIO = 1032
_READ_ERRORS = (OSError, EOFError, zlib.error)   # gzip.BadGzipFile is an OSError


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
