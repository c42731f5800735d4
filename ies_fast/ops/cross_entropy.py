"""Per-sample cross-entropy with F.cross_entropy's meaning, in plain torch."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def per_sample_cross_entropy_torch(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, label_smoothing: float
) -> torch.Tensor:
    """fp32 ``[B]`` losses (0 on ignored rows), differentiable w.r.t. ``logits``."""
    return F.cross_entropy(
        logits.float(), target, reduction="none", ignore_index=ignore_index, label_smoothing=label_smoothing
    )


def reduce_losses(
    losses: torch.Tensor,
    valid: torch.Tensor,
    reduction: str,
    sample_weight: Optional[torch.Tensor],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Apply ``sample_weight`` and the reduction. ``mean`` divides by the number of
    non-ignored rows, as F.cross_entropy does (weights do not change the divisor)."""
    if sample_weight is not None:
        losses = losses * sample_weight
    if reduction == "none":
        return losses.to(out_dtype)
    total = losses.sum()
    if reduction == "sum":
        return total.to(out_dtype)
    return (total / valid.sum()).to(out_dtype)
