"""Cross-entropy with F.cross_entropy's meaning in plain torch: the per-position
losses, the batch reductions, and the one-loss-per-sample rule the selectors
record (``docs/semantics.md``, "Per-sample loss of a sample with many positions")."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F


class PositionLosses(NamedTuple):
    """Unreduced losses ``[B, P]`` (``P`` positions per sample, 1 for 2-D input).

    ``ce``: F.cross_entropy(reduction="none") (class weights, smoothing included);
    ``z``: the z-loss term or ``None``; ``den``: each position's share of F's
    ``mean`` divisor (``weight[t]``, 1, or 0 when ignored); ``valid``: non-ignored
    positions as float, or ``None`` when every position counts (probability targets)."""

    ce: torch.Tensor
    z: Optional[torch.Tensor]
    den: Optional[torch.Tensor]
    valid: Optional[torch.Tensor]


def position_losses_torch(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    label_smoothing: float,
    lse_square_scale: float = 0.0,
    softcap: Optional[float] = None,
) -> PositionLosses:
    """``x`` is ``[B, C, ...]`` (fp32 or fp64); ``target`` class indices ``[B, ...]``
    or probabilities shaped like ``x``. ``softcap`` maps logits through
    ``softcap * tanh(x / softcap)`` first; ``lse_square_scale`` adds
    ``scale * logsumexp(x)^2`` on non-ignored positions (Liger's meaning)."""
    B = x.shape[0]
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    ce = F.cross_entropy(
        x, target, weight=weight, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing
    ).reshape(B, -1)
    den, valid = divisors(target, weight, ignore_index, ce.dtype) if not target.is_floating_point() else (None, None)
    z = None
    if lse_square_scale:
        z = lse_square_scale * torch.logsumexp(x, dim=1).reshape(B, -1).square()
        if valid is not None:
            z = z * valid
    return PositionLosses(ce, z, den, valid)


def divisors(target: torch.Tensor, weight: Optional[torch.Tensor], ignore_index: int, dtype) -> tuple:
    """``(den, valid)`` ``[B, P]`` for class-index targets: each position's share of
    F's ``mean`` divisor (``weight[t]`` or 1; 0 when ignored) and the valid mask."""
    t = target.reshape(target.shape[0], -1)
    ok = t != ignore_index
    valid = ok.to(dtype)
    if weight is None:
        return valid, valid
    return torch.where(ok, weight.to(dtype)[torch.where(ok, t, 0)], 0.0), valid


def _mean_over(values: torch.Tensor, count: Optional[torch.Tensor], dim=None) -> torch.Tensor:
    """``values.sum(dim) / count.sum(dim)`` (``count=None``: every position counts 1)."""
    if dim is None:
        total = values.sum()
        return total / (count.sum() if count is not None else values.numel())
    total = values.sum(dim)
    return total / (count.sum(dim) if count is not None else values.shape[dim])


def sample_losses(pos: PositionLosses) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss [B], recorded [B] bool)``: each sample's loss by the documented rule,
    the mean over its valid positions weighted as F's ``mean`` is (class weights in
    the divisor; the z-loss term averaged over non-ignored positions). Samples with
    nothing valid (every position ignored, or zero weight) get 0 and are not recorded."""
    ce, z, den, valid = pos
    P = ce.shape[1]
    n = valid.sum(1) if valid is not None else None
    return sample_losses_from_sums(
        ce.sum(1),
        den.sum(1) if den is not None else torch.full_like(ce[:, 0], P),
        z.sum(1) if z is not None else None,
        n if n is not None or z is None else torch.full_like(ce[:, 0], P),
    )


def sample_losses_from_sums(ce_sum, den_sum, z_sum=None, n_valid=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule of :func:`sample_losses` from each sample's sums (the Triton kernel
    accumulates them in its pass): ``ce_sum / den_sum (+ z_sum / n_valid)``."""
    recorded = den_sum > 0
    loss = torch.where(recorded, ce_sum / torch.where(recorded, den_sum, 1.0), 0.0)
    if z_sum is not None:
        loss = loss + torch.where(n_valid > 0, z_sum / n_valid.clamp(min=1), 0.0)
    return loss, recorded


def reduce_positions(
    pos: PositionLosses, reduction: str, sample_weight: Optional[torch.Tensor], out_shape
) -> torch.Tensor:
    """F.cross_entropy's reduction of the position losses (``sample_weight`` [B]
    multiplies each sample's terms and never changes the divisor); ``"sample"``
    gives the per-sample losses of :func:`sample_losses`."""
    ce, z, den, valid = pos
    if reduction == "sample":
        loss = sample_losses(pos)[0]
        return loss * sample_weight if sample_weight is not None else loss
    sw = sample_weight.unsqueeze(1) if sample_weight is not None else None
    if reduction == "none":
        out = ce if z is None else ce + z
        return (out * sw if sw is not None else out).reshape(out_shape)
    if sw is not None:
        ce = ce * sw
        z = z * sw if z is not None else None
    if reduction == "sum":
        return ce.sum() if z is None else ce.sum() + z.sum()
    out = _mean_over(ce, den)
    return out if z is None else out + _mean_over(z, valid)


def reduce_losses(
    losses: torch.Tensor,
    valid: torch.Tensor,
    reduction: str,
    sample_weight: Optional[torch.Tensor],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Apply ``sample_weight`` and the reduction to per-row losses ``[B]``. ``mean``
    divides by the number of non-ignored rows, as F.cross_entropy does (weights do
    not change the divisor)."""
    if sample_weight is not None:
        losses = losses * sample_weight
    if reduction == "none":
        return losses.to(out_dtype)
    total = losses.sum()
    if reduction == "sum":
        return total.to(out_dtype)
    return (total / valid.sum()).to(out_dtype)
