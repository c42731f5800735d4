"""Checks shared by ``train``, ``compare`` and ``sweep`` on what they are given: the
``--out`` folder (before any work) and the times a run folder's summary claims."""
from __future__ import annotations

import math
import os

#: a run's wall or CPU seconds are below this (115 days); more is not a time a run wrote
MAX_TIME_S = 1e7


class OutFolderError(ValueError):
    """``--out`` names a file, lies under a file, or cannot be written (one line)."""


def check_out_folder(out: str, option: str = "--out") -> None:
    """Raise :class:`OutFolderError` when ``out`` is a file, lies under a file, or the
    folder it would be made in is not writable; creates nothing (``None``: nothing to check)."""
    if out is None:
        return
    if os.path.lexists(out) and not os.path.isdir(out):
        raise OutFolderError(f"{option} {out} is a file; it must name a folder")
    parent = os.path.abspath(out)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutFolderError(f"{option} {out} lies under {parent}, which is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutFolderError(f"{option} {out} is not writable: {parent} is read-only for this user")


def valid_time(value) -> bool:
    """A number of seconds a run can have taken: finite and ``0 <= t < MAX_TIME_S``."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 <= value < MAX_TIME_S)
