"""The selector's ring buffer: record one loss per sample per epoch, and close an
epoch with the Δ^N decision. ``reference.py`` is the plain-torch semantics,
``triton.py`` the Triton kernels, and the native ops (``csrc/``, ``torch.ops.ies_fast``)
are called here; each function takes the backend :func:`ies_fast.backend.resolve_backend` picked."""
from __future__ import annotations

import torch

from .reference import close_epoch_torch, record_torch


def record(backend: str, hist, count, loss, index) -> None:
    if backend == "triton":
        from .triton import record_triton

        return record_triton(hist, count, loss, index)
    if backend == "native":
        return torch.ops.ies_fast.record(hist, count, loss.float(), index)
    return record_torch(hist, count, loss, index)


_HAS_RECORD_NLL = None


def has_record_nll() -> bool:
    """Whether the loaded ``ies_fast._C`` has ``record_nll`` (an older build does not)."""
    global _HAS_RECORD_NLL
    if _HAS_RECORD_NLL is None:
        try:
            _HAS_RECORD_NLL = hasattr(torch.ops.ies_fast, "record_nll")
        except Exception:  # no ies_fast namespace at all
            _HAS_RECORD_NLL = False
    return _HAS_RECORD_NLL


def record_nll(hist, count, logp, target, index, ignore_index: int, validate: bool = False) -> None:
    """Native CPU: ``record(hist, count, -logp[b, target[b]], index)`` for the rows
    whose target is not ``ignore_index``, read straight from the log-probabilities
    ``[B, C]`` (same values, bit for bit, as recording ``F.nll_loss(logp, target,
    reduction="none")`` with the ignored rows' index set to -1). ``validate``: raise
    the selector's error for an index outside ``[0, S)`` (else such rows are skipped,
    as ``record`` does) and F's for a target outside ``[0, C)``, writing nothing."""
    torch.ops.ies_fast.record_nll(hist, count, logp, target, index, ignore_index, validate)


def close_epoch(backend: str, hist, count, mastered, order: int, window: int, k: int, threshold: float) -> torch.Tensor:
    """``threshold`` is :func:`ies_fast.selectors.rule.decision_threshold` (an fp32 value)."""
    if backend == "triton":
        from .triton import close_epoch_triton

        return close_epoch_triton(hist, count, mastered, order, window, k, threshold)
    if backend == "native":
        return torch.ops.ies_fast.close_epoch(hist, count, mastered, order, window, k, threshold)
    return close_epoch_torch(hist, count, mastered, order, window, k, threshold)
