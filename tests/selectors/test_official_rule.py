"""IES(eligibility="official", k=...) reproduces the exclusion rule of the official
code (tmllab/2025_ICLR_IES cifar_main.py) epoch by epoch, warm-up included, on
every backend. ``OfficialRule`` below is written from that code's description, in
its own bookkeeping (a loss list and a derivative history per sample), not from
ies_fast's ring: after every epoch, once a sample has ``order + 1`` losses, the
difference of its last ``order + 1`` losses is appended to its derivative history,
which keeps the last ``moving_average_rate + k`` entries; a sample with all of
them is excluded when the sum of the last ``k`` moving averages (window
``moving_average_rate``) of ``|derivative|`` is below the threshold. Its
arithmetic is the documented fp32 one (docs/semantics.md): the mean's division
moved to the threshold, sums left to right."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ies_fast import IES, PerExitIES
from ies_fast.backend import native_usable

BACKENDS = ["torch", "triton"] + (["native"] if native_usable(torch.device("cpu")) else [])


class OfficialRule:
    """cifar_main.py's bookkeeping, one sample at a time (every sample observed every epoch)."""

    def __init__(self, num_samples: int, threshold: float, order: int, moving_average_rate: int, k: int):
        self.threshold = np.float32(threshold * moving_average_rate)  # mean < t  <=>  sum < t * rate
        self.order, self.rate, self.k = order, moving_average_rate, k
        self.losses = [[] for _ in range(num_samples)]
        self.derivatives = [[] for _ in range(num_samples)]

    def derivative(self, losses: list) -> np.float32:
        d = [np.float32(v) for v in losses[-(self.order + 1):]]
        while len(d) > 1:
            d = [d[i + 1] - d[i] for i in range(len(d) - 1)]
        return d[0]

    def end_epoch(self, epoch_losses: list) -> set:
        excluded = set()
        for idx, loss in enumerate(epoch_losses):
            self.losses[idx].append(loss)
            if len(self.losses[idx]) >= self.order + 1:
                self.derivatives[idx].append(self.derivative(self.losses[idx]))
                self.derivatives[idx] = self.derivatives[idx][-(self.rate + self.k):]
            history = self.derivatives[idx]
            if len(history) >= self.rate + self.k:
                sums = []  # one per moving-average position; the last k are used
                for start in range(len(history) - self.rate + 1):
                    s = np.float32(0.0)
                    for v in history[start : start + self.rate]:
                        s = np.float32(s + abs(v))
                    sums.append(s)
                total = np.float32(0.0)
                for s in sums[-self.k:]:
                    total = np.float32(total + s)
                if total < self.threshold:
                    excluded.add(idx)
        return excluded


def loss_streams(num_samples: int, epochs: int, rng: np.random.Generator) -> np.ndarray:
    """``[epochs, S]`` fp32 losses: decaying curves with per-sample noise levels
    spanning the threshold, a quarter flat from the start, some samples starting
    to move again half way."""
    t = np.arange(epochs)[:, None]
    start = rng.random(num_samples) * 2 + 0.2
    rate = rng.random(num_samples) * 0.5 + 0.2
    noise = 10 ** rng.uniform(-5, -1, num_samples)
    losses = start * np.exp(-rate * t) + noise * rng.standard_normal((epochs, num_samples))
    flat = rng.random(num_samples) < 0.25  # settled from the start: excluded right after warm-up
    losses[:, flat] = start[flat] + 1e-6 * rng.standard_normal((epochs, int(flat.sum())))
    wake = rng.random(num_samples) < 0.2
    losses[epochs // 2 :, wake] += rng.random((epochs - epochs // 2, int(wake.sum()))) * 0.5
    return losses.astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("order,window,k", [(2, 3, 1), (2, 3, 2), (1, 2, 3), (3, 1, 1), (2, 5, 4)])
def test_official_eligibility_reproduces_cifar_main(backend, order, window, k):
    S, epochs, threshold = 64, 22, 5e-3
    rng = np.random.default_rng(100 * order + 10 * window + k)
    streams = loss_streams(S, epochs, rng)
    official = OfficialRule(S, threshold, order, window, k)
    sel = IES(S, delta=threshold, order=order, window=window, k=k, eligibility="official", backend=backend)
    first = None
    for epoch, losses in enumerate(streams):
        perm = torch.from_numpy(rng.permutation(S))
        for part in perm.split(9):  # shuffled batches
            sel.observe(torch.from_numpy(losses)[part], part)
        sel.step()
        want = official.end_epoch(losses.tolist())
        got = set(torch.nonzero(sel.mastered_mask()).flatten().tolist())
        assert got == want, f"epoch {epoch}"
        if want and first is None:
            first = epoch
    assert first == order + window + k - 1, "the first exclusion comes at the official warm-up's end"
    assert 0 < len(want) < S


def test_official_waits_one_epoch_longer_than_paper():
    """At the defaults a constant loss is mastered after 5 losses ('paper') and after
    6 ('official', 4 second differences)."""
    first = {}
    for eligibility in ("paper", "official"):
        sel = IES(3, delta=1e-3, eligibility=eligibility, backend="torch")
        for epoch in range(8):
            sel.observe(torch.full((3,), 0.5), torch.arange(3))
            sel.step()
            if sel.mastered_mask().all() and eligibility not in first:
                first[eligibility] = epoch + 1
    assert first == {"paper": 5, "official": 6}
    assert sel.state_dict()["eligibility"] == "official" and sel.state_dict()["k"] == 1


def test_per_exit_selector_takes_the_official_rule():
    sel = PerExitIES(5, delta=1e-3, num_exits=2, exit_reduction="per_exit", k=2, eligibility="official", backend="torch")
    assert (sel.exits.k, sel.exits.eligibility, sel.exits.history_length) == (2, "official", 7)
    for epoch in range(7):
        sel.observe(torch.full((5, 2), 0.5), torch.arange(5))
        sel.step()
        assert bool(sel.mastered_mask().all()) == (epoch == 6)
