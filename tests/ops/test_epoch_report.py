"""ring.epoch_report: the epoch's current-slot loss and the current window's score,
bit for bit, in plain torch (against the chronological-view formula) and in the
native CPU op (against plain torch), on random rings with unobserved (-inf) and
non-finite (+inf) slots, every count, order 0..3 and rings longer than the span."""
from __future__ import annotations

import math

import pytest
import torch

from ies_fast import backend
from ies_fast.ops import ring
from ies_fast.ops.ring.reference import chronological, difference_score, epoch_report_torch


def chronological_formula(hist, count, order, window):
    """The score as the per-sample table computed it before: gather the rows oldest
    first (the current slot counted), take the last order + window, difference."""
    span = order + window
    count = count.long() + 1
    history = chronological(hist, count)[:, -span:]
    valid = (count >= span) & torch.isfinite(history).all(1)
    score = difference_score(torch.where(valid.unsqueeze(1), history, torch.zeros_like(history)), order)
    loss = hist.gather(1, ((count - 1) % hist.shape[1]).unsqueeze(1)).squeeze(1)
    return (torch.where(torch.isfinite(loss), loss, torch.full_like(loss, math.nan)),
            torch.where(valid, score, torch.full_like(score, math.nan)))


def rings():
    g = torch.Generator().manual_seed(11)
    for order in range(4):
        for window in (1, 2, 3, 5):
            for extra in (0, 1, 3):
                L = order + window + extra
                S = 2000
                hist = torch.randn(S, L, generator=g) * torch.rand(S, 1, generator=g) * 10
                r = torch.rand(S, L, generator=g)
                hist[r < 0.05] = -math.inf
                hist[(r >= 0.05) & (r < 0.08)] = math.inf
                count = torch.randint(0, 2 * L, (S,), generator=g).to(torch.uint8)
                yield hist, count, order, window


def same(a, b):
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a[~torch.isnan(a)], b[~torch.isnan(b)])


def test_torch_equals_the_chronological_formula():
    nan_and_not = [0, 0]
    for hist, count, order, window in rings():
        got, want = epoch_report_torch(hist, count, order, window), chronological_formula(hist, count, order, window)
        assert same(got[0], want[0]) and same(got[1], want[1]), (order, window, hist.shape)
        alone = epoch_report_torch(hist, count, order, window, with_score=False)
        assert same(alone[0], want[0]) and alone[1].numel() == 0
        nan_and_not[0] += int(torch.isnan(got[1]).sum())
        nan_and_not[1] += int((~torch.isnan(got[1])).sum())
    assert min(nan_and_not) > 0


@pytest.mark.skipif(not backend.native_usable(torch.device("cpu")), reason="native extension not built")
def test_native_equals_torch():
    if not ring._has_op("epoch_report"):
        pytest.skip("ies_fast._C built without epoch_report (rebuild it)")
    for hist, count, order, window in rings():
        before = hist.clone()
        got = torch.ops.ies_fast.epoch_report(hist, count, order, window)
        want = epoch_report_torch(hist, count, order, window)
        assert same(got[0], want[0]) and same(got[1], want[1]), (order, window, hist.shape)
        alone = torch.ops.ies_fast.epoch_report(hist, count, order, window, False)
        assert same(alone[0], want[0]) and alone[1].numel() == 0
        assert torch.equal(hist.view(torch.int32), before.view(torch.int32))  # reads only
