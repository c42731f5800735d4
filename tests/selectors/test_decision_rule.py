"""One decision arithmetic everywhere: every backend (torch, native, Triton
interpreted) against the literal fp32 ReferenceCriterion on near-tie windows, built
so that the fp32 arithmetic and a float64 evaluation of the same formula disagree;
delta rounding to 0 and non-int rule arguments are rejected."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ies_fast import IES, ReferenceCriterion
from ies_fast.backend import native_usable
from ies_fast.selectors.rule import decision_threshold, history_length, reference_total
from ies_fast.ops import ring as dispatch

BACKENDS = ["torch", "triton"] + (["native"] if native_usable(torch.device("cpu")) else [])
THETA = np.float32(0.3)  # the fp32 threshold every near-tie batch aims at


def float64_decision(losses: np.ndarray, order: int, window: int, k: int, delta: float) -> bool:
    """The same formula in float64 (the sum of the last k window means < delta)."""
    d = losses.astype(np.float64)
    for _ in range(order):
        d = d[1:] - d[:-1]
    return sum(np.abs(d[j : j + window]).mean() for j in range(k)) < delta


def near_tie_windows(n: int, order: int, window: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, order + window + k - 1]`` fp32 rows whose fp32 total ``T`` lies within a
    few ulps of :data:`THETA`: random rows scaled onto the threshold (so every loss
    is about as fine-grained as θ), then the newest loss nudged by -3..3 ulps."""
    m = order + window + k - 1
    rows = (rng.random((n, m)) * rng.choice([1e-3, 1.0, 1e3], size=(n, 1))).astype(np.float32)
    out = np.empty_like(rows)
    for i, row in enumerate(rows):
        total = float(reference_total(list(row), order, window, k))
        scaled = row.astype(np.float64) * (float(THETA) / max(total, 1e-30))
        x = scaled.astype(np.float32)
        steps = int(rng.integers(-3, 4))
        for _ in range(abs(steps)):
            x[-1] = np.nextafter(x[-1], np.float32(np.inf if steps > 0 else -np.inf))
        out[i] = x
    return out


def close_one_epoch(backend: str, windows: np.ndarray, order: int, window: int, k: int, eligibility: str, delta: float):
    """State whose rows, after one close_epoch, hold ``windows`` as their last losses
    (eligible); returns the mastered mask."""
    S, m = windows.shape
    L = history_length(order, window, k, eligibility)
    hist = torch.zeros(S, L)
    hist[:, L - m :] = torch.from_numpy(windows)  # slot L-1 is the current epoch's
    hist[:, : L - m] = 7.0  # the loss 'official' waits for, never used by T
    count = torch.full((S,), L - 1, dtype=torch.uint8)
    mastered = torch.zeros(S, dtype=torch.bool)
    dispatch.close_epoch(backend, hist, count, mastered, order, window, k, decision_threshold(delta, window))
    return mastered


CASES = [(o, w, 1, "paper") for o in range(4) for w in (1, 3, 8)] + [(o, 3, 3, "official") for o in range(4)]


def check_near_ties(order: int, window: int, k: int, eligibility: str) -> int:
    """Every backend decides 300 near-tie windows as the reference; returns how many
    of them float64 decides differently."""
    rng = np.random.default_rng(1000 * order + 10 * window + k)
    delta = float(THETA) / window
    assert decision_threshold(delta, window) == float(THETA)
    windows = near_tie_windows(300, order, window, k, rng)
    ref = ReferenceCriterion(1, delta, order, window, k, eligibility)
    pad = [7.0] * (ref.length - windows.shape[1])
    want = [ref.decide(pad + row.tolist()) for row in windows]
    assert 0 < sum(want) < len(want), "near ties on both sides of the threshold"
    for backend in BACKENDS:
        got = close_one_epoch(backend, windows, order, window, k, eligibility, delta)
        assert got.tolist() == want, backend
    return sum(float64_decision(row, order, window, k, delta) != w for row, w in zip(windows, want))


@pytest.mark.parametrize("order,window,k,eligibility", CASES)
def test_backends_match_reference_on_near_ties(order, window, k, eligibility):
    disagree = check_near_ties(order, window, k, eligibility)
    if (order, window) != (0, 1):  # a single |loss| is the same in fp32 and float64
        assert disagree >= 10, f"only {disagree} windows separate fp32 from float64: the ties are not near enough"


def test_issue_example_is_decided_alike():
    """losses [0.04826276, ...], delta=0.1, order 1, window 3: float64 says mastered,
    the fp32 arithmetic (T = 0.3 in fp32, θ = fp32(0.3)) does not; every backend and
    the reference now agree."""
    losses = np.array([0.04826276, 0.14826277, 0.24826276, 0.34826276], dtype=np.float32)
    ref = ReferenceCriterion(1, 0.1, 1, 3)
    want = ref.decide(losses.tolist())
    assert float64_decision(losses, 1, 3, 1, 0.1) != want
    for backend in BACKENDS:
        assert close_one_epoch(backend, losses[None], 1, 3, 1, "paper", 0.1).tolist() == [want], backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_selector_runs_match_reference_with_k_and_eligibility(backend):
    """Whole runs (duplicates, several epochs) through IES(k=..., eligibility=...)."""
    from _support.selector_driver import run_both

    for k, eligibility in ((2, "paper"), (1, "official"), (3, "official")):
        sel = IES(41, delta=0.05, order=2, window=2, k=k, eligibility=eligibility, backend=backend)
        masks = run_both(sel, 12, k)
        assert any(m.any() for m, _ in masks)
        for epoch, (got, want) in enumerate(masks):
            assert torch.equal(got, want), (k, eligibility, epoch)


def test_delta_that_rounds_to_zero_is_rejected():
    for make in (lambda d: IES(4, delta=d), lambda d: ReferenceCriterion(4, d), lambda d: decision_threshold(d, 3)):
        with pytest.raises(ValueError, match="delta"):
            make(1e-46)
        with pytest.raises(ValueError, match="delta"):
            make(-1e-3)
        with pytest.raises(ValueError, match="delta"):
            make(float("nan"))
    assert decision_threshold(1e-45, 1) > 0  # fp32's smallest subnormal is still a threshold
    assert decision_threshold(0.0, 3) == 0.0


def test_delta_zero_masters_nothing_even_for_constant_losses():
    for backend in BACKENDS:
        got = close_one_epoch(backend, np.full((5, 5), 0.5, dtype=np.float32), 2, 3, 1, "paper", 0.0)
        assert not got.any(), backend


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        ({"order": 2.0}, TypeError, "order"),
        ({"order": True}, TypeError, "order"),
        ({"order": 4}, ValueError, "order"),
        ({"window": 3.0}, TypeError, "window"),
        ({"window": True}, TypeError, "window"),
        ({"window": 0}, ValueError, "window"),
        ({"k": 1.0}, TypeError, "k"),
        ({"k": 0}, ValueError, "k"),
        ({"eligibility": "cifar_main"}, ValueError, "eligibility"),
        ({"window": 100, "k": 20}, ValueError, "at most 120"),
        ({"delta": True}, TypeError, "delta"),
    ],
)
def test_bad_rule_arguments_are_rejected(kwargs, error, name):
    with pytest.raises(error, match=name):
        IES(4, **kwargs)
    with pytest.raises(error, match=name):
        ReferenceCriterion(4, **kwargs)
