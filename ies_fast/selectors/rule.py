"""The IES mastered rule: its parameters, its one decision arithmetic, and
:class:`ReferenceCriterion`, a literal per-sample implementation of both.

Every fast path (the ring-buffer selector in plain torch, Triton, the native
extension) is tested against :class:`ReferenceCriterion`, which keeps each
sample's whole loss history as a Python list and applies the definition below
one sample at a time, with numpy fp32 scalars. It is slow on purpose.

The decision arithmetic (``docs/semantics.md``, "The decision arithmetic"), the
same on every backend bit for bit:

1. the losses are fp32; the last ``order + window + k - 1`` of them are used;
2. ``Δ^0 = x`` and ``Δ^{o+1}_i = Δ^o_{i+1} - Δ^o_i``: repeated fp32 subtractions;
3. window ``j`` (``j = 0..k-1``, oldest first) covers ``order + window`` losses
   starting at loss ``j``; its sum ``W_j`` adds ``|Δ^order|`` left to right in fp32;
4. ``T = W_0 + W_1 + ... + W_{k-1}``, left to right in fp32;
5. mastered iff ``T < θ`` with ``θ = fp32(δ · window)`` (the product taken in
   float64, rounded to the nearest fp32 once, on the host).

Only subtractions, ``|·|``, additions and one comparison: no multiply to fuse
into an FMA, no division to approximate, so torch, C++, CUDA and Triton agree
exactly. ``T < θ`` is the paper's ``mean |Δ^N| < δ`` (k = 1) and the official
code's ``sum of the last k moving averages < δ`` with the ``1/window`` of each
mean moved to the threshold.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

from ..checks import check_choice, check_float, check_int

ORDERS = (0, 1, 2, 3)
#: ``"paper"``: eligible with the ``order + window + k - 1`` losses the score uses;
#: ``"official"``: as tmllab/2025_ICLR_IES cifar_main.py, one loss more
ELIGIBILITY = ("paper", "official")
#: the longest loss ring (``count`` is uint8 and counts up to ``2L``)
MAX_HISTORY = 120


def check_order(order) -> int:
    """``order`` as an int in :data:`ORDERS` (TypeError for a float or bool)."""
    return check_int("order", order, min=ORDERS[0], max=ORDERS[-1])


def check_rule(order, window, k=1, eligibility="paper") -> int:
    """Validate the rule's parameters; return the ring length they need."""
    check_order(order)
    check_int("window", window, min=1)
    check_int("k", k, min=1)
    check_choice("eligibility", eligibility, ELIGIBILITY)
    L = history_length(order, window, k, eligibility)
    if L > MAX_HISTORY:
        raise ValueError(
            f"order + window + k - 1 (+1 for eligibility='official') must be at most {MAX_HISTORY}, got {L}"
        )
    return L


def history_length(order: int, window: int, k: int = 1, eligibility: str = "paper") -> int:
    """Losses a sample needs before it can be mastered (= the ring length)."""
    return order + window + k - 1 + (eligibility == "official")


def decision_threshold(delta, window: int) -> float:
    """``θ = fp32(δ · window)`` as a Python float (exactly an fp32 value).

    Raises ValueError naming ``delta`` when it is negative, not finite, or
    positive but so small that ``θ`` rounds to 0 (it would silently act as δ = 0).
    """
    check_float("delta", delta, min=0)
    with np.errstate(over="ignore"):  # beyond fp32's range: θ = inf, every finite T passes
        theta = float(np.float32(float(delta) * window))
    if delta > 0 and theta == 0.0:
        raise ValueError(
            f"delta={delta!r} is positive but delta * window = {float(delta) * window!r} rounds to 0 in fp32 "
            "(it would behave as delta=0); use delta=0 or a larger value"
        )
    return theta


def difference_coefficients(order: int) -> list[int]:
    """Coefficients of Δ^N L(t) over L(t-N), ..., L(t) (oldest first): (-1)^(N-k) C(N, k)."""
    check_order(order)
    return [(-1) ** (order - k) * math.comb(order, k) for k in range(order + 1)]


def instability_score(history: torch.Tensor, order: int, window: int) -> torch.Tensor:
    """Mean |Δ^order L| over the last ``window`` epochs, in float64 (for inspection
    and plots; decisions use the fp32 arithmetic of :func:`reference_total`).

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


def reference_total(losses: list, order: int, window: int, k: int) -> np.float32:
    """``T`` of the decision arithmetic for one sample: ``losses`` are its last
    ``order + window + k - 1`` losses, oldest first. Literal, one fp32 operation at a time."""
    x = [np.float32(v) for v in losses]
    if len(x) != order + window + k - 1:
        raise ValueError(f"losses must hold order + window + k - 1 = {order + window + k - 1} values, got {len(x)}")
    total = np.float32(0.0)
    with np.errstate(all="ignore"):  # fp32 overflow gives inf / nan, which never passes
        for j in range(k):
            d = x[j : j + order + window]
            for _ in range(order):
                d = [d[i + 1] - d[i] for i in range(len(d) - 1)]
            w_sum = np.float32(0.0)
            for v in d:
                w_sum = np.float32(w_sum + abs(v))
            total = np.float32(total + w_sum)
    return total


class ReferenceCriterion:
    """Literal IES: per-sample Python lists of losses, one entry per epoch.

    Rules (shared with :class:`ies_fast.IES`):

    * one recorded loss per sample per epoch: the maximum of that epoch's
      observations of it (duplicates in a batch, or a sample seen in two passes),
      each rounded to fp32 first;
    * a non-finite observation discards that sample's history: it is kept and
      must collect :func:`history_length` fresh losses before it can be mastered again;
    * mastered after an epoch: eligible (:func:`history_length` losses) and
      ``T < θ`` in the decision arithmetic above;
    * a sample not observed in an epoch keeps its previous decision.
    """

    def __init__(self, num_samples: int, delta: float = 1e-3, order: int = 2, window: int = 3, k: int = 1,
                 eligibility: str = "paper"):
        self.length = check_rule(order, window, k, eligibility)
        self.threshold = np.float32(decision_threshold(delta, window))
        self.num_samples = num_samples
        self.delta, self.order, self.window, self.k, self.eligibility = float(delta), order, window, k, eligibility
        self.history: list[list[float]] = [[] for _ in range(num_samples)]
        self.mastered = [False] * num_samples
        self._epoch: dict[int, float] = {}
        self.epoch = 0

    def observe(self, losses: Iterable[float], indices: Iterable[int]) -> None:
        for loss, i in zip(losses, indices):
            with np.errstate(over="ignore"):
                loss, i = float(np.float32(loss)), int(i)
            if not math.isfinite(loss):
                loss = math.inf
            self._epoch[i] = max(self._epoch.get(i, -math.inf), loss)

    def decide(self, history: list) -> bool:
        """Whether a sample with this loss history (oldest first) is mastered."""
        if len(history) < self.length:
            return False
        used = history[len(history) - (self.order + self.window + self.k - 1):]
        return bool(reference_total(used, self.order, self.window, self.k) < self.threshold)

    def step(self) -> list[bool]:
        for i, loss in self._epoch.items():
            if math.isinf(loss):
                self.history[i] = []
                self.mastered[i] = False
                continue
            self.history[i].append(loss)
            self.mastered[i] = self.decide(self.history[i])
        self._epoch = {}
        self.epoch += 1
        return list(self.mastered)
