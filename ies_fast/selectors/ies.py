"""The IES selector: per-sample loss ring buffer on device, the mastered decision
at each epoch end, the keep mask, statistics, checkpoints and DDP merging."""
from __future__ import annotations


import numpy as np
import torch
import torch.distributed as dist

from .. import checks as check
from .rule import check_rule, decision_threshold, history_length
from .floor import KeptFloor
from ..ops import ring as ring_ops
from ..losses.exits import check_exit_config, reduce_exits
from ..ops.ring import current_slot
from ..ops.ring.reference import EPOCH_STATS, NOT_SEEN
from .schedule import ScoringSchedule
from ..checks import check_fits, check_int
from .base import Ring, Selector

#: running totals kept on device (no host sync while training)
TOTALS = ("backward_saved", "sample_epochs", "nonfinite", "reincluded", "scored")
#: what ``delta`` is measured against: ``"absolute"`` (the paper: loss units), or
#: ``"relative"`` (a fraction of the mean loss recorded in the epoch being closed, so
#: one setting does not depend on the loss's scale)
THRESHOLDS = ("absolute", "relative")
#: what the wrappers (IESDataset, IESCallback, IESTrainer) pass to IES unless told otherwise:
#: backoff scoring, the measured winner (docs/results.md: 1.34x against every-epoch scoring's
#: 1.17x on full-size Fashion-MNIST at the same accuracy); IES itself keeps the paper's "every"
WRAPPER_DEFAULTS = {"score_policy": "backoff"}


class IES(Selector):
    """Instance-dependent Early Stopping (Yuan et al., ICLR 2025).

    A sample is *mastered* after an epoch when it has ``order + window`` recorded
    losses and the mean of ``|Δ^order L|`` over the last ``window`` epochs is below
    ``delta``; mastered samples are left out of the next epoch's backward pass.
    The set is recomputed at every :meth:`step`, so a sample whose loss moves again
    comes back. ``delta=0`` never masters anything (the baseline).

    ``k`` and ``eligibility`` (``docs/semantics.md``): the score is the sum of the
    last ``k`` window means (the official code's ``--k``; ``k=1`` is the paper's
    formula); ``eligibility="paper"`` decides once the ``order + window + k - 1``
    losses it uses exist, ``"official"`` waits one epoch more, as
    tmllab/2025_ICLR_IES cifar_main.py does. Every backend decides with the one
    fp32 arithmetic of :mod:`ies_fast.selectors.rule`.

    Rules for unusual input (see ``docs/semantics.md``):

    * one loss per sample per epoch is recorded: the largest of that epoch's
      observations (duplicate indices in a batch, or two passes);
    * a non-finite loss discards the sample's history (it is kept and must collect
      ``order + window`` fresh losses) and is counted in ``stats()["nonfinite_total"]``;
    * a sample not observed in an epoch keeps its previous decision (this is how
      ``score_every > 1`` and ``score_policy="backoff"`` skip re-scoring mastered
      samples: :mod:`ies_fast.selectors.schedule`);
    * an empty batch is a no-op.

    ``min_kept`` (the collapse guard, :mod:`ies_fast.selectors.floor`): random mastered
    samples are replayed so that at least that many are trained each epoch; decisions
    are unchanged. Memory: ``4·history_length + 2`` bytes per sample on device.

    Args:
        num_samples: the training set's size.
        delta: the mastered threshold δ, a finite number ``>= 0`` (``0``: never master).
        order: the difference order N of ``Δ^N L``, an int in ``0..3``.
        window: the epochs averaged, an int ``>= 1``.
        device: where the per-sample state lives (default CPU).
        k: the number of window means summed (``1``: the paper's formula).
        eligibility: ``"paper"`` or ``"official"`` (one epoch later, as the authors' code).
        score_every: re-score removed samples every this many epochs (an int ``>= 1``).
        backend: ``"auto"``, ``"torch"``, ``"native"`` or ``"triton"``.
        distributed: merge the ranks' losses at :meth:`step` under an initialised process group.
        num_exits: losses per sample (``[B, num_exits]`` for multi-exit models).
        exit_reduction: ``"mean"``, ``"sum"`` or ``"weights"`` (``"per_exit"``: use
            :func:`ies_fast.make_selector`, which builds a :class:`ies_fast.PerExitIES`).
        exit_weights: ``num_exits`` finite weights ``>= 0`` with a positive sum, for
            ``exit_reduction="weights"`` only.
        score_policy: ``"every"`` or ``"backoff"`` (per-sample doubling re-score intervals).
        score_max_interval: the longest ``"backoff"`` interval, an int in ``[1, 16384]``
            and ``>= score_every``.
        min_kept: the collapse guard's floor: an int count in ``[0, num_samples]`` or a
            float fraction in ``[0, 1]``.
        seed: seeds the replayed samples' draw (with the epoch).
        shard_state: must stay ``False`` here; per-sample state sharded across DDP
            ranks is :class:`ies_fast.selectors.ShardedIES`, built by
            ``make_selector("ies", ..., shard_state=True)``.
        threshold: ``"absolute"`` (mastered when the mean ``|Δ^N|`` is below δ) or
            ``"relative"`` (below δ times the epoch's mean recorded loss: one setting
            for losses of any scale).

    Raises:
        TypeError: an int argument given as a float or bool, a non-number ``delta``,
            or a ``min_kept`` that is neither int nor float.
        ValueError: a value out of range (above), an unknown choice, ``delta`` so small
            that ``delta * window`` rounds to 0 in fp32, a loss history longer than 120
            (``order + window + k - 1``, +1 for ``"official"``), ``exit_reduction="per_exit"``,
            ``shard_state=True``,
            ``device="meta"``, or per-sample state larger than the device's memory.
        RuntimeError: ``backend="native"`` or ``"triton"`` is not available on ``device``.

    Example::

        sel = ies_fast.IES(len(train_set), delta=1e-3)
        loss = ies_fast.cross_entropy(logits, y, index, selector=sel)
        sel.step()                      # at each epoch's end
        next_epoch = sel.kept_indices()
    """

    KIND, VERSION, TOTALS = "IES", 1, TOTALS
    BOUNDED_TOTALS = ("backward_saved", "nonfinite", "reincluded")
    #: whether the ring holds only this rank's samples (:mod:`ies_fast.selectors.sharded`)
    _shards_state = False

    def __init__(
        self,
        num_samples: int,
        delta: float = 1e-3,
        order: int = 2,
        window: int = 3,
        device=None,
        *,
        k: int = 1,
        eligibility: str = "paper",
        score_every: int = 1,
        backend: str = "auto",
        distributed: bool = True,
        num_exits: int = 1,
        exit_reduction: str = "mean",
        exit_weights=None,
        score_policy: str = "every",
        score_max_interval: int = 8,
        min_kept=0,
        seed: int = 0,
        shard_state: bool = False,
        threshold: str = "absolute",
    ):
        super().__init__(num_samples, device, backend)
        if shard_state and not self._shards_state:
            raise ValueError("shard_state=True holds each rank's samples only: build it with "
                             "ies_fast.make_selector('ies', ..., shard_state=True) (a ShardedIES)")
        self.num_exits, self.exit_reduction, self.exit_weights = check_exit_config(num_exits, exit_reduction, exit_weights)
        if self.exit_reduction == "per_exit":
            raise ValueError("exit_reduction='per_exit' decides per (sample, exit): build it with "
                             "ies_fast.make_selector('ies', ..., exit_reduction='per_exit') (a PerExitIES)")
        L = check_rule(order, window, k, eligibility)  # the ring length
        check_fits(num_samples, 4 * L + 2, self.device, "IES")  # hist, count and mastered at least
        decision_threshold(delta, window)  # rejects a bad delta, or one that rounds to 0
        self.delta = float(delta)
        if threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
        self.threshold = threshold
        self.loss_scale = 0.0  # "relative": the last epoch's mean recorded loss
        self.order, self.window, self.k, self.eligibility = order, window, k, eligibility
        self.scoring_schedule = ScoringSchedule(num_samples, score_policy,
                                                score_every=check_int("score_every", score_every, min=1),
                                                max_interval=score_max_interval, device=self.device)
        self.distributed = distributed
        rows = self._ring_rows(num_samples)  # all of them here; this rank's share when sharded
        self.hist = torch.full((rows, L), NOT_SEEN, dtype=torch.float32, device=self.device)
        self.count = torch.zeros(rows, dtype=torch.uint8, device=self.device)
        self.mastered = torch.zeros(num_samples, dtype=torch.bool, device=self.device)
        self.totals = torch.zeros(len(TOTALS), dtype=torch.int64, device=self.device)
        self.last = torch.zeros(len(EPOCH_STATS), dtype=torch.int64, device=self.device)
        self.kept_floor = KeptFloor(num_samples, min_kept, seed=seed)
        # mastered samples trained anyway (the floor); empty while the floor is off (no memory, no work)
        self.replay = torch.zeros(num_samples if self.kept_floor.min_kept else 0, dtype=torch.bool, device=self.device)

    @property
    def score_every(self) -> int:
        """Scoring period s (``"backoff"``: the first interval) of :attr:`scoring_schedule`."""
        return self.scoring_schedule.score_every

    @score_every.setter
    def score_every(self, value: int) -> None:
        self.scoring_schedule.score_every = check_int("score_every", value, min=1)

    @property
    def history_length(self) -> int:
        return history_length(self.order, self.window, self.k, self.eligibility)

    # ---- recording -------------------------------------------------------------------
    def observe(self, per_sample_loss: torch.Tensor, index: torch.Tensor, *, scoring: bool = False) -> None:
        """Record one loss per sample for this epoch (no host sync on CUDA).

        Args:
            per_sample_loss: float ``[B]``; ``[B, num_exits]`` with ``num_exits > 1``,
                reduced by ``exit_reduction`` (``ies_fast/losses/exits.py``).
            index: integer ``[B]``, the samples' dataset indices.
            scoring: marks a forward-only scoring pass (``stats()["scored_total"]``).

        Raises:
            TypeError: ``per_sample_loss`` is not a floating tensor, or ``index`` not an integer tensor.
            ValueError: a shape other than ``[B]`` (``[B, num_exits]``), or an index out
                of ``[0, num_samples)`` (on CUDA: raised by the next :meth:`step`).
        """
        if not isinstance(per_sample_loss, torch.Tensor):
            raise TypeError(f"per_sample_loss must be a torch.Tensor, got {type(per_sample_loss).__name__}")
        per_sample_loss = self._reduce_exits(per_sample_loss)
        if per_sample_loss.dim() != 1:
            raise ValueError(f"per_sample_loss must be 1-D [B], got shape {tuple(per_sample_loss.shape)}")
        if not per_sample_loss.is_floating_point():
            raise TypeError(f"per_sample_loss must be floating point, got {per_sample_loss.dtype}")
        index = self.check_index(index, per_sample_loss.numel())
        if per_sample_loss.numel() == 0:
            return
        self.record(per_sample_loss, index)
        if scoring:
            self.count_scored(index.numel())

    def record(self, per_sample_loss: torch.Tensor, index: torch.Tensor) -> None:
        loss = per_sample_loss.detach()
        if loss.device != self.device:  # .to() costs ~5 µs even when it does nothing
            loss = loss.to(self.device, non_blocking=True)
        ring_ops.record(self.kernel_backend, self.hist, self.count, loss, index)

    def ring(self):
        """The loss ring for a fused kernel's direct write (see :meth:`Selector.ring`).

        Returns:
            The :class:`~ies_fast.selectors.base.Ring` when a direct write equals
            :meth:`record` (this class's own ``record``, one exit); else ``None``.
        """
        if type(self).record is not IES.record or self.num_exits != 1:
            return None
        ring = getattr(self, "_ring", None)
        if ring is None or ring.hist is not self.hist or ring.count is not self.count:
            ring = self._ring = Ring(self.hist, self.count, self.kernel_backend)
        return ring

    def _reduce_exits(self, per_sample_loss: torch.Tensor) -> torch.Tensor:
        if self.num_exits == 1 and per_sample_loss.dim() == 1:
            return per_sample_loss
        return reduce_exits(per_sample_loss, self.num_exits, self.exit_reduction, self.exit_weights)

    def exit_mask(self, index: torch.Tensor) -> torch.Tensor:
        """Which (sample, exit) loss terms to keep; here every exit follows its sample.

        Args:
            index: integer ``[B]``, the samples' dataset indices.

        Returns:
            bool ``[B, num_exits]``, True where the term is kept.

        Raises:
            TypeError: ``index`` is not an integer tensor.
            ValueError: ``index`` is out of range (CPU).
        """
        index = self.check_index(index, index.numel() if isinstance(index, torch.Tensor) else -1)
        kept = ~self.removed_mask().index_select(0, torch.where(index < 0, torch.zeros_like(index), index))
        return (kept | (index < 0)).unsqueeze(1).expand(-1, self.num_exits)

    # ---- epoch end -------------------------------------------------------------------
    def step(self) -> None:
        """Close the epoch: fold in its losses and decide the next epoch's mastered set.

        Under an initialised process group (and ``distributed=True``) the ranks first
        merge what they recorded (one all-reduce of ``num_samples`` fp32 values).

        Raises:
            ValueError: rows were dropped since the last step for an index or target
                out of range (CUDA, where checking them eagerly would sync).
        """
        self._merge_ranks()
        self._report_deferred_errors()
        if self.removal_enabled:
            self.totals[TOTALS.index("backward_saved")] += self.mastered.count_nonzero()
        self.totals[TOTALS.index("sample_epochs")] += self.num_samples
        self.totals[TOTALS.index("scored")] += self._pending_scored[0]
        self._pending_scored.zero_()
        tracked = self.scoring_schedule.policy != "every"
        if tracked:
            observed, was_mastered = self._observed_this_epoch(), self.mastered.clone()
        stats = self._close_epoch()
        if tracked:
            self.scoring_schedule.update(self.epoch, observed, was_mastered, self.mastered)
        if self.replay.numel():
            self.replay.copy_(self.kept_floor.replay_mask(self.mastered, self.epoch + 1))
        self.last.copy_(stats)
        self.totals[TOTALS.index("nonfinite")] += stats[EPOCH_STATS.index("nonfinite")]
        self.totals[TOTALS.index("reincluded")] += stats[EPOCH_STATS.index("reincluded")]
        self.epoch += 1
        self._invalidate()

    def _close_epoch(self) -> torch.Tensor:
        """Fold the epoch into the ring and decide ``mastered``; returns :data:`EPOCH_STATS`."""
        return ring_ops.close_epoch(
            self.kernel_backend, self.hist, self.count, self.mastered,
            self.order, self.window, self.k, self._epoch_threshold(),
        )

    def _ring_rows(self, num_samples: int) -> int:
        """Rows of the loss ring this selector holds."""
        return num_samples

    def _epoch_threshold(self) -> float:
        """The fp32 threshold θ of this epoch's decision: ``δ · window`` (``"absolute"``),
        or ``δ · window · mean loss`` of the samples recorded in the epoch being closed
        (``"relative"``; one host read per epoch; an epoch with no finite loss recorded
        keeps the last scale)."""
        if self.threshold == "absolute":
            return decision_threshold(self.delta, self.window)
        current = self._current_losses()
        finite = (current > NOT_SEEN) & torch.isfinite(current)
        n = int(finite.count_nonzero())
        if n:
            self.loss_scale = float(torch.where(finite, current, torch.zeros_like(current)).sum(dtype=torch.float64)) / n
        return float(np.float32(self.delta * self.window * self.loss_scale))

    def _current_losses(self) -> torch.Tensor:
        """fp32 ``[S]``: the ring slot of the epoch being closed (``NOT_SEEN`` where nothing
        was recorded)."""
        return current_slot(self.hist, self.count)[1]

    def _observed_this_epoch(self) -> torch.Tensor:
        """bool ``[S]``: samples with a loss recorded in the epoch being closed."""
        return self._current_losses() > NOT_SEEN

    def _merge_ranks(self) -> None:
        if not (self.distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        slot, current = current_slot(self.hist, self.count)
        dist.all_reduce(current, op=dist.ReduceOp.MAX)
        self.hist.scatter_(1, slot, current.unsqueeze(1))
        dist.all_reduce(self._pending_scored, op=dist.ReduceOp.SUM)
        # every rank raises together on bad input instead of leaving the others waiting
        dist.all_reduce(self._deferred_errors, op=dist.ReduceOp.SUM)

    # ---- what was recorded ------------------------------------------------------------
    def epoch_losses(self) -> torch.Tensor:
        """This epoch's recorded loss per sample, read from the ring.

        Returns:
            fp32 ``[S]``: the loss recorded for each sample in the epoch not yet closed
            (the largest of its observations), NaN where none (or a non-finite one) was.
        """
        return ring_ops.epoch_report(self.kernel_backend, self.hist, self.count, self.order, self.window,
                                     with_score=False)[0]

    def sample_scores(self) -> torch.Tensor:
        """Each sample's instability score, for reports (whole-tensor work over the ring:
        once per epoch). Call it before :meth:`step`: after it, the ring may no longer
        hold the oldest of the losses.

        Returns:
            fp32 ``[S]``: the mean ``|Δ^order|`` loss over the last ``window`` losses (one
            window, whatever ``k``), this epoch's included; NaN where this epoch recorded
            no finite loss or the history is short.
        """
        return ring_ops.epoch_report(self.kernel_backend, self.hist, self.count, self.order, self.window)[1]

    def state_tensors(self) -> dict:
        names = ("hist", "count", "mastered", "totals", "last", "replay")
        out = {name: getattr(self, name) for name in names}
        if self.scoring_schedule.policy == "backoff":
            out.update(interval=self.scoring_schedule.interval, next_due=self.scoring_schedule.next_due)
        return out

    # ---- the decision ----------------------------------------------------------------
    def mastered_mask(self) -> torch.Tensor:
        """The samples mastered at the last :meth:`step`.

        Returns:
            bool ``[num_samples]`` on the selector's device; these leave the next
            epoch's backward pass while removal is enabled (less any replayed by ``min_kept``).
        """
        return self.mastered

    def removed_mask(self) -> torch.Tensor:
        if not self.removal_enabled:
            return torch.zeros_like(self.mastered)
        return self.mastered & ~self.replay if self.replay.numel() else self.mastered

    def needs_scoring(self) -> bool:
        """Whether this epoch's scoring pass over mastered samples should run.

        Returns:
            ``"every"``: ``True`` every ``score_every`` epochs; ``"backoff"``: every
            epoch (over the samples due); ``False`` while removal is off.
        """
        return self.removal_enabled and self.scoring_schedule.needs_scoring(self.epoch)

    def scoring_mask(self) -> torch.Tensor:
        """The removed samples the scoring schedule forwards this epoch.

        Returns:
            bool ``[num_samples]``.
        """
        return self.scoring_schedule.due_mask(self.epoch, self.removed_mask())

    # ---- reporting -------------------------------------------------------------------
    def _own_stats(self, totals: dict) -> dict:
        last = dict(zip(EPOCH_STATS, self.last.tolist()))
        return {
            "mastered": last["mastered"],
            "reincluded": last["reincluded"],
            "replayed": int(self.replay.count_nonzero()) if self.removal_enabled else 0,
            "newly_mastered": last["newly_mastered"],
            "observed": last["observed"],
            "eligible": last["eligible"],
            "nonfinite": last["nonfinite"],
            "nonfinite_total": totals["nonfinite"],
            "reincluded_total": totals["reincluded"],
        }

    # ---- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **self._state_header(),
            "order": self.order,
            "window": self.window,
            "k": self.k,
            "eligibility": self.eligibility,
            "delta": self.delta,
            "threshold": self.threshold,
            "score_every": self.score_every,
            "epoch": self.epoch,
            "removal_enabled": self.removal_enabled,
            "hist": self.hist.clone(),
            "count": self.count.clone(),
            "mastered": self.mastered.clone(),
            "totals": self.totals.clone(),
            "last": self.last.clone(),
            "replay": self.replay.clone(),
            "scoring_schedule": self.scoring_schedule.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`, checked whole before any of it is applied.

        ``delta`` and ``score_every`` come from the state (they override the
        constructor's), as do ``epoch`` and ``removal_enabled``.

        Args:
            state: a dict from :meth:`IES.state_dict`.

        Raises:
            ValueError: ``num_samples``, ``order``, ``window``, ``k`` or ``eligibility``
                differ from this selector's, or any key is missing or bad; the message
                names the key and nothing is changed.
        """
        super().load_state_dict(state)

    def check_state(self, state, where: str = "state_dict") -> dict:
        """Validate ``state`` whole, changing nothing (the base's fields, then IES's own).

        Args:
            state: a dict from :meth:`IES.state_dict`.
            where: the state's name in messages.

        Returns:
            What :meth:`apply_state` applies.

        Raises:
            ValueError: ``order``, ``window``, ``k`` or ``eligibility`` differ from this
                selector's; a bad ``delta``, ``score_every``, ring, mask or schedule; a
                mastered sample without a full history. The message names the key.
        """
        values = super().check_state(state, where)
        for name in ("order", "window"):
            check.matches(state, name, getattr(self, name), where)
        check.matches(state, "k", self.k, where, default=1)  # states from before k and eligibility
        check.matches(state, "eligibility", self.eligibility, where, default="paper")
        check.matches(state, "threshold", self.threshold, where, default="absolute")  # states from before it
        S, L = self.num_samples, self.history_length
        delta = check.number(state, "delta", where=where)
        try:
            decision_threshold(delta, self.window)
        except ValueError as exc:
            raise ValueError(f"{where}['delta']: {exc}") from None
        values.update({
            "delta": delta,
            "score_every": check.integer(state, "score_every", low=1, where=where,
                                         high=self.scoring_schedule.max_interval  # backoff: the first interval
                                         if self.scoring_schedule.policy == "backoff" else check.MAX_EPOCH),
            # +inf / -inf are the ring's sentinels (NONFINITE / NOT_SEEN); NaN is never stored
            "hist": check.tensor(state, "hist", (S, L), torch.float32, where, no_nan=True),
            "count": check.tensor(state, "count", (S,), torch.uint8, where, high=2 * L - 1),
            "mastered": check.tensor(state, "mastered", (S,), torch.bool, where),
            "last": check.tensor(state, "last", (len(EPOCH_STATS),), torch.int64, where, low=0),
            # states from before the collapse guard have no replay mask
            "replay": (check.tensor(state, "replay", tuple(self.replay.shape), torch.bool, where) if "replay" in state
                       else torch.zeros_like(self.replay)),
            "scoring_schedule": self.scoring_schedule.check_state(state.get("scoring_schedule", {"policy": "every"})),
        })
        self._check_relations(values, where)
        return values

    def _check_relations(self, values: dict, where: str) -> None:
        """What relates the fields: only a sample with a full history (``count >= L``)
        can be mastered, only a mastered one replayed; the totals agree with the
        epoch (:meth:`Selector.check_state`); the last epoch's counts are of at most
        ``num_samples`` samples."""
        early = values["mastered"] & (values["count"] < self.history_length)
        if bool(early.any()):
            raise ValueError(f"{where}['mastered'] marks {int(early.sum())} samples with fewer than "
                             f"{self.history_length} recorded losses ('count') as mastered")
        if values["replay"].numel() and bool((values["replay"] & ~values["mastered"]).any()):
            raise ValueError(f"{where}['replay'] marks samples that are not mastered")
        check.at_most(values["last"], EPOCH_STATS, self.num_samples, where, "last")

    def apply_state(self, values: dict) -> None:
        for name in ("hist", "count", "mastered", "last", "replay"):
            getattr(self, name).copy_(values[name].to(self.device))
        self.scoring_schedule.apply_state(values["scoring_schedule"])
        self.delta, self.score_every = values["delta"], values["score_every"]
        super().apply_state(values)

    def to(self, device) -> "IES":
        """Move the per-sample state (and the scoring schedule's) to ``device``.

        Args:
            device: the target device.

        Returns:
            ``self``.
        """
        super().to(device)
        self.scoring_schedule.to(self.device)
        return self

    def __repr__(self) -> str:
        return (
            f"IES(num_samples={self.num_samples}, delta={self.delta}, order={self.order}, "
            f"window={self.window}, k={self.k}, eligibility={self.eligibility!r}, threshold={self.threshold!r}, "
            f"device={self.device}, "
            f"backend={self.backend!r})"
        )
