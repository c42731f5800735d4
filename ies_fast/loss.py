"""``ies_fast.cross_entropy``: a drop-in for ``F.cross_entropy`` that also records
each sample's loss in a selector."""
from __future__ import annotations

from typing import Optional

import torch

from . import backend as _backend
from .ops.cross_entropy import per_sample_cross_entropy_torch, reduce_losses

REDUCTIONS = ("mean", "sum", "none")


def _check_inputs(logits, target, ignore_index, label_smoothing, reduction, sample_weight):
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(
            f"logits must be a 2-D tensor [batch, classes], got "
            f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}"
        )
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"logits must be float32, bfloat16, float16 or float64, got {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError("logits must have at least one class column")
    if not isinstance(target, torch.Tensor) or target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target must be 1-D class indices with one entry per row of logits ({logits.shape[0]}), "
            f"got {tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__}"
        )
    if target.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"target must hold class indices (int64), got {target.dtype}")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits on {logits.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not (0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if sample_weight is not None and (
        not isinstance(sample_weight, torch.Tensor) or tuple(sample_weight.shape) != (logits.shape[0],)
    ):
        raise ValueError(f"sample_weight must be a tensor of shape ({logits.shape[0]},)")


def _check_target_range(target, num_classes, ignore_index, selector) -> torch.Tensor:
    """Targets out of ``[0, C)`` (other than ``ignore_index``): raise on CPU; on CUDA
    count them for the selector's next ``step()`` (or raise now without a selector)
    and treat the rows as ignored, so no kernel reads out of bounds."""
    target = target.long()
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if target.device.type == "cpu" or selector is None:
        if bool(bad.any()):
            raise ValueError(f"target out of range [0, {num_classes}): got {int(target[bad][0])}")
        return target
    selector._deferred_errors[1] += bad.sum()
    return torch.where(bad, torch.full_like(target, ignore_index), target)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    index: Optional[torch.Tensor] = None,
    selector=None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    sample_weight: Optional[torch.Tensor] = None,
    scoring: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Cross-entropy with ``F.cross_entropy``'s meaning (``ignore_index``,
    ``label_smoothing``, ``reduction``), computed in fp32 for fp32/bf16/fp16 logits.

    With a ``selector`` and the samples' dataset ``index``, each row's loss (as
    computed, smoothing included; ignored rows excepted) is recorded for the
    epoch, in the same kernel pass on the Triton path. ``sample_weight`` multiplies
    each row's loss before the reduction (InfoBatch's rescaling). ``scoring=True``
    marks a forward-only scoring pass (counted in the selector's ``scored_total``).
    No host sync on CUDA.
    """
    _check_inputs(logits, target, ignore_index, label_smoothing, reduction, sample_weight)
    if selector is not None and index is None:
        raise ValueError("index is required when a selector is given (the samples' dataset indices)")
    if selector is not None and getattr(selector, "num_exits", 1) > 1:
        raise ValueError(
            "selector has num_exits > 1: feed its [B, H] per-exit losses through selector.observe "
            "(see ies_fast.per_exit_cross_entropy), not cross_entropy"
        )
    target = _check_target_range(target, logits.shape[1], ignore_index, selector)
    recorded = None
    if selector is not None:
        recorded = selector._index(index, logits.shape[0])
        recorded = torch.where(target.to(recorded.device) == ignore_index, torch.full_like(recorded, -1), recorded)
        if scoring:
            selector._pending_scored += logits.shape[0]

    op = _backend.resolve(backend, logits.device, "cross_entropy")
    fused_ring = selector is None or (hasattr(selector, "hist") and selector.device == logits.device)
    if op == "triton" and logits.dtype != torch.float64 and fused_ring:
        from .kernels.cross_entropy import fused_cross_entropy

        ring = (selector.hist, selector.count, recorded) if selector is not None else None
        return fused_cross_entropy(
            logits,
            target,
            ignore_index=ignore_index,
            label_smoothing=float(label_smoothing),
            reduction=reduction,
            sample_weight=sample_weight,
            ring=ring,
        )

    losses = per_sample_cross_entropy_torch(logits, target, ignore_index, float(label_smoothing))
    if selector is not None and logits.shape[0]:
        selector._record(losses.detach(), recorded)
    valid = target != ignore_index
    out_dtype = logits.dtype
    return reduce_losses(losses, valid, reduction, sample_weight, out_dtype)
