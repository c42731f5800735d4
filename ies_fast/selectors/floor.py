"""The collapse guard: a floor under the number of samples trained each epoch.

Without it, a large δ can master nearly every sample; the epoch then trains a few
dozen of the hardest samples (one small batch, whose mean weighs each of them up
to ``batch_size`` times more than a full batch would) at an unchanged learning
rate, while the mastered samples go unseen. The model drifts away from them; an
order-2 test does not notice a loss that rises steadily (its second difference is
~0), and when the drift bends, hundreds of samples come back at once with large
losses (MNIST-1D, δ=1e-2: kept 11 -> 2,500 in six epochs, test accuracy 94.6% ->
83%).

:class:`KeptFloor` trains at least ``min_kept`` samples every epoch: when fewer
samples are not mastered, mastered samples drawn uniformly at random (a fresh
seeded draw each epoch, identical on every DDP rank) are *replayed* — trained
with the kept ones — until ``min_kept`` is reached. The mastered decision itself
is unchanged (a replayed sample stays mastered unless its fresh loss says
otherwise); only which mastered samples leave the backward pass changes. Built
on device without a host sync (one sort of ``num_samples`` random keys per epoch,
only while the floor is on).
"""
from __future__ import annotations

import math

import torch

from ..checks import check_int


def kept_count(min_kept, num_samples: int) -> int:
    """``min_kept`` as a sample count: an int is a count in ``[0, num_samples]``, a float
    a fraction of the data set in ``[0, 1]`` (rounded up), as ``--min-kept`` takes it."""
    if isinstance(min_kept, float) and math.isfinite(min_kept) and 0.0 <= min_kept <= 1.0:
        return math.ceil(min_kept * num_samples)
    what = f"an int count in [0, num_samples={num_samples}] or a float fraction in [0, 1]"
    if isinstance(min_kept, bool) or not isinstance(min_kept, (int, float)):
        raise TypeError(f"min_kept must be {what}, got {min_kept!r}")
    if not isinstance(min_kept, int) or not 0 <= min_kept <= num_samples:
        raise ValueError(f"min_kept must be {what}, got {min_kept!r}")
    return min_kept


class KeptFloor:
    """Chooses the mastered samples to replay so that at least ``min_kept`` are trained."""

    def __init__(self, num_samples: int, min_kept=0, *, seed: int = 0):
        self.num_samples = num_samples
        self.min_kept = kept_count(min_kept, num_samples)
        self.seed = check_int("seed", seed)

    def replay_mask(self, mastered: torch.Tensor, epoch: int) -> torch.Tensor:
        """bool ``[S]``: mastered samples to train in epoch ``epoch`` (``min_kept`` minus
        the not-mastered count of them, chosen at random; none when that is <= 0)."""
        if self.min_kept == 0:
            return torch.zeros_like(mastered)
        S = self.num_samples
        shortfall = self.min_kept - (~mastered).sum()  # device scalar: no sync
        g = torch.Generator(device=mastered.device).manual_seed(self.seed * 1_000_003 + epoch)
        keys = torch.rand(S, generator=g, device=mastered.device)
        keys = torch.where(mastered, keys, torch.full_like(keys, 2.0))  # mastered first, in random order
        rank = torch.empty(S, dtype=torch.int64, device=mastered.device)
        rank[torch.argsort(keys)] = torch.arange(S, device=mastered.device)
        return mastered & (rank < shortfall)
