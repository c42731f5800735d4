"""InfoBatch (Qin et al., ICLR 2024) as an :class:`ies_fast.Selector`, for comparisons.

The definition follows the authors' code (NUS-HPC-AI-Lab/InfoBatch, ``infobatch.py``):

* each sample's score is its last observed training loss (3.0 before the first one);
* before each epoch, the *well-learned* samples are those whose score is strictly
  below the mean score; ``floor((1 - prune_ratio) * n_well_learned)`` of them,
  chosen uniformly at random without replacement, are kept with loss weight
  ``1 / (1 - prune_ratio)``, the other well-learned samples are pruned; all other
  samples are kept with weight 1;
* pruning runs for epoch ``e`` (0-based) while ``e + 1 <= delta * num_epochs``;
  later epochs use the full data with weights 1 (annealing).

Everything lives on the selector's device; the random choice is a seeded
``torch.randperm`` on that device followed by an integer running count, so sample
indices never pass through a float tensor. Deviations from the original code are
listed in ``docs/comparison.md``.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .. import checks as check
from ..checks import check_fraction, check_int
from .base import Selector

#: the original's initial score (``torch.ones(N) * 3``): every sample ties, so epoch 0 prunes nothing
INITIAL_SCORE = 3.0
#: running totals kept on device
TOTALS = ("backward_saved", "sample_epochs", "nonfinite", "scored")
#: what the last ``step()`` decided, kept on device
LAST = ("well_learned", "pruned")


class InfoBatch(Selector):
    """InfoBatch: prune a random ``prune_ratio`` of the below-mean-loss samples each
    epoch and up-weight the kept ones by ``1 / (1 - prune_ratio)``; the last
    ``(1 - delta)`` of the ``num_epochs`` epochs use the full data.

    Use it like :class:`ies_fast.IES`: ``observe(per_sample_loss, index)`` during the
    epoch (unweighted losses), ``step()`` at its end, ``kept_indices()`` for the
    loader, and multiply each row's loss by ``loss_weights(index)`` before taking the
    batch mean (as the original's ``values.mul_(weights).mean()``).

    Args:
        num_samples: the training set's size.
        num_epochs: the planned number of epochs, an int ``>= 1``.
        prune_ratio: the fraction of well-learned samples pruned, in ``[0, 0.9]``.
        delta: the fraction of ``num_epochs`` that prunes, in ``[0, 1]`` (the rest anneals).
        device: where the per-sample state lives (default CPU).
        seed: seeds the pruning draw, an int ``>= 0``.
        backend: ``"auto"``, ``"torch"``, ``"native"`` or ``"triton"``.
        distributed: merge the ranks' scores at :meth:`step` under an initialised process group.

    Raises:
        TypeError: an int argument given as a float or bool, or a non-number fraction.
        ValueError: a value out of the ranges above, an unknown ``backend`` or ``device="meta"``.
        RuntimeError: ``backend="native"`` or ``"triton"`` is not available on ``device``.
    """

    KIND, VERSION, TOTALS = "InfoBatch", 1, TOTALS
    REWEIGHTS = True

    def __init__(
        self,
        num_samples: int,
        num_epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        device=None,
        seed: int = 0,
        *,
        backend: str = "auto",
        distributed: bool = True,
    ):
        super().__init__(num_samples, device, backend)
        self.num_epochs = check_int("num_epochs", num_epochs, min=1)
        # the original clamps keep_ratio to [0.1, 1] silently; we refuse instead
        self.prune_ratio = check_fraction("prune_ratio", prune_ratio, 0.0, 0.9)
        self.delta = check_fraction("delta", delta)
        self.keep_ratio = 1.0 - self.prune_ratio
        self.seed = check_int("seed", seed, min=0)
        self.distributed = distributed
        N = num_samples
        # slot N is a sink for rows that must not be recorded (bad index on CUDA)
        self.scores = torch.full((N + 1,), INITIAL_SCORE, dtype=torch.float32, device=self.device)
        self._fresh = torch.full((N + 1,), -math.inf, dtype=torch.float32, device=self.device)
        self.pruned = torch.zeros(N, dtype=torch.bool, device=self.device)
        self.weights = torch.ones(N + 1, dtype=torch.float32, device=self.device)
        self.totals = torch.zeros(len(TOTALS), dtype=torch.int64, device=self.device)
        self.last = torch.zeros(len(LAST), dtype=torch.int64, device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)

    # ---- the schedule ----------------------------------------------------------------
    @property
    def stop_prune(self) -> float:
        """``delta * num_epochs``: epoch ``e`` (0-based) prunes while ``e + 1 <= stop_prune``."""
        return self.num_epochs * self.delta

    def prunes_epoch(self, epoch: int) -> bool:
        """Whether an epoch prunes (the original's ``IBSampler.reset``).

        Args:
            epoch: 0-based epoch number.

        Returns:
            ``epoch + 1 <= stop_prune``.
        """
        return epoch + 1 <= self.stop_prune

    # ---- recording -------------------------------------------------------------------
    def observe(self, per_sample_loss: torch.Tensor, index: torch.Tensor, *, scoring: bool = False) -> None:
        """Record each sample's (unweighted) loss as its score (no host sync on CUDA).

        Several observations of one sample in an epoch keep the largest; a non-finite
        loss is ignored (the previous score stays) and counted.

        Args:
            per_sample_loss: float ``[B]``, unweighted.
            index: integer ``[B]``, the samples' dataset indices.
            scoring: marks a forward-only scoring pass.

        Raises:
            TypeError: a non-floating ``per_sample_loss`` or a non-integer ``index``.
            ValueError: a shape other than ``[B]``, or an index out of range (CUDA: at the next :meth:`step`).
        """
        if not isinstance(per_sample_loss, torch.Tensor):
            raise TypeError(f"per_sample_loss must be a torch.Tensor, got {type(per_sample_loss).__name__}")
        if per_sample_loss.dim() != 1:
            raise ValueError(f"per_sample_loss must be 1-D [B], got shape {tuple(per_sample_loss.shape)}")
        if not per_sample_loss.is_floating_point():
            raise TypeError(f"per_sample_loss must be floating point, got {per_sample_loss.dtype}")
        index = self.check_index(index, per_sample_loss.numel())
        self.record(per_sample_loss, index)
        if scoring:
            self.count_scored(index.numel())

    def record(self, per_sample_loss: torch.Tensor, index: torch.Tensor) -> None:
        """Record already-checked losses (the hook :func:`ies_fast.cross_entropy` uses).

        Args:
            per_sample_loss: float ``[B]``, unweighted.
            index: int64 ``[B]`` on the selector's device; rows with ``index < 0`` are skipped.
        """
        if per_sample_loss.numel() == 0:
            return
        loss = per_sample_loss.detach().to(self.device, torch.float32, non_blocking=True)
        finite = torch.isfinite(loss)
        self.totals[TOTALS.index("nonfinite")] += (~finite).count_nonzero()
        slot = torch.where((index < 0) | ~finite, torch.full_like(index, self.num_samples), index)
        self._fresh.scatter_reduce_(0, slot, torch.where(finite, loss, torch.full_like(loss, -math.inf)), "amax")

    # ---- epoch end -------------------------------------------------------------------
    def step(self) -> None:
        """Close the epoch: fold its losses into the scores and draw the next epoch's
        pruned set and weights (or the full data once pruning has stopped)."""
        self._report_deferred_errors()
        self._merge_ranks()
        N = self.num_samples
        self.totals[TOTALS.index("backward_saved")] += self.removed_mask().count_nonzero()
        self.totals[TOTALS.index("sample_epochs")] += N
        self.totals[TOTALS.index("scored")] += self._pending_scored[0]
        self._pending_scored.zero_()
        seen = self._fresh > -math.inf
        self.scores.copy_(torch.where(seen, self._fresh, self.scores))
        self._fresh.fill_(-math.inf)
        self.scores[N] = INITIAL_SCORE
        self.epoch += 1
        if self.prunes_epoch(self.epoch):
            self._prune()
        else:
            self.pruned.zero_()
            self.weights.fill_(1.0)
            self.last.zero_()
        self._invalidate()

    def _prune(self) -> None:
        N = self.num_samples
        scores = self.scores[:N]
        well_learned = scores < scores.mean()
        n_well = well_learned.count_nonzero()
        # int(keep_ratio * n) of the original, computed on device in float64 (exact for counts)
        n_keep = torch.floor(n_well.to(torch.float64) * self.keep_ratio).to(torch.int64)
        perm = torch.randperm(N, generator=self.generator, device=self.device)
        in_perm = well_learned.index_select(0, perm)
        rank = torch.cumsum(in_perm.to(torch.int64), 0)  # 1-based rank among well-learned, in perm order
        chosen_in_perm = in_perm & (rank <= n_keep)
        chosen = torch.zeros_like(well_learned).scatter_(0, perm, chosen_in_perm)
        self.pruned.copy_(well_learned & ~chosen)
        self.weights.fill_(1.0)
        self.weights[:N].masked_fill_(chosen, 1.0 / self.keep_ratio)
        self.last[LAST.index("well_learned")] = n_well
        self.last[LAST.index("pruned")] = n_well - n_keep

    def _merge_ranks(self) -> None:
        """Under DDP every rank must prune the same samples: merge the epoch's fresh
        scores (max) so all ranks hold the same scores; the generators share a seed."""
        if not (self.distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        dist.all_reduce(self._fresh, op=dist.ReduceOp.MAX)
        dist.all_reduce(self._pending_scored, op=dist.ReduceOp.SUM)

    # ---- what was recorded ------------------------------------------------------------
    def epoch_losses(self) -> torch.Tensor:
        """This epoch's recorded loss per sample.

        Returns:
            fp32 ``[num_samples]``: the largest finite loss recorded for each sample since
            the last step(), NaN where none was.
        """
        fresh = self._fresh[: self.num_samples]
        return torch.where(fresh > -math.inf, fresh, torch.full_like(fresh, math.nan))

    def sample_scores(self) -> torch.Tensor:
        """Each sample's InfoBatch score.

        Returns:
            fp32 ``[num_samples]``: its last observed loss (this epoch's where one was
            recorded; 3.0 before any).
        """
        fresh, scores = self._fresh[: self.num_samples], self.scores[: self.num_samples]
        return torch.where(fresh > -math.inf, fresh, scores)

    def state_tensors(self) -> dict:
        live = {"scores": self.scores, "fresh": self._fresh, "pruned": self.pruned, "weights": self.weights,
                "totals": self.totals, "last": self.last}
        return {**live, "rng": self.generator.get_state()}

    # ---- the decision ----------------------------------------------------------------
    def removed_mask(self) -> torch.Tensor:
        if not self.removal_enabled:
            return torch.zeros_like(self.pruned)
        return self.pruned

    def well_learned_mask(self) -> torch.Tensor:
        """The samples whose current score is below the mean score.

        Returns:
            bool ``[num_samples]``.
        """
        scores = self.scores[: self.num_samples]
        return scores < scores.mean()

    def loss_weights(self, index: torch.Tensor) -> torch.Tensor:
        """The rows' loss weights: multiply the per-sample losses by them before the batch mean.

        Args:
            index: integer ``[B]``, the samples' dataset indices.

        Returns:
            float32 ``[B]`` on the selector's device: ``1 / (1 - prune_ratio)`` for kept
            well-learned samples in a pruning epoch, 1 otherwise (and while removal is off).

        Raises:
            TypeError: ``index`` holds floats or bools.
            ValueError: ``index`` is not a 1-D tensor, or out of range (CPU).
        """
        if not isinstance(index, torch.Tensor) or index.dim() != 1:
            raise ValueError("index must be a 1-D tensor of sample indices")
        if index.is_floating_point() or index.dtype == torch.bool:
            raise TypeError(f"index must hold integers (int64 preferred), got dtype {index.dtype}")
        index = index.to(self.device, torch.int64, non_blocking=True)
        if not self.removal_enabled:
            return torch.ones(index.shape, dtype=torch.float32, device=self.device)
        bad = (index < 0) | (index >= self.num_samples)
        if index.device.type == "cpu" and bool(bad.any()):
            raise ValueError(f"index out of range [0, {self.num_samples}): got {int(index[bad][0])}")
        return self.weights.index_select(0, torch.where(bad, torch.full_like(index, self.num_samples), index))

    # ---- reporting -------------------------------------------------------------------
    def _own_stats(self, totals: dict) -> dict:
        last = dict(zip(LAST, self.last.tolist()))
        return {
            "well_learned": last["well_learned"],
            "pruned": last["pruned"],
            "pruning": self.prunes_epoch(self.epoch) and self.removal_enabled,
            "mean_score": float(self.scores[: self.num_samples].mean()),
            "nonfinite_total": totals["nonfinite"],
        }

    # ---- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **self._state_header(),
            "num_epochs": self.num_epochs,
            "prune_ratio": self.prune_ratio,
            "delta": self.delta,
            "seed": self.seed,
            "epoch": self.epoch,
            "removal_enabled": self.removal_enabled,
            "scores": self.scores.clone(),
            "fresh": self._fresh.clone(),
            "pruned": self.pruned.clone(),
            "weights": self.weights.clone(),
            "totals": self.totals.clone(),
            "last": self.last.clone(),
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`, checked whole before any of it is applied.

        ``seed`` and the generator's state come from the state.

        Args:
            state: a dict from :meth:`InfoBatch.state_dict`.

        Raises:
            ValueError: ``num_samples``, ``num_epochs``, ``prune_ratio`` or ``delta``
                differ from this object's, or any key is missing or bad; the message
                names the key and nothing is changed.
        """
        super().load_state_dict(state)

    def check_state(self, state, where: str = "state_dict") -> dict:
        values = super().check_state(state, where)
        for name in ("num_epochs", "prune_ratio", "delta"):
            check.matches(state, name, getattr(self, name), where)
        N = self.num_samples
        tensors = {
            # scores: the initial 3.0 or observed (finite) losses; fresh: -inf until observed
            "scores": check.tensor(state, "scores", (N + 1,), torch.float32, where, finite=True),
            "_fresh": check.tensor(state, "fresh", (N + 1,), torch.float32, where, no_nan=True),
            "pruned": check.tensor(state, "pruned", (N,), torch.bool, where),
            "weights": check.tensor(state, "weights", (N + 1,), torch.float32, where, finite=True, low=0.0),
            "last": check.tensor(state, "last", (len(LAST),), torch.int64, where, low=0),
        }
        if bool((tensors["_fresh"] == math.inf).any()):
            raise ValueError(f"{where}['fresh'] holds +inf (non-finite losses are never recorded)")
        check.at_most(tensors["last"], LAST, N, where, "last")
        return {**values, "tensors": tensors, "rng": check.generator_state(state, "rng", self.device, where),
                "seed": check.integer(state, "seed", high=2**64 - 1, where=where)}

    def apply_state(self, values: dict) -> None:
        for name, t in values["tensors"].items():
            getattr(self, name).copy_(t.to(self.device))
        self.generator.set_state(values["rng"])
        self.seed = values["seed"]
        super().apply_state(values)

    def __repr__(self) -> str:
        return (
            f"InfoBatch(num_samples={self.num_samples}, num_epochs={self.num_epochs}, "
            f"prune_ratio={self.prune_ratio}, delta={self.delta}, device={self.device}, seed={self.seed})"
        )
