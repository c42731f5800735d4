"""Atomic, verified checkpoint files that never run code.

File layout (format 2)::

    MAGIC (16 bytes) | header length (8 bytes, little-endian) | header (UTF-8 JSON) | payload

The JSON header is ``{"format", "payload_bytes", "sha256"}``; the payload is the
``torch.save`` bytes of the object. :func:`load_checkpoint` checks the magic, the
header, the file's length and the payload's SHA-256 before unpickling anything,
and then unpickles the payload with ``torch.load(weights_only=True)`` only: plain
types (dict, list, tuple, str, bytes, int, float, bool, None) and tensors. So a
planted or tampered file can at worst fail to load; it cannot execute code. (The
SHA-256 detects damage, not tampering: anyone can recompute it.)

:func:`save_checkpoint` refuses objects that ``weights_only`` could not load back
(``TypeError`` naming where in the object), writes a temporary file in the same
directory under an ``flock``, fsyncs it, moves the existing file to
``path + ".prev"`` if its header and digest verify (nothing is unpickled on save)
and renames the new one into place (``os.replace``; atomic on POSIX). A crash at
any moment leaves either the old or the new file whole. A temporary file left by a
killed save (``path``'s name + ``.<random>.tmp``, its lock released by the kernel),
and any ``.<name>.<random>.tmp`` file of a killed write in the same folder, is
removed by the next save or load of that checkpoint.
"""
from __future__ import annotations

import collections
import glob
import hashlib
import io
import json
import os
import struct
import tempfile
import warnings

import torch

from ..checks import memory_bytes
from . import run_folder

FORMAT = "ies_fast.checkpoint/2"
MAGIC = b"IES_FAST_CKPT\x00\x02\n"
assert len(MAGIC) == 16
_LEN = struct.Struct("<Q")
#: a header longer than this is not ours (it holds three short fields)
MAX_HEADER_BYTES = 4096
PREV_SUFFIX = ".prev"
TMP_SUFFIX = ".tmp"
#: what a checkpoint may hold: what torch.load(weights_only=True) gives back
PLAIN_TYPES = (str, bytes, int, float, bool, type(None), torch.device, torch.dtype)
_PLAIN = frozenset(PLAIN_TYPES)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not ours."""


# ---- what may go into a checkpoint ------------------------------------------------------
def check_plain(obj, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first value in ``obj`` that is not plain data or a
    tensor (those are all ``torch.load(weights_only=True)`` reads back)."""
    # a container whose items are all plain is passed in one C-level set test, and a
    # value's place stays (parent's place, key) until an error names it: a checkpoint
    # is saved every epoch, and its history and RNG states are thousands of scalars
    stack = [(obj, where)]
    while stack:
        value, at = stack.pop()
        # exact types: a subclass (numpy.float64 is a float) pickles as itself and would not load
        if type(value) in _PLAIN or isinstance(value, torch.Tensor) or type(value) is torch.Size:
            continue
        if type(value) in (dict, collections.OrderedDict):
            if not _PLAIN.issuperset(map(type, value)):
                key = next(k for k in value if type(k) not in _PLAIN)
                raise TypeError(f"{_place(at)} has a key of type {type(key).__name__}: checkpoints hold plain "
                                f"data and tensors only")
            if not _PLAIN.issuperset(map(type, value.values())):
                stack.extend((v, (at, k)) for k, v in value.items())
            continue
        if type(value) in (list, tuple):
            if not _PLAIN.issuperset(map(type, value)):
                stack.extend((v, (at, i)) for i, v in enumerate(value))
            continue
        raise TypeError(f"{_place(at)} is a {type(value).__module__}.{type(value).__qualname__}: checkpoints hold "
                        f"plain data (dict, list, tuple, str, int, float, bool, None) and tensors only")


def _place(at) -> str:
    """``check_plain``'s nested ``(parent, key)`` place as ``where[key][index]...``."""
    keys = []
    while isinstance(at, tuple):
        at, key = at
        keys.append(f"[{key!r}]")
    return at + "".join(reversed(keys))


# ---- temporary files ------------------------------------------------------------------
def _tmp_pattern(path: str) -> str:
    return glob.escape(path) + ".*" + TMP_SUFFIX


def remove_stale_temp_files(path) -> list:
    """Delete the temporary files of ``path``'s checkpoint, and the ``.<name>.<random>.tmp``
    files of other writes in its folder, that no live writer holds (left by a killed
    process). Returns the removed paths."""
    removed = [tmp for tmp in glob.glob(_tmp_pattern(os.fspath(path))) if run_folder.remove_stale_temp(tmp)]
    return removed + run_folder.remove_stale_temps(os.path.dirname(os.path.abspath(os.fspath(path))))


def _open_locked_tmp(path: str, directory: str) -> tuple:
    """A new temporary file next to ``path``, created and locked (a concurrent cleaner
    may unlink it between the two: then it is made again)."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=directory)
        run_folder.try_lock(fd)
        if os.fstat(fd).st_nlink > 0:
            return fd, tmp
        os.close(fd)


# ---- the file format --------------------------------------------------------------------
def _encode(payload: bytes) -> bytes:
    header = json.dumps({"format": FORMAT, "payload_bytes": len(payload),
                         "sha256": hashlib.sha256(payload).hexdigest()}).encode()
    return MAGIC + _LEN.pack(len(header)) + header


def _read_verified(path: str) -> memoryview:
    """The payload of ``path`` after checking magic, header, length and digest; nothing
    is unpickled here. Only a regular file is opened (never a link, FIFO or device),
    and the header's length is checked against the file's size before the payload
    is read."""
    try:
        fd, st = run_folder.open_regular(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path!r} does not exist") from None
    except run_folder.RunFolderError as exc:
        raise CheckpointError(f"checkpoint {exc}") from None
    try:
        return _read_fd(fd, st.st_size, path)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path!r} cannot be read: {exc}") from exc
    finally:
        os.close(fd)


def _read_fd(fd: int, file_size: int, path: str) -> memoryview:
    start = len(MAGIC) + _LEN.size
    head = run_folder.read_exactly(fd, start, path)
    if not head.startswith(MAGIC):
        old = " (an older ies_fast checkpoint or a plain torch.save file; it is not unpickled)" if head[:2] == b"PK" else ""
        raise CheckpointError(f"checkpoint {path!r} is not an ies_fast checkpoint ({FORMAT}){old}")
    if len(head) < start:
        raise CheckpointError(f"checkpoint {path!r} is truncated (no header)")
    (header_len,) = _LEN.unpack_from(head, len(MAGIC))
    if header_len > MAX_HEADER_BYTES or file_size < start + header_len:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupted (bad header length {header_len})")
    raw_header = run_folder.read_exactly(fd, header_len, path)
    try:
        header = json.loads(raw_header.decode())
        size, digest = int(header["payload_bytes"]), str(header["sha256"])
        if header["format"] != FORMAT:
            raise ValueError(f"format {header['format']!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path!r} has a corrupted header: {exc}") from None
    have = file_size - start - header_len
    if have != size:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupted: payload has {have} bytes, "
                              f"header says {size}")
    if size > memory_bytes():
        raise CheckpointError(f"checkpoint {path!r} claims a {size}-byte payload, more than this machine's memory: "
                              f"refused unread")
    payload = run_folder.read_exactly(fd, size, path)
    if len(payload) != size or os.read(fd, 1):
        raise CheckpointError(f"checkpoint {path!r} changed while it was read")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path!r} is corrupted: SHA-256 of its payload does not match")
    return memoryview(payload)


def _unpickle(payload, path: str, map_location):
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # a payload asking for anything but plain data and tensors
        raise CheckpointError(f"checkpoint {path!r} holds objects other than plain data and tensors; refused "
                              f"(weights_only): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


# ---- the API ----------------------------------------------------------------------------
def save_checkpoint(obj, path) -> None:
    """Write ``obj`` (plain data and tensors, see :func:`check_plain`) to ``path``
    atomically, keeping the previous good file as ``path + ".prev"``."""
    path = os.fspath(path)
    check_plain(obj)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    run_folder.check_slot(path)  # a planted link or FIFO is refused, never written through
    run_folder.check_slot(path + PREV_SUFFIX)
    remove_stale_temp_files(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getbuffer()
    fd, tmp = _open_locked_tmp(path, directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_encode(payload))
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
            if os.path.lexists(path):
                # keep the last good file only: a damaged current file is not promoted
                try:
                    _read_verified(path)
                    os.replace(path, path + PREV_SUFFIX)
                except CheckpointError:
                    pass
            os.replace(tmp, path)  # still under the temp file's lock
        run_folder.fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path, *, fallback: bool = False, map_location="cpu"):
    """Load and verify a file written by :func:`save_checkpoint` (never executes code
    from it: header and digest first, then ``torch.load(weights_only=True)``).

    Raises :class:`CheckpointError` naming the file if it is missing, truncated,
    corrupted, of another format, or holds anything but plain data and tensors.
    With ``fallback=True`` a bad ``path`` falls back to ``path + ".prev"`` (with a
    ``RuntimeWarning``); the error is raised only if both are bad. Stale temporary
    files of ``path`` are removed first.
    """
    path = os.fspath(path)
    remove_stale_temp_files(path)
    try:
        return _unpickle(_read_verified(path), path, map_location)
    except CheckpointError as exc:
        if not fallback:
            raise
        prev = path + PREV_SUFFIX
        try:
            state = _unpickle(_read_verified(prev), prev, map_location)
        except CheckpointError as exc_prev:
            raise CheckpointError(f"{exc}; the previous checkpoint is bad too: {exc_prev}") from exc
        warnings.warn(f"{exc}; loaded the previous good checkpoint {prev!r}", RuntimeWarning, stacklevel=2)
        return state
