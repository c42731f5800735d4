"""Plain-torch reference of the IES mastered criterion: the semantic source of truth.

Every fast path (the ring-buffer selector, Triton, the native extension) is tested
against :class:`ReferenceCriterion`, which keeps each sample's whole loss history
as a Python list and applies the definition literally. It is slow on purpose.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

ORDERS = (0, 1, 2, 3)


def difference_coefficients(order: int) -> list[int]:
    """Coefficients of Δ^N L(t) over L(t-N), ..., L(t) (oldest first): (-1)^(N-k) C(N, k)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return [(-1) ** (order - k) * math.comb(order, k) for k in range(order + 1)]


def instability_score(history: torch.Tensor, order: int, window: int) -> torch.Tensor:
    """Mean |Δ^order L| over the last ``window`` epochs.

    ``history`` is ``[..., T]`` in chronological order (oldest first) with
    ``T >= order + window``; the result has shape ``[...]``.
    """
    if history.shape[-1] < order + window:
        raise ValueError(
            f"history must hold at least order + window = {order + window} losses, got {history.shape[-1]}"
        )
    d = history[..., -(order + window):].to(torch.float64)
    for _ in range(order):
        d = d[..., 1:] - d[..., :-1]
    return d.abs().mean(dim=-1)


class ReferenceCriterion:
    """Literal IES: per-sample Python lists of losses, one entry per epoch.

    Rules (shared with :class:`ies_fast.IES`):

    * one recorded loss per sample per epoch: the maximum of that epoch's
      observations of it (duplicates in a batch, or a sample seen in two passes);
    * a non-finite observation discards that sample's history: it is kept and
      must collect ``order + window`` fresh losses before it can be mastered again;
    * mastered after an epoch: eligible (``order + window`` losses) and score < δ;
    * a sample not observed in an epoch keeps its previous decision.
    """

    def __init__(self, num_samples: int, delta: float = 1e-3, order: int = 2, window: int = 3):
        difference_coefficients(order)
        self.num_samples = num_samples
        self.delta, self.order, self.window = float(delta), order, window
        self.history: list[list[float]] = [[] for _ in range(num_samples)]
        self.mastered = [False] * num_samples
        self._epoch: dict[int, float] = {}
        self.epoch = 0

    def observe(self, losses: Iterable[float], indices: Iterable[int]) -> None:
        for loss, i in zip(losses, indices):
            loss, i = float(loss), int(i)
            if not math.isfinite(loss):
                loss = math.inf
            self._epoch[i] = max(self._epoch.get(i, -math.inf), loss)

    def step(self) -> list[bool]:
        for i, loss in self._epoch.items():
            if math.isinf(loss):
                self.history[i] = []
                self.mastered[i] = False
                continue
            self.history[i].append(loss)
            h = self.history[i]
            if len(h) >= self.order + self.window:
                score = float(instability_score(torch.tensor(h, dtype=torch.float32), self.order, self.window))
                self.mastered[i] = score < self.delta
            else:
                self.mastered[i] = False
        self._epoch = {}
        self.epoch += 1
        return list(self.mastered)
