"""The ``.npy`` cache of parsed pixel CSVs (``~/.cache/ies_fast`` or ``$IES_FAST_CACHE``),
treated like a run folder: untrusted (docs/security.md, "The data cache").

An entry is ``<csv stem>-<key>-images.npy``, ``...-labels.npy`` and the sidecar
``...-entry.json`` (written last) holding each array file's size and SHA-256. The
key hashes the CSV's path, size and mtime. Every file is written through
:func:`ies_fast.io.run_folder.write_bytes` (a new ``O_EXCL | O_NOFOLLOW`` temporary
file, then ``os.replace``: a planted link is never written through) and read as a
regular file only (no link, FIFO or device), its ``.npy`` header checked against
the expected dtype and shape and the file's size before the data is read, its
digest checked on every load. Nothing is unpickled (``.npy`` headers are parsed
by numpy's format reader, arrays taken with ``np.frombuffer``). An entry that fails
any check is removed and rebuilt from the CSV, with one line on stderr saying why.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys

import numpy as np

from ...io import run_folder
from ...io.run_folder import RunFolderError
from .idx import data_limit, read_pixel_csv

#: the longest ``.npy`` header read (numpy writes 128 bytes for these arrays)
MAX_NPY_HEADER = 4096


class CacheEntryError(ValueError):
    """A cache file is missing, not a regular file, or not what the entry says it is."""


def entry_paths(csv_path: str, cache_dir: str, side: int) -> dict:
    """``{"images", "labels", "entry"}`` paths of ``csv_path``'s cache entry."""
    st = os.stat(csv_path)
    key = hashlib.sha256(f"{os.path.abspath(csv_path)}|{st.st_size}|{st.st_mtime_ns}|{side}".encode()).hexdigest()[:16]
    stem = os.path.join(cache_dir, f"{os.path.splitext(os.path.basename(csv_path))[0]}-{key}")
    return {"images": stem + "-images.npy", "labels": stem + "-labels.npy", "entry": stem + "-entry.json"}


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def read_npy(path: str, dtype: np.dtype, trailing: tuple, size: int, sha256: str) -> np.ndarray:
    """The array in the regular file ``path``: its header must give ``dtype`` and a
    shape ending in ``trailing`` whose data fills exactly the file's ``size`` bytes
    (checked before the data is read), its bytes must hash to ``sha256``."""
    try:
        fd, st = run_folder.open_regular(path)
    except (OSError, RunFolderError) as exc:
        raise CacheEntryError(str(exc) if isinstance(exc, RunFolderError) else f"{path}: {exc.strerror or exc}") \
            from None
    try:
        if st.st_size != size or size > data_limit():
            raise CacheEntryError(f"{path} holds {st.st_size} bytes, its entry says {size}")
        head = run_folder.read_exactly(fd, min(size, MAX_NPY_HEADER), path)
        f = io.BytesIO(head)
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"version {version}")
            shape, fortran, found = read_header(f)
        except (ValueError, SyntaxError, EOFError, TypeError) as exc:
            raise CacheEntryError(f"{path} is not a .npy file of ours ({exc})") from None
        offset = f.tell()
        count = 1
        for d in shape:
            count *= d
        if (found != dtype or fortran or len(shape) != 1 + len(trailing) or tuple(shape[1:]) != trailing
                or offset + count * dtype.itemsize != size):
            raise CacheEntryError(f"{path} holds {found} {list(shape)}, not the {dtype} [N, "
                                  f"{', '.join(map(str, trailing))}] array its entry says")
        data = head + run_folder.read_exactly(fd, size - len(head), path)
    finally:
        os.close(fd)
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise CacheEntryError(f"{path}: its SHA-256 does not match its entry")
    return np.frombuffer(data, dtype, count, offset).reshape(shape).copy()


def load_entry(paths: dict, side: int) -> tuple:
    """``(images, labels)`` of a complete, verified entry; :class:`CacheEntryError` otherwise."""
    try:
        entry = run_folder.read_json(paths["entry"], max_bytes=4096)
    except FileNotFoundError:
        raise CacheEntryError("no entry") from None
    except (OSError, RunFolderError) as exc:
        raise CacheEntryError(str(exc)) from None
    try:
        files = {name: (int(entry[name]["bytes"]), str(entry[name]["sha256"])) for name in ("images", "labels")}
    except (TypeError, KeyError, ValueError):
        raise CacheEntryError(f"{paths['entry']} is not a cache entry of ours") from None
    images = read_npy(paths["images"], np.dtype(np.uint8), (side, side), *files["images"])
    labels = read_npy(paths["labels"], np.dtype(np.int64), (), *files["labels"])
    if len(labels) != len(images):
        raise CacheEntryError(f"{paths['labels']} holds {len(labels)} labels for {len(images)} images")
    return images, labels


def remove_entry(paths: dict) -> None:
    """Unlink the entry's names (a link is removed, never followed; a folder stays)."""
    for name in ("entry", "images", "labels"):  # the sidecar first: a half-removed entry is incomplete
        try:
            os.unlink(paths[name])
        except OSError:
            pass


def write_entry(paths: dict, images: np.ndarray, labels: np.ndarray) -> None:
    """The two ``.npy`` files, then the sidecar naming their sizes and digests (the
    temporary files of killed writes in the cache removed first)."""
    run_folder.remove_stale_temps(os.path.dirname(paths["entry"]))
    entry = {}
    for name, array in (("images", images), ("labels", labels.astype(np.int64))):
        data = npy_bytes(array)
        run_folder.write_bytes(paths[name], data)
        entry[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    run_folder.write_json(paths["entry"], entry)


def cached_pixel_csv(path: str, cache_dir: str, *, side: int = 28):
    """:func:`~ies_fast.app.train.idx.read_pixel_csv` parsed once: ``(images, labels)``
    from ``path``'s verified cache entry in ``cache_dir``, else parsed from the CSV
    and cached (an entry that fails a check is rebuilt, said in one line; an
    unwritable cache only costs the parse next time)."""
    paths = entry_paths(path, cache_dir, side)
    bad = None
    try:
        return load_entry(paths, side)
    except CacheEntryError as exc:
        if str(exc) != "no entry" or any(os.path.lexists(paths[n]) for n in ("images", "labels")):
            bad = str(exc)
    images, labels = read_pixel_csv(path, side=side)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        remove_entry(paths)
        write_entry(paths, images, labels)
        done = f"rebuilt from {path}"
    except (OSError, RunFolderError) as exc:
        done = f"read from {path}; the entry cannot be rewritten ({exc})"
    if bad is not None:
        print(f"ies-fast: data cache entry for {os.path.basename(path)} is bad ({bad}); {done}", file=sys.stderr)
    return images, labels
