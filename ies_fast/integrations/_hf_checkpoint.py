"""The selector file of an ``IESTrainer`` checkpoint folder, and which folder a
resume may use.

``ies_selector.pt`` is written with :func:`ies_fast.io.checkpoint.save_checkpoint`
(temporary file, fsync, ``os.replace``: a symlink at the path is refused, never
written through) and read back only after its header, length and SHA-256 verify,
with ``torch.load(weights_only=True)``. It is written before the Trainer's
``trainer_state.json``, and the Trainer writes that file last, after the weights,
optimizer, scheduler and RNG files (older checkpoints are rotated away only after
it). So a folder whose ``trainer_state.json`` parses and whose selector file
verifies, both naming the folder's step, was written whole, whenever the run was
killed; :func:`newest_complete_checkpoint` resumes from the newest such folder.
"""
from __future__ import annotations

import json
import os
import re
import stat
from typing import Optional

from .. import checks as check
from ..io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

STATE_FILE = "ies_selector.pt"
TRAINER_STATE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME
STATE_VERSION = 2
_FOLDER = re.compile(r"^checkpoint-(\d+)$")  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
            "adapter_model.safetensors", "adapter_model.bin")


class IncompleteCheckpoint(ValueError):
    """A checkpoint folder that a resume cannot use (the message names the file)."""


def write_state(folder: str, state: dict) -> None:
    """Write ``state`` (plain data and CPU tensors) to ``folder/ies_selector.pt`` atomically."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    save_checkpoint(state, os.path.join(folder, STATE_FILE))


def discard_markers(folder: str) -> None:
    """Before a checkpoint is (re)written into ``folder`` (one left by a killed run):
    remove its completion markers first, so a second kill leaves it incomplete."""
    for name in (TRAINER_STATE, STATE_FILE):
        path = os.path.join(folder, name)
        if os.path.lexists(path):
            os.unlink(path)


def _regular_file(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise IncompleteCheckpoint(f"{path} is missing") from None
    if stat.S_ISLNK(mode):
        raise IncompleteCheckpoint(f"{path} is a symbolic link: refused (checkpoint files must be regular files)")
    if not stat.S_ISREG(mode):
        raise IncompleteCheckpoint(f"{path} is not a regular file")


def read_state(folder: str) -> dict:
    """The verified contents of ``folder/ies_selector.pt`` (not yet checked against a
    selector: :meth:`IESTrainer.load_selector` does that). Raises ``FileNotFoundError``
    if it is missing, :class:`IncompleteCheckpoint` (a ``ValueError``) naming the
    file if it is a symlink, truncated, corrupted, of another version or shape."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path} is missing: the checkpoint was not written by IESTrainer")
    _regular_file(path)
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        raise IncompleteCheckpoint(str(exc)) from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise IncompleteCheckpoint(f"{path} is not an IESTrainer selector state (version {STATE_VERSION})")
    try:
        for key in ("epochs_closed", "steps_in_epoch", "global_step"):
            check.integer(state, key, where=path)
    except ValueError as exc:
        raise IncompleteCheckpoint(str(exc)) from None
    if not isinstance(state.get("selector"), dict):
        raise IncompleteCheckpoint(f"{path}: 'selector' must be a selector state dict")
    return state


def trainer_step(folder: str) -> int:
    """``global_step`` of ``folder/trainer_state.json``; :class:`IncompleteCheckpoint`
    if the file is missing, a symlink, truncated or not a Trainer state."""
    path = os.path.join(folder, TRAINER_STATE)
    _regular_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            step = json.load(f)["global_step"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IncompleteCheckpoint(f"{path} is truncated or not a Trainer state: {exc}") from None
    try:
        return check.integer({"global_step": step}, "global_step", where=path)
    except ValueError as exc:
        raise IncompleteCheckpoint(str(exc)) from None


def check_complete(folder: str) -> dict:
    """Check that ``folder`` is a whole ``IESTrainer`` checkpoint; returns its selector
    file's contents. Raises :class:`IncompleteCheckpoint` (or ``FileNotFoundError``)
    naming the file that is missing, truncated or inconsistent."""
    step = trainer_step(folder)
    state = read_state(folder)
    if state["global_step"] != step:
        raise IncompleteCheckpoint(f"{os.path.join(folder, STATE_FILE)} was written at step {state['global_step']}, "
                                   f"{TRAINER_STATE} at step {step}")
    match = _FOLDER.match(os.path.basename(os.path.normpath(folder)))
    if match and int(match.group(1)) != step:
        raise IncompleteCheckpoint(f"{os.path.join(folder, TRAINER_STATE)} is at step {step}, not the folder's")
    if not any(os.path.isfile(os.path.join(folder, name)) for name in _WEIGHTS):
        raise IncompleteCheckpoint(f"{folder} holds no model weights ({', '.join(_WEIGHTS[:3])}, ...)")
    return state


def newest_complete_checkpoint(output_dir: str) -> Optional[str]:
    """The ``checkpoint-N`` folder of ``output_dir`` with the largest N that
    :func:`check_complete` accepts (``None`` if there is none)."""
    try:
        names = os.listdir(output_dir)
    except FileNotFoundError:
        return None
    steps = sorted(((int(m.group(1)), name) for name in names if (m := _FOLDER.match(name))), reverse=True)
    for _, name in steps:
        folder = os.path.join(output_dir, name)
        if os.path.islink(folder) or not os.path.isdir(folder):
            continue
        try:
            check_complete(folder)
        except (IncompleteCheckpoint, FileNotFoundError):
            continue
        return folder
    return None
