"""Per-exit IES: every (sample, exit) pair has its own loss history (a ring of
``num_samples * H`` virtual samples, virtual index ``index * H + h``) and its own
mastered decision. :meth:`PerExitIES.exit_mask` says which terms to keep in the
loss, :func:`ies_fast.multi_exit_loss` combines them, and a sample leaves the
loader (``removed_mask``) only when all its exits are mastered.

Built by ``ies_fast.IES(..., exit_reduction="per_exit")`` or
``ies_fast.make_selector("ies", ..., exit_reduction="per_exit")``.
"""
from __future__ import annotations

import torch

from ..io import state_checks as check
from ..losses.exits import check_losses
from ..ops import dispatch
from .ies import IES, TOTALS

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


# ---- per_exit: one history per (sample, exit) ---------------------------------------
class PerExitIES(IES):
    """:class:`ies_fast.IES` with ``exit_reduction="per_exit"`` (what ``IES(...,
    exit_reduction="per_exit")`` builds). Decisions are per (sample, exit) and live in
    an inner IES over ``num_samples * num_exits`` virtual samples; this object's
    ``mastered`` is "all exits mastered", which is what leaves the loader."""

    KIND = "IES-per-exit"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("exit_reduction", "per_exit")
        if kwargs["exit_reduction"] != "per_exit":
            raise ValueError(f"PerExitIES needs exit_reduction='per_exit', got {kwargs['exit_reduction']!r}")
        super().__init__(*args, **kwargs)
        if self.scoring_schedule.policy != "every" or self.kept_floor.min_kept:
            raise ValueError("exit_reduction='per_exit' supports score_policy='every' and min_kept=0 only")
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
        index = self.check_index(index, losses.shape[0])
        if losses.shape[0] == 0:
            return
        inner = self.exits
        v = virtual_index(index, self.num_exits)
        dispatch.record(inner._op("record"), inner.hist, inner.count, losses.detach().reshape(-1).to(self.device), v)
        if scoring:
            inner.count_scored(index.numel())

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

    def epoch_losses(self) -> torch.Tensor:
        """fp32 ``[num_samples]``: the largest of each sample's exit losses recorded since
        the last step(), NaN unless every exit's loss was recorded."""
        return self.exits.epoch_losses().view(self.num_samples, self.num_exits).amax(1)

    def sample_scores(self):
        """``None``: the scores are per (sample, exit) (``self.exits.sample_scores()``)."""
        return None

    def state_tensors(self) -> dict:
        inner = {f"exits.{k}": v for k, v in self.exits.state_tensors().items()}
        return {"mastered": self.mastered, "totals": self.totals, **inner}

    # the decision
    def exit_mastered_mask(self) -> torch.Tensor:
        """bool ``[num_samples, num_exits]``: (sample, exit) pairs mastered at the last step()."""
        return self.exits.mastered.view(self.num_samples, self.num_exits)

    def exit_mask(self, index: torch.Tensor) -> torch.Tensor:
        """bool ``[B, num_exits]``: True where the term enters this step's loss (its
        exit is not mastered, or removal is off). No host sync on CUDA."""
        index = self.check_index(index, index.numel() if isinstance(index, torch.Tensor) else -1)
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
        return {
            "epoch": self.epoch,
            "num_samples": self.num_samples,
            "num_exits": self.num_exits,
            "kept": self.num_samples - removed,
            "removed": removed,
            "mastered": int(self.mastered.sum()),
            "mastered_per_exit": self.exit_mastered_mask().sum(dim=0).tolist(),
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
            **self._state_header(),
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
        check.header(state, self.KIND, self.VERSION)
        check.matches(state, "num_samples", self.num_samples)
        check.matches(state, "num_exits", self.num_exits)
        weights = state.get("exit_weights")
        if (None if weights is None else tuple(weights) if isinstance(weights, (list, tuple)) else weights) != self.exit_weights:
            raise ValueError(f"state_dict['exit_weights']={weights!r} does not match this object's "
                             f"exit_weights={self.exit_weights!r}")
        mastered = check.tensor(state, "mastered", (self.num_samples,), torch.bool)
        totals = check.tensor(state, "totals", (len(TOTALS),), torch.int64, low=0)
        epoch, removal_enabled = check.epoch(state), check.boolean(state, "removal_enabled")
        check.totals(totals, TOTALS, epoch, self.num_samples)
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


IES.variants["per_exit"] = PerExitIES
