"""Per-exit IES: every (sample, exit) pair has its own loss history (a ring of
``num_samples * H`` virtual samples, virtual index ``index * H + h``) and its own
mastered decision. :meth:`PerExitIES.exit_mask` says which terms to keep in the
loss, :func:`ies_fast.multi_exit_loss` combines them, and a sample leaves the
loader (``removed_mask``) only when all its exits are mastered.

Built by ``ies_fast.make_selector("ies", ..., exit_reduction="per_exit")`` or
``ies_fast.PerExitIES(...)``.
"""
from __future__ import annotations

import torch

from .. import checks as check
from ..losses.exits import check_exit_config, check_losses
from .base import Selector
from .floor import kept_count
from .ies import IES, TOTALS  # the same totals layout (sample level; the terms' are the inner IES's)


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
class PerExitIES(Selector):
    """IES with a decision per (sample, exit): it owns an :class:`ies_fast.IES`
    (:attr:`exits`) over ``num_samples * num_exits`` virtual samples, and a sample
    is removed (``mastered_mask``) when all its exits are mastered. Built by
    ``make_selector("ies", ..., exit_reduction="per_exit")`` or directly.

    Args:
        num_samples: the training set's size.
        delta: as :class:`ies_fast.IES`'s, applied to each (sample, exit).
        order: as :class:`ies_fast.IES`'s.
        window: as :class:`ies_fast.IES`'s.
        device: where the per-sample state lives (default CPU).
        num_exits: exits per sample, an int ``>= 1``.
        exit_reduction: must be ``"per_exit"``.
        exit_weights: optional ``num_exits`` finite weights ``>= 0`` with a positive
            sum (recorded in the state; :func:`ies_fast.multi_exit_loss` takes them).
        k: as :class:`ies_fast.IES`'s.
        eligibility: as :class:`ies_fast.IES`'s.
        score_every: as :class:`ies_fast.IES`'s.
        backend: as :class:`ies_fast.IES`'s.
        distributed: as :class:`ies_fast.IES`'s.
        score_policy: ``"every"`` only.
        score_max_interval: as :class:`ies_fast.IES`'s.
        min_kept: ``0`` only.
        seed: accepted for the same signature as :class:`ies_fast.IES`; unused.

    Raises:
        TypeError: as :class:`ies_fast.IES`.
        ValueError: as :class:`ies_fast.IES`, and ``exit_reduction`` other than
            ``"per_exit"``, ``score_policy`` other than ``"every"`` or ``min_kept`` other than 0.
    """

    KIND, VERSION, TOTALS = "IES-per-exit", 1, TOTALS
    BOUNDED_TOTALS = ("backward_saved",)

    def __init__(self, num_samples: int, delta: float = 1e-3, order: int = 2, window: int = 3, device=None, *,
                 num_exits: int = 2, exit_reduction: str = "per_exit", exit_weights=None, k: int = 1,
                 eligibility: str = "paper", score_every: int = 1, backend: str = "auto", distributed: bool = True,
                 score_policy: str = "every", score_max_interval: int = 8, min_kept=0, seed: int = 0):
        super().__init__(num_samples, device, backend)
        if exit_reduction != "per_exit":
            raise ValueError(f"PerExitIES needs exit_reduction='per_exit', got {exit_reduction!r}")
        self.num_exits, self.exit_reduction, self.exit_weights = check_exit_config(num_exits, exit_reduction,
                                                                                   exit_weights)
        if score_policy != "every" or kept_count(min_kept, num_samples):
            raise ValueError("exit_reduction='per_exit' supports score_policy='every' and min_kept=0 only")
        self.exits = IES(num_samples * self.num_exits, delta, order, window, self.device, k=k,
                         eligibility=eligibility, score_every=score_every, backend=backend, distributed=distributed,
                         score_max_interval=score_max_interval)
        self.mastered = torch.zeros(num_samples, dtype=torch.bool, device=self.device)
        self.totals = torch.zeros(len(TOTALS), dtype=torch.int64, device=self.device)

    # the inner selector's settings, read through
    delta = property(lambda self: self.exits.delta)
    order = property(lambda self: self.exits.order)
    window = property(lambda self: self.exits.window)
    k = property(lambda self: self.exits.k)
    eligibility = property(lambda self: self.exits.eligibility)
    score_every = property(lambda self: self.exits.score_every)
    history_length = property(lambda self: self.exits.history_length)

    # recording
    def observe(self, per_sample_loss: torch.Tensor, index: torch.Tensor, *, scoring: bool = False) -> None:
        """Record one loss per (sample, exit) for this epoch (no host sync on CUDA).

        Args:
            per_sample_loss: float ``[B, num_exits]`` (``[B]`` when ``num_exits == 1``),
                e.g. from :func:`ies_fast.per_exit_cross_entropy`.
            index: integer ``[B]``, the samples' dataset indices.
            scoring: marks a forward-only scoring pass.

        Raises:
            TypeError: a non-floating ``per_sample_loss`` or a non-integer ``index``.
            ValueError: another shape, or an index out of range (CUDA: at the next :meth:`step`).
        """
        losses = check_losses(per_sample_loss, self.num_exits)
        index = self.check_index(index, losses.shape[0])
        if losses.shape[0] == 0:
            return
        self.exits.record(losses.detach().reshape(-1), virtual_index(index, self.num_exits))
        if scoring:
            self.count_scored(index.numel())

    def record(self, per_sample_loss: torch.Tensor, index: torch.Tensor) -> None:
        raise TypeError("a PerExitIES records [B, num_exits] losses through observe() "
                        "(ies_fast.per_exit_cross_entropy), not one loss per sample")

    def step(self) -> None:
        """Close the epoch for every (sample, exit); a sample is mastered (removed)
        when all its exits are."""
        self._report_deferred_errors()
        if self.removal_enabled:
            self.totals[TOTALS.index("backward_saved")] += self.mastered.count_nonzero()
        self.totals[TOTALS.index("sample_epochs")] += self.num_samples
        self.exits.count_scored(self._pending_scored[0])
        self._pending_scored.zero_()
        self.exits.step()
        self.mastered.copy_(self.exit_mastered_mask().all(dim=1))
        self.epoch += 1
        self._invalidate()

    def set_removal(self, enabled: bool) -> None:
        super().set_removal(enabled)
        self.exits.set_removal(enabled)

    def epoch_losses(self) -> torch.Tensor:
        """This epoch's recorded loss per sample, over its exits.

        Returns:
            fp32 ``[num_samples]``: the largest of each sample's exit losses recorded
            since the last step(), NaN unless every exit's loss was recorded.
        """
        return self.exits.epoch_losses().view(self.num_samples, self.num_exits).amax(1)

    def sample_scores(self):
        """No per-sample score: the scores are per (sample, exit).

        Returns:
            ``None`` (``self.exits.sample_scores()`` has them per sample and exit).
        """
        return None

    def state_tensors(self) -> dict:
        inner = {f"exits.{k}": v for k, v in self.exits.state_tensors().items()}
        return {"mastered": self.mastered, "totals": self.totals, **inner}

    # the decision
    def mastered_mask(self) -> torch.Tensor:
        """The samples with every exit mastered at the last :meth:`step`.

        Returns:
            bool ``[num_samples]`` on the selector's device.
        """
        return self.mastered

    def removed_mask(self) -> torch.Tensor:
        return self.mastered if self.removal_enabled else torch.zeros_like(self.mastered)

    def needs_scoring(self) -> bool:
        return self.exits.needs_scoring()

    def exit_mastered_mask(self) -> torch.Tensor:
        """The (sample, exit) pairs mastered at the last :meth:`step`.

        Returns:
            bool ``[num_samples, num_exits]``.
        """
        return self.exits.mastered_mask().view(self.num_samples, self.num_exits)

    def exit_mask(self, index: torch.Tensor) -> torch.Tensor:
        """Which (sample, exit) terms enter this step's loss (no host sync on CUDA).

        Args:
            index: integer ``[B]``, the samples' dataset indices.

        Returns:
            bool ``[B, num_exits]``: True where the exit is not mastered, or removal is off.

        Raises:
            TypeError: ``index`` is not an integer tensor.
            ValueError: ``index`` is out of range (CPU).
        """
        index = self.check_index(index, index.numel() if isinstance(index, torch.Tensor) else -1)
        if not self.removal_enabled:
            return torch.ones(index.numel(), self.num_exits, dtype=torch.bool, device=self.device)
        return gather_rows(~self.exit_mastered_mask(), index)

    # reporting
    def stats(self) -> dict:
        """Counters as Python numbers (reads the device: call once per epoch).

        Returns:
            A dict of sample-level counts (``kept``, ``removed``, ``backward_saved``:
            whole samples out of the loader), ``mastered_per_exit``, and term-level
            ones (``terms_*``: masked (sample, exit) pairs).
        """
        inner = self.exits.stats()
        totals = dict(zip(TOTALS, self.totals.tolist()))
        removed = int(self.removed_mask().count_nonzero())
        return {
            "epoch": self.epoch,
            "num_samples": self.num_samples,
            "num_exits": self.num_exits,
            "kept": self.num_samples - removed,
            "removed": removed,
            "mastered": int(self.mastered.count_nonzero()),
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

    def check_state(self, state, where: str = "state_dict") -> dict:
        """Validate ``state`` whole, changing nothing.

        Args:
            state: a dict from :meth:`PerExitIES.state_dict`; its ``"exits"`` entry is the
                inner per-(sample, exit) state, checked by :meth:`IES.check_state`
                (``delta`` and ``score_every`` come from it).
            where: the state's name in messages.

        Returns:
            What :meth:`apply_state` applies.

        Raises:
            ValueError: ``num_samples``, ``num_exits`` or ``exit_weights`` differ from this
                object's, ``"exits"`` is missing, or any key is bad. The message names the key.
        """
        values = super().check_state(state, where)
        check.matches(state, "num_exits", self.num_exits, where)
        weights = state.get("exit_weights")
        if (None if weights is None else tuple(weights) if isinstance(weights, (list, tuple)) else weights) != self.exit_weights:
            raise ValueError(f"{where}['exit_weights']={weights!r} does not match this object's "
                             f"exit_weights={self.exit_weights!r}")
        if "exits" not in state:
            raise ValueError(f"{where}['exits'] is missing")
        return {**values, "mastered": check.tensor(state, "mastered", (self.num_samples,), torch.bool, where),
                "exits": self.exits.check_state(state["exits"], where=f"{where}['exits']")}

    def apply_state(self, values: dict) -> None:
        self.exits.apply_state(values["exits"])
        self.mastered.copy_(values["mastered"].to(self.device))
        super().apply_state(values)

    def to(self, device) -> "PerExitIES":
        super().to(device)
        self.exits.to(self.device)
        return self

    def __repr__(self) -> str:
        return (f"PerExitIES(num_samples={self.num_samples}, num_exits={self.num_exits}, delta={self.delta}, "
                f"order={self.order}, window={self.window}, k={self.k}, eligibility={self.eligibility!r}, "
                f"device={self.device}, backend={self.backend!r})")
