"""The collapse guard: a floor under the number of samples trained each epoch.

Without it, a large δ can master nearly every sample; the epoch then trains a few
dozen of the hardest samples (one small batch, whose mean weighs each of them up
to ``batch_size`` times more than a full batch would) at an unchanged learning
rate, while the mastered samples go unseen. The model drifts away from them; an
order-2 test does not notice a loss that rises steadily (its second difference is
~0), and when the drift bends, hundreds of samples come back at once with large
losses and test accuracy drops (measured on MNIST-1D: docs/results.md, "Cheaper
scoring and the collapse guard").

:class:`KeptFloor` trains at least ``min_kept`` samples every epoch: when fewer
samples are not mastered, mastered samples drawn uniformly at random (a fresh
seeded draw each epoch, identical on every DDP rank) are *replayed* — trained
with the kept ones — until ``min_kept`` is reached. The mastered decision itself
is unchanged (a replayed sample stays mastered unless its fresh loss says
otherwise); only which mastered samples leave the backward pass changes. Built
on device without a host sync on a GPU (a partial selection of ``min_kept`` keys
per epoch while the floor is on); on CPU only when something needs replaying.
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
        the not-mastered count of them, chosen at random; none when that is <= 0).

        The choice: one seeded uniform key per sample; the mastered samples with the
        smallest ``(key, index)`` are replayed. Only the ``k`` smallest are found
        (``topk``), ``k`` the shortfall (read on CPU, where it costs nothing) or
        ``min_kept`` (its bound, on a GPU: no host read); on CPU, nothing is drawn
        when nothing needs replaying."""
        if self.min_kept == 0:
            return torch.zeros_like(mastered)
        dev = mastered.device
        shortfall = self.min_kept - (self.num_samples - torch.count_nonzero(mastered))  # device scalar, no [S] copy
        if dev.type == "cpu":
            k = int(shortfall)
            if k <= 0:
                return torch.zeros_like(mastered)
        else:
            k = self.min_kept  # shortfall <= min_kept: enough candidates, no sync
        return self._first_mastered(mastered, shortfall, k, epoch)

    def _first_mastered(self, mastered: torch.Tensor, shortfall: torch.Tensor, k: int, epoch: int) -> torch.Tensor:
        """The ``shortfall`` mastered samples first in this epoch's random order, found
        among the ``k >= shortfall`` first of all samples."""
        S, dev = self.num_samples, mastered.device
        g = torch.Generator(device=dev).manual_seed(self.seed * 1_000_003 + epoch)
        keys = torch.rand(S, generator=g, device=dev)
        # exact (key, index) order in one int64: a key in [0, 1) orders as its fp32 bits;
        # not mastered -> the bits of 2.0, after every mastered sample
        bits = torch.where(mastered, keys, torch.full_like(keys, 2.0)).view(torch.int32).long()
        order = (bits << 32) | torch.arange(S, device=dev)
        first = torch.topk(order, k, largest=False, sorted=True).values & 0xFFFFFFFF
        chosen = torch.arange(k, device=dev) < shortfall
        return torch.zeros_like(mastered).scatter_(0, first, chosen) & mastered
