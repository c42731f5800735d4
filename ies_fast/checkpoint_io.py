"""Atomic, verified checkpoint files.

``save_checkpoint(obj, path)`` writes ``{"format", "sha256", "payload"}`` (payload =
the ``torch.save`` bytes of ``obj``) to a temporary file in the same directory,
fsyncs it, moves any existing good file to ``path + ".prev"`` and renames the new
one into place (``os.replace``; atomic on POSIX). A crash at any moment leaves
either the old or the new file whole. ``load_checkpoint(path)`` checks the
digest, so a truncated or corrupted file raises :class:`CheckpointError` naming
the file; ``fallback=True`` then loads ``path + ".prev"`` with a warning.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings

import torch

FORMAT = "ies_fast.checkpoint/1"
PREV_SUFFIX = ".prev"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not ours."""


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(obj, path) -> None:
    """Write ``obj`` (anything ``torch.save`` accepts) to ``path`` atomically,
    keeping the previous file as ``path + ".prev"``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    record = {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(record, f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):
            # keep the last good file only: a corrupted current file is not promoted
            try:
                _read(path)
                os.replace(path, path + PREV_SUFFIX)
            except CheckpointError:
                pass
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path: str):
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        record = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, garbage bytes, ...
        raise CheckpointError(f"checkpoint {path!r} is unreadable (truncated or corrupted): {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("payload"), bytes):
        raise CheckpointError(f"checkpoint {path!r} is not an ies_fast checkpoint ({FORMAT})")
    payload = record["payload"]
    if hashlib.sha256(payload).hexdigest() != record.get("sha256"):
        raise CheckpointError(f"checkpoint {path!r} is corrupted: SHA-256 of its payload does not match")
    return payload


def load_checkpoint(path, *, fallback: bool = False, map_location="cpu"):
    """Load and verify a file written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` naming the file if it is missing, truncated or
    corrupted. With ``fallback=True`` a bad ``path`` falls back to ``path + ".prev"``
    (with a ``RuntimeWarning``); the error is raised only if both are bad.
    """
    path = os.fspath(path)
    try:
        payload = _read(path)
    except CheckpointError as exc:
        if not fallback:
            raise
        prev = path + PREV_SUFFIX
        try:
            payload = _read(prev)
        except CheckpointError as exc_prev:
            raise CheckpointError(f"{exc}; the previous checkpoint is bad too: {exc_prev}") from exc
        warnings.warn(f"{exc}; loaded the previous good checkpoint {prev!r}", RuntimeWarning, stacklevel=2)
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
