"""Multi-exit and multi-term losses: per-sample losses ``[B, H]`` from ``H`` exits
(or heads, or loss terms) recorded by :class:`ies_fast.IES`.

``IES(num_samples, ..., num_exits=H, exit_reduction=...)``:

* ``"mean"`` / ``"sum"`` / ``"weights"``: each sample's ``H`` losses are reduced to
  one (mean, sum, or ``sum_h exit_weights[h] * L_h``) before recording; the sample
  is mastered or not as a whole.
* ``"per_exit"``: every (sample, exit) pair has its own loss history (a ring of
  ``num_samples * H`` virtual samples, virtual index ``index * H + h``) and its own
  mastered decision. :meth:`PerExitIES.exit_mask` says which terms to keep in the
  loss, :func:`multi_exit_loss` combines them, and a sample leaves the loader
  (``removed_mask``) only when all its exits are mastered.

Also an example multi-exit model (:class:`MultiExitResNet`) for tests and demos.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import state_checks as check
from .ops import dispatch
from .selector import IES, TOTALS
from .train.models import BasicBlock as _BasicBlock

EXIT_REDUCTIONS = ("mean", "sum", "weights", "per_exit")


# ---- configuration and reductions ---------------------------------------------------
def check_exit_config(num_exits, exit_reduction, exit_weights) -> tuple:
    """Validate IES's multi-exit arguments; returns ``(num_exits, exit_reduction,
    exit_weights as a tuple of floats or None)``."""
    if isinstance(num_exits, bool) or not isinstance(num_exits, int) or num_exits < 1:
        raise ValueError(f"num_exits must be a positive int, got {num_exits!r}")
    if exit_reduction not in EXIT_REDUCTIONS:
        raise ValueError(f"exit_reduction must be one of {EXIT_REDUCTIONS}, got {exit_reduction!r}")
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


def virtual_index(index: torch.Tensor, num_exits: int) -> torch.Tensor:
    """int64 ``[B * H]``: ``index * H + h`` row-major (rows with ``index < 0`` stay -1)."""
    h = torch.arange(num_exits, device=index.device, dtype=torch.int64)
    v = index.unsqueeze(1) * num_exits + h
    return torch.where(index.unsqueeze(1) < 0, torch.full_like(v, -1), v).reshape(-1)


def gather_rows(mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``mask[index]`` for a ``[S, H]`` bool mask, rows with ``index < 0`` all True
    (kept). ``index`` is int64 on ``mask``'s device."""
    safe = torch.where(index < 0, torch.zeros_like(index), index)
    return mask.index_select(0, safe) | (index < 0).unsqueeze(1)


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


# ---- per_exit: one history per (sample, exit) ---------------------------------------
class PerExitIES(IES):
    """:class:`ies_fast.IES` with ``exit_reduction="per_exit"`` (built by ``IES(...)``;
    do not instantiate directly). Decisions are per (sample, exit) and live in an
    inner IES over ``num_samples * num_exits`` virtual samples; this object's
    ``mastered`` is "all exits mastered", which is what leaves the loader."""

    def _init_per_exit(self) -> None:
        H = self.num_exits
        self.exits = IES(
            self.num_samples * H, self.delta, self.order, self.window, self.device,
            k=self.k, eligibility=self.eligibility,
            score_every=self.score_every, backend=self.backend, distributed=self.distributed,
        )
        # the sample-level ring is unused here: record through observe() (cross_entropy(selector=...)
        # writes a single head's losses and is not meaningful for a per-exit selector)
        self.hist = self.hist[:0]
        self.count = self.count[:0]

    # recording
    def observe(self, per_sample_loss: torch.Tensor, index: torch.Tensor, *, scoring: bool = False) -> None:
        """Record ``[B, H]`` losses, one per (sample, exit). No host sync on CUDA."""
        losses = check_losses(per_sample_loss, self.num_exits)
        index = self._index(index, losses.shape[0])
        if losses.shape[0] == 0:
            return
        inner = self.exits
        v = virtual_index(index, self.num_exits)
        dispatch.record(inner._op("record"), inner.hist, inner.count, losses.detach().reshape(-1).to(self.device), v)
        if scoring:
            inner._pending_scored += index.numel()

    def step(self) -> None:
        """Close the epoch for every (sample, exit); a sample is mastered (removed)
        when all its exits are."""
        self._report_deferred_errors()
        if self.removal_enabled:
            self.totals[TOTALS.index("backward_saved")] += self.mastered.sum()
        self.totals[TOTALS.index("sample_epochs")] += self.num_samples
        self.exits.step()
        self.mastered.copy_(self.exit_mastered_mask().all(dim=1))
        self.epoch += 1
        self._invalidate()

    def set_removal(self, enabled: bool) -> None:
        super().set_removal(enabled)
        self.exits.set_removal(enabled)

    # the decision
    def exit_mastered_mask(self) -> torch.Tensor:
        """bool ``[num_samples, num_exits]``: (sample, exit) pairs mastered at the last step()."""
        return self.exits.mastered.view(self.num_samples, self.num_exits)

    def exit_mask(self, index: torch.Tensor) -> torch.Tensor:
        """bool ``[B, num_exits]``: True where the term enters this step's loss (its
        exit is not mastered, or removal is off). No host sync on CUDA."""
        index = self._index(index, index.numel() if isinstance(index, torch.Tensor) else -1)
        if not self.removal_enabled:
            return torch.ones(index.numel(), self.num_exits, dtype=torch.bool, device=self.device)
        return gather_rows(~self.exit_mastered_mask(), index)

    # reporting
    def stats(self) -> dict:
        """Sample-level counts (``kept``/``removed``/``backward_saved``: whole samples
        out of the loader) plus term-level ones (``terms_*``: masked (sample, exit) pairs)."""
        inner = self.exits.stats()
        totals = dict(zip(TOTALS, self.totals.tolist()))
        removed = int(self.removed_mask().sum())
        per_exit = self.exit_mastered_mask().sum(dim=0).tolist()
        return {
            "epoch": self.epoch,
            "num_samples": self.num_samples,
            "num_exits": self.num_exits,
            "kept": self.num_samples - removed,
            "removed": removed,
            "mastered": int(self.mastered.sum()),
            "mastered_per_exit": per_exit,
            "reincluded": inner["reincluded"],
            "newly_mastered": inner["newly_mastered"],
            "observed": inner["observed"],
            "eligible": inner["eligible"],
            "nonfinite": inner["nonfinite"],
            "nonfinite_total": inner["nonfinite_total"],
            "reincluded_total": inner["reincluded_total"],
            "backward_saved": totals["backward_saved"],
            "backward_saved_fraction": totals["backward_saved"] / totals["sample_epochs"] if totals["sample_epochs"] else 0.0,
            "terms_masked": inner["removed"],
            "terms_masked_total": inner["backward_saved"],
            "terms_masked_fraction": inner["backward_saved_fraction"],
            "scored_total": inner["scored_total"],
            "removal_enabled": self.removal_enabled,
        }

    # checkpoints
    def state_dict(self) -> dict:
        return {
            "kind": "IES-per-exit",
            "version": self.VERSION,
            "num_samples": self.num_samples,
            "num_exits": self.num_exits,
            "exit_weights": self.exit_weights,
            "epoch": self.epoch,
            "removal_enabled": self.removal_enabled,
            "mastered": self.mastered.clone(),
            "totals": self.totals.clone(),
            "exits": self.exits.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`. ``num_samples``, ``num_exits`` and
        ``exit_weights`` must match, and the inner per-(sample, exit) state follows
        :meth:`IES.load_state_dict`'s rules (``delta`` and ``score_every`` come from
        it). The whole state, inner one included, is checked first: a bad one raises
        ``ValueError`` naming the key and changes nothing."""
        check.header(state, "IES-per-exit", self.VERSION)
        check.matches(state, "num_samples", self.num_samples)
        check.matches(state, "num_exits", self.num_exits)
        weights = state.get("exit_weights")
        if (None if weights is None else tuple(weights) if isinstance(weights, (list, tuple)) else weights) != self.exit_weights:
            raise ValueError(f"state_dict['exit_weights']={weights!r} does not match this object's "
                             f"exit_weights={self.exit_weights!r}")
        mastered = check.tensor(state, "mastered", (self.num_samples,), torch.bool)
        totals = check.tensor(state, "totals", (len(TOTALS),), torch.int64, low=0)
        epoch, removal_enabled = check.integer(state, "epoch"), check.boolean(state, "removal_enabled")
        if "exits" not in state:
            raise ValueError("state_dict['exits'] is missing")
        inner = self.exits._checked_state(state["exits"], where="state_dict['exits']")
        self.exits._apply_state(inner)
        self.mastered.copy_(mastered.to(self.device))
        self.totals.copy_(totals.to(self.device))
        self.delta, self.score_every = self.exits.delta, self.exits.score_every
        self.epoch, self.removal_enabled = epoch, removal_enabled
        self._pending_scored.zero_()
        self._invalidate()

    def to(self, device) -> "PerExitIES":
        super().to(device)
        self.exits.to(device)
        return self

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", num_exits={self.num_exits}, exit_reduction='per_exit')"


# ---- an example multi-exit model ----------------------------------------------------
class MultiExitResNet(nn.Module):
    """A small CIFAR-style ResNet (3x3 stem, stages of basic blocks, stride 2 between
    stages) with a classifier head (global average pool + linear) after every
    stage. ``forward`` returns logits ``[B, H, C]``, ``H = len(widths)``; the last
    exit is the usual ResNet output. ``widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)``
    is a multi-exit ResNet-18."""

    def __init__(self, num_classes: int = 10, widths=(16, 32, 64), blocks=(1, 1, 1), in_channels: int = 3):
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths and blocks must have the same non-zero length, got {widths!r} and {blocks!r}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, heads, cin = [], [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = [_BasicBlock(cin if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            heads.append(nn.Linear(w, num_classes))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, logits = self.stem(x), []
        for stage, head in zip(self.stages, self.heads):
            out = stage(out)
            logits.append(head(F.adaptive_avg_pool2d(out, 1).flatten(1)))
        return torch.stack(logits, dim=1)
