"""The selector's ring buffer: record one loss per sample per epoch, and close an
epoch with the Δ^N decision. ``reference.py`` is the plain-torch semantics,
``triton.py`` the Triton kernels, and the native ops (``csrc/``, ``torch.ops.ies_fast``)
are called here; each function takes the backend :func:`ies_fast.backend.resolve_backend` picked."""
from __future__ import annotations

import functools

import torch

from .reference import (close_epoch_torch, current_slot, epoch_report_torch, fold_epoch_report_torch,  # noqa: F401
                        fold_removed_torch, fold_report, record_torch)  # (re-exported)


def record(backend: str, hist, count, loss, index) -> None:
    if backend == "triton":
        from .triton import record_triton

        return record_triton(hist, count, loss, index)
    if backend == "native":
        return torch.ops.ies_fast.record(hist, count, loss.float(), index)
    return record_torch(hist, count, loss, index)


@functools.lru_cache(maxsize=None)
def _has_op(name: str) -> bool:
    """Whether the loaded ``ies_fast._C`` has op ``name`` (an older build may not)."""
    try:
        return hasattr(torch.ops.ies_fast, name)
    except Exception:  # no ies_fast namespace at all
        return False


_HAS_RECORD_NLL = None  # tests force it on or off


def has_record_nll() -> bool:
    """Whether the loaded ``ies_fast._C`` has ``record_nll`` (an older build does not)."""
    global _HAS_RECORD_NLL
    if _HAS_RECORD_NLL is None:
        _HAS_RECORD_NLL = _has_op("record_nll")
    return _HAS_RECORD_NLL


def record_nll(hist, count, logp, target, index, ignore_index: int, validate: bool = False) -> None:
    """Native CPU: ``record(hist, count, -logp[b, target[b]], index)`` for the rows
    whose target is not ``ignore_index``, read straight from the log-probabilities
    ``[B, C]`` (same values, bit for bit, as recording ``F.nll_loss(logp, target,
    reduction="none")`` with the ignored rows' index set to -1). ``validate``: raise
    the selector's error for an index outside ``[0, S)`` (else such rows are skipped,
    as ``record`` does) and F's for a target outside ``[0, C)``, writing nothing."""
    torch.ops.ies_fast.record_nll(hist, count, logp, target, index, ignore_index, validate)


def epoch_report(backend: str, hist, count, order: int, window: int, with_score: bool = True) -> tuple:
    """``(loss, score)`` of the epoch not yet closed (:func:`.reference.epoch_report_torch`;
    ``with_score=False``: the score is not computed, an empty tensor): one pass over
    the ring in the native CPU op, plain torch elsewhere."""
    if backend == "native" and hist.device.type == "cpu" and order <= 3 and _has_op("epoch_report"):
        return torch.ops.ies_fast.epoch_report(hist, count, order, window, with_score)
    return epoch_report_torch(hist, count, order, window, with_score)


def fold_epoch_report(backend: str, hist, count, order: int, window: int, loss_sum, loss_count, last_loss,
                      last_score) -> None:
    """:func:`epoch_report` folded into per-sample counters in place
    (:func:`.reference.fold_epoch_report_torch`): the native CPU op reads the ring once
    and writes the counters in the same pass; plain torch elsewhere, bit for bit the same."""
    if backend == "native" and hist.device.type == "cpu" and order <= 3 and _has_op("fold_epoch_report"):
        return torch.ops.ies_fast.fold_epoch_report(hist, count, order, window, loss_sum, loss_count, last_loss,
                                                    last_score)
    return fold_epoch_report_torch(hist, count, order, window, loss_sum, loss_count, last_loss, last_score)


def fold_removed(backend: str, removed, prev_removed, epochs_removed, came_back, first_mastered, epoch: int,
                 count_came_back: bool) -> None:
    """:func:`.reference.fold_removed_torch` (per-sample removal counters, in place): one
    pass in the native CPU op, plain torch elsewhere, bit for bit the same."""
    if backend == "native" and removed.device.type == "cpu" and _has_op("fold_removed"):
        return torch.ops.ies_fast.fold_removed(removed.contiguous(), prev_removed, epochs_removed, came_back, first_mastered,
                                               epoch, count_came_back)
    return fold_removed_torch(removed, prev_removed, epochs_removed, came_back, first_mastered, epoch,
                              count_came_back)


def close_epoch(backend: str, hist, count, mastered, order: int, window: int, k: int, threshold: float) -> torch.Tensor:
    """``threshold`` is :func:`ies_fast.selectors.rule.decision_threshold` (an fp32 value)."""
    if backend == "triton":
        from .triton import close_epoch_triton

        return close_epoch_triton(hist, count, mastered, order, window, k, threshold)
    if backend == "native":
        return torch.ops.ies_fast.close_epoch(hist, count, mastered, order, window, k, threshold)
    return close_epoch_torch(hist, count, mastered, order, window, k, threshold)
