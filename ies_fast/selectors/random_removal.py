"""Random removal: the control for any sample-selection method. Each epoch a fresh,
uniformly random set of exactly ``round(ratio * num_samples)`` samples is left out
(no reweighting). If IES or InfoBatch cannot beat this at the same saved
fraction, their choice of samples adds nothing."""
from __future__ import annotations

import torch

from .. import checks as check
from ..checks import check_fraction, check_int
from .base import Selector

TOTALS = ("backward_saved", "sample_epochs", "scored")


class RandomRemoval(Selector):
    """Leave out ``round(ratio * num_samples)`` random samples every epoch, epoch 0
    included (Python's ``round``: halves go to the even count). The draw is a seeded
    ``torch.randperm`` on the selector's device; the generator state is part of
    :meth:`state_dict`, so a resumed run draws the same sets.

    Args:
        num_samples: the training set's size.
        ratio: the fraction left out each epoch, in ``[0, 1]``.
        device: where the state lives (default CPU).
        seed: seeds the draw, an int ``>= 0``.
        backend: ``"auto"``, ``"torch"``, ``"native"`` or ``"triton"``.

    Raises:
        TypeError: a non-number ``ratio``, or ``seed`` not an int.
        ValueError: ``ratio`` outside ``[0, 1]``, ``seed < 0``, an unknown ``backend`` or ``device="meta"``.
        RuntimeError: ``backend="native"`` or ``"triton"`` is not available on ``device``.
    """

    KIND, VERSION, TOTALS = "RandomRemoval", 1, TOTALS

    def __init__(self, num_samples: int, ratio: float, device=None, seed: int = 0, *, backend: str = "auto"):
        super().__init__(num_samples, device, backend)
        self.ratio = check_fraction("ratio", ratio)
        self.seed = check_int("seed", seed, min=0)
        self.num_removed = round(self.ratio * self.num_samples)
        self.removed = torch.zeros(self.num_samples, dtype=torch.bool, device=self.device)
        self.totals = torch.zeros(len(TOTALS), dtype=torch.int64, device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self._draw()

    def _draw(self) -> None:
        perm = torch.randperm(self.num_samples, generator=self.generator, device=self.device)
        self.removed.zero_()
        self.removed[perm[: self.num_removed]] = True
        self._invalidate()

    def observe(self, per_sample_loss: torch.Tensor, index: torch.Tensor, *, scoring: bool = False) -> None:
        """Check the inputs like every selector's; the losses themselves are not used.

        Args:
            per_sample_loss: ``[B]`` tensor.
            index: integer ``[B]``, the samples' dataset indices.
            scoring: marks a forward-only scoring pass (counted).

        Raises:
            TypeError: ``per_sample_loss`` is not a tensor, or ``index`` not an integer tensor.
            ValueError: a shape other than ``[B]``, or an index out of range.
        """
        if not isinstance(per_sample_loss, torch.Tensor):
            raise TypeError(f"per_sample_loss must be a torch.Tensor, got {type(per_sample_loss).__name__}")
        if per_sample_loss.dim() != 1:
            raise ValueError(f"per_sample_loss must be 1-D [B], got shape {tuple(per_sample_loss.shape)}")
        index = self.check_index(index, per_sample_loss.numel())
        if scoring:
            self.count_scored(index.numel())

    def record(self, per_sample_loss: torch.Tensor, index: torch.Tensor) -> None:
        """Already-checked losses (the hook :func:`ies_fast.cross_entropy` uses): ignored.

        Args:
            per_sample_loss: float ``[B]``.
            index: int64 ``[B]`` on the selector's device.
        """

    def step(self) -> None:
        """Close the epoch and draw the next epoch's removed set."""
        self._report_deferred_errors()
        self.totals[TOTALS.index("backward_saved")] += self.removed_mask().count_nonzero()
        self.totals[TOTALS.index("sample_epochs")] += self.num_samples
        self.totals[TOTALS.index("scored")] += self._pending_scored[0]
        self._pending_scored.zero_()
        self.epoch += 1
        self._draw()

    def state_tensors(self) -> dict:
        return {"removed": self.removed, "totals": self.totals, "rng": self.generator.get_state()}

    def removed_mask(self) -> torch.Tensor:
        if not self.removal_enabled:
            return torch.zeros_like(self.removed)
        return self.removed

    def state_dict(self) -> dict:
        return {
            **self._state_header(),
            "ratio": self.ratio,
            "seed": self.seed,
            "epoch": self.epoch,
            "removal_enabled": self.removal_enabled,
            "removed": self.removed.clone(),
            "totals": self.totals.clone(),
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`, checked whole before any of it is applied.

        ``seed`` and the generator's state come from the state.

        Args:
            state: a dict from :meth:`RandomRemoval.state_dict`.

        Raises:
            ValueError: ``num_samples`` or ``ratio`` differ from this object's, or any key
                is missing or bad; the message names the key and nothing is changed.
        """
        super().load_state_dict(state)

    def check_state(self, state, where: str = "state_dict") -> dict:
        values = super().check_state(state, where)
        check.matches(state, "ratio", self.ratio, where)
        removed = check.tensor(state, "removed", (self.num_samples,), torch.bool, where)
        if int(removed.count_nonzero()) != self.num_removed:
            raise ValueError(f"{where}['removed'] must mark exactly {self.num_removed} samples")
        return {**values, "removed": removed, "rng": check.generator_state(state, "rng", self.device, where),
                "seed": check.integer(state, "seed", high=2**64 - 1, where=where)}

    def apply_state(self, values: dict) -> None:
        self.removed.copy_(values["removed"].to(self.device))
        self.generator.set_state(values["rng"])
        self.seed = values["seed"]
        super().apply_state(values)

    def __repr__(self) -> str:
        return f"RandomRemoval(num_samples={self.num_samples}, ratio={self.ratio}, device={self.device}, seed={self.seed})"
