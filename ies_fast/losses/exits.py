"""Multi-exit and multi-term losses: per-sample losses ``[B, H]`` from ``H`` exits
(or heads, or loss terms), their reductions to one loss per sample, and the batch
loss over the (sample, exit) terms a per-exit selector keeps.

``IES(num_samples, ..., num_exits=H, exit_reduction=...)`` reduces ``[B, H]`` with
:func:`reduce_exits` (``"mean"`` / ``"sum"`` / ``"weights"``) before recording;
``"per_exit"`` keeps one history per (sample, exit)
(:class:`ies_fast.selectors.per_exit.PerExitIES`), and :func:`multi_exit_loss`
combines the kept terms.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..checks import check_choice, check_int

EXIT_REDUCTIONS = ("mean", "sum", "weights", "per_exit")


def check_exit_config(num_exits, exit_reduction, exit_weights) -> tuple:
    """Validate IES's multi-exit arguments; returns ``(num_exits, exit_reduction,
    exit_weights as a tuple of floats or None)``."""
    check_int("num_exits", num_exits, min=1)
    check_choice("exit_reduction", exit_reduction, EXIT_REDUCTIONS)
    if exit_weights is None:
        if exit_reduction == "weights":
            raise ValueError("exit_weights is required with exit_reduction='weights'")
        return num_exits, exit_reduction, None
    if exit_reduction not in ("weights", "per_exit"):
        raise ValueError(f"exit_weights is only used with exit_reduction 'weights' or 'per_exit', not {exit_reduction!r}")
    if isinstance(exit_weights, torch.Tensor):
        exit_weights = exit_weights.detach().cpu().tolist()
    try:
        weights = tuple(float(w) for w in exit_weights)
    except TypeError:
        raise ValueError(f"exit_weights must be a sequence of {num_exits} numbers, got {exit_weights!r}") from None
    if len(weights) != num_exits or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"exit_weights must be {num_exits} finite numbers >= 0 with a positive sum, got {exit_weights!r}")
    return num_exits, exit_reduction, weights


_WEIGHTS_CACHE: dict = {}


def _weights_tensor(weights: Optional[Sequence[float]], num_exits: int, like: torch.Tensor) -> torch.Tensor:
    """Exit weights as a tensor on ``like``'s device and dtype, cached so a training
    step does not copy them from the host each time."""
    if weights is None:
        return torch.ones(num_exits, dtype=like.dtype, device=like.device)
    if isinstance(weights, torch.Tensor):
        if weights.shape != (num_exits,):
            raise ValueError(f"exit_weights must have shape ({num_exits},), got {tuple(weights.shape)}")
        return weights.to(like.device, like.dtype, non_blocking=True)
    key = (tuple(float(w) for w in weights), like.device, like.dtype)
    t = _WEIGHTS_CACHE.get(key)
    if t is None:
        if len(_WEIGHTS_CACHE) > 64:
            _WEIGHTS_CACHE.clear()
        t = _WEIGHTS_CACHE[key] = torch.tensor(key[0], dtype=like.dtype, device=like.device)
    return t


def check_losses(per_exit_losses: torch.Tensor, num_exits: int) -> torch.Tensor:
    """``[B, H]`` floating point (``[B]`` accepted when ``H == 1``), as ``[B, H]``."""
    if not isinstance(per_exit_losses, torch.Tensor):
        raise TypeError(f"per_sample_loss must be a torch.Tensor, got {type(per_exit_losses).__name__}")
    if not per_exit_losses.is_floating_point():
        raise TypeError(f"per_sample_loss must be floating point, got {per_exit_losses.dtype}")
    if per_exit_losses.dim() == 1 and num_exits == 1:
        return per_exit_losses.unsqueeze(1)
    if per_exit_losses.dim() != 2 or per_exit_losses.shape[1] != num_exits:
        raise ValueError(
            f"per_sample_loss must be [B, num_exits={num_exits}]"
            f"{' or [B]' if num_exits == 1 else ''}, got shape {tuple(per_exit_losses.shape)}"
        )
    return per_exit_losses


def reduce_exits(per_exit_losses: torch.Tensor, num_exits: int, reduction: str, weights=None) -> torch.Tensor:
    """``[B, H]`` -> ``[B]`` by ``reduction`` in ``("mean", "sum", "weights")``. A
    non-finite term makes the sample's reduced loss non-finite (never mastered)."""
    losses = check_losses(per_exit_losses, num_exits)
    if reduction == "mean":
        return losses.mean(dim=1)
    if reduction == "sum":
        return losses.sum(dim=1)
    if reduction == "weights":
        return losses @ _weights_tensor(weights, num_exits, losses)
    raise ValueError(f"reduce_exits: reduction must be 'mean', 'sum' or 'weights', got {reduction!r}")


def multi_exit_loss(
    per_exit_losses: torch.Tensor, keep: Optional[torch.Tensor] = None, exit_weights: Optional[Sequence[float]] = None
) -> torch.Tensor:
    """Batch loss from per-(sample, exit) losses ``[B, H]`` and a keep mask ``[B, H]``
    (``IES.exit_mask(index)``): the ``exit_weights``-weighted mean over the kept terms,

        sum_{b,h} keep[b,h] w_h L[b,h]  /  sum_{b,h} keep[b,h] w_h.

    With nothing masked this is the weighted mean over all ``B·H`` terms (with equal
    weights: the mean over exits of each exit's ``F.cross_entropy`` batch mean).
    Masked terms drop out and the remaining ones share their weight, so the loss
    stays a per-term mean and its gradient scale does not shrink as exits get
    mastered, just as IES's batches of kept samples keep the batch-mean scale. A
    batch whose terms are all masked gives 0 (with a graph, zero gradient). No host
    sync."""
    losses = check_losses(per_exit_losses, per_exit_losses.shape[1] if per_exit_losses.dim() == 2 else 1)
    w = _weights_tensor(exit_weights, losses.shape[1], losses).expand_as(losses)
    if keep is not None:
        if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.shape != losses.shape:
            raise ValueError(f"keep must be a bool tensor of shape {tuple(losses.shape)} (IES.exit_mask(index))")
        w = w * keep.to(losses.device)
    den = w.sum()
    num = (torch.where(w > 0, losses, torch.zeros_like(losses)) * w).sum()
    return num / torch.where(den > 0, den, torch.ones_like(den))


def per_exit_cross_entropy(logits: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
    """Per-(sample, exit) cross-entropy ``[B, H]`` from logits ``[B, H, C]`` (or a list of
    ``H`` tensors ``[B, C]``) and class targets ``[B]``; extra keyword arguments go to
    ``F.cross_entropy`` (``label_smoothing``, ...)."""
    if isinstance(logits, (list, tuple)):
        logits = torch.stack(list(logits), dim=1)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError("logits must be [B, H, C] or a list of H tensors [B, C]")
    B, H, C = logits.shape
    flat = F.cross_entropy(logits.reshape(B * H, C).float(), target.repeat_interleave(H), reduction="none", **kwargs)
    return flat.view(B, H)
