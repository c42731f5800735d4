"""Training progress in epochs, and where a per-step LR schedule should stand.

IES shrinks epochs, so a schedule sized in optimizer steps of the full data set
would end early if it counted steps. Every wrapper (``IESDataset.schedule``,
``IESCallback``, ``IESTrainer``) and the app's ``EpochSchedule`` instead read the
schedule at the run's *progress*: ``epoch + done / total`` epochs, ``done`` of the
epoch's ``total`` kept steps (or samples) being done. These are the pure
functions they share (exact fractions, no state).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional

__all__ = ["batch_count", "planned_steps", "position", "progress"]

_HALF = Fraction(1, 2)


def batch_count(samples: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches of ``batch_size`` over ``samples`` (the last one partial unless ``drop_last``)."""
    return samples // batch_size if drop_last else -(-samples // batch_size)


def progress(epoch: int, done: int, total: int) -> Fraction:
    """Epochs done: ``epoch`` closed epochs plus ``done / total`` of the open one
    (``done`` capped at ``total``; an epoch of ``total = 0`` adds nothing)."""
    if total <= 0:
        return Fraction(epoch)
    return epoch + Fraction(min(max(done, 0), total), total)


def planned_steps(per_epoch: int, max_epochs: int = -1, max_steps: int = -1) -> Optional[int]:
    """Optimizer steps the run was planned for without IES: the smaller of
    ``max_epochs * per_epoch`` and ``max_steps`` (``-1``: no such limit); ``None``
    when neither limits the run."""
    ends = [n for n in (max_epochs * per_epoch if max_epochs >= 0 else -1, max_steps) if n >= 0]
    return min(ends) if ends else None


def position(at: Fraction, per_epoch: int, *, max_epochs: int = -1, max_steps: int = -1,
             global_step: int = 0) -> int:
    """The schedule's step at progress ``at`` (epochs, :func:`progress`), rounded half
    up, for a schedule of ``per_epoch`` steps per full epoch.

    Without limits it is ``at * per_epoch``. With a plan (:func:`planned_steps`) it is
    ``planned * fraction``, the fraction being how far the run is to whichever of
    ``max_epochs`` (progress) and ``max_steps`` (``global_step`` optimizer steps) ends
    it first, at most 1. Without IES (every epoch full) it equals the step count."""
    planned = planned_steps(per_epoch, max_epochs, max_steps)
    if planned is None:
        return math.floor(Fraction(at) * per_epoch + _HALF)
    fraction = Fraction(0)
    if max_epochs > 0:
        fraction = Fraction(at) / max_epochs
    if max_steps > 0:
        fraction = max(fraction, Fraction(global_step, max_steps))
    return math.floor(min(fraction, Fraction(1)) * planned + _HALF)
