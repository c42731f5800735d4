"""Route each selector operation to the backend :func:`ies_fast.backend.resolve` picked."""
from __future__ import annotations

import torch

from .compact import compact_torch
from .ring import close_epoch_torch, record_torch


def record(backend: str, hist, count, loss, index) -> None:
    if backend == "triton":
        from ..kernels.ring import record_triton

        return record_triton(hist, count, loss, index)
    if backend == "native":
        return torch.ops.ies_fast.record(hist, count, loss.float(), index)
    return record_torch(hist, count, loss, index)


def close_epoch(backend: str, hist, count, mastered, order: int, window: int, k: int, threshold: float) -> torch.Tensor:
    """``threshold`` is :func:`ies_fast.criterion.decision_threshold` (an fp32 value)."""
    if backend == "triton":
        from ..kernels.ring import close_epoch_triton

        return close_epoch_triton(hist, count, mastered, order, window, k, threshold)
    if backend == "native":
        return torch.ops.ies_fast.close_epoch(hist, count, mastered, order, window, k, threshold)
    return close_epoch_torch(hist, count, mastered, order, window, k, threshold)


def compact(backend: str, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from ..kernels.compact import compact_triton

        return compact_triton(mask)
    if backend == "native":
        return torch.ops.ies_fast.compact(mask)
    return compact_torch(mask)
