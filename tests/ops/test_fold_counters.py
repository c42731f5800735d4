"""ring.fold_epoch_report and ring.fold_removed: the native CPU ops that update a run's
per-sample counters in one pass equal their plain-torch references bit for bit, on
random rings (unobserved -inf and non-finite +inf slots, every count, order 0..3,
rings longer than the span) and random counters (NaN, -0.0 and negative sums among
them), at several sizes; and they only write the counters."""
from __future__ import annotations

import math

import pytest
import torch

from ies_fast import backend
from ies_fast.ops import ring
from ies_fast.ops.ring.reference import epoch_report_torch, fold_epoch_report_torch, fold_removed_torch, fold_report

needs_native = pytest.mark.skipif(not backend.native_usable(torch.device("cpu")), reason="native extension not built")


def bits(t):
    """The raw bits of a tensor, so NaN payloads and -0.0 count."""
    return t.view({torch.float64: torch.int64, torch.float32: torch.int32}.get(t.dtype, t.dtype))


def rings(g):
    for order in range(4):
        for window in (1, 3, 5):
            for extra, S in ((0, 1), (1, 997), (3, 5000)):
                L = order + window + extra
                hist = torch.randn(S, L, generator=g) * torch.rand(S, 1, generator=g) * 10
                r = torch.rand(S, L, generator=g)
                hist[r < 0.05] = -math.inf
                hist[(r >= 0.05) & (r < 0.08)] = math.inf
                hist[(r >= 0.08) & (r < 0.1)] = -0.0
                count = torch.randint(0, 2 * L, (S,), generator=g).to(torch.uint8)
                yield hist, count, order, window


def counters(S, g):
    """loss_sum, loss_count, last_loss, last_score: random, with NaN and -0.0 in them."""
    r = torch.rand(S, generator=g)
    loss_sum = (torch.randn(S, generator=g, dtype=torch.float64) * 100)
    loss_sum[r < 0.1] = -0.0
    loss_sum[(r >= 0.1) & (r < 0.12)] = math.nan
    loss_count = torch.randint(1, 1000, (S,), generator=g, dtype=torch.int32)
    last_loss = torch.where(r < 0.3, torch.full((S,), math.nan), torch.rand(S, generator=g) + 0.5)
    last_score = torch.where(r > 0.6, torch.full((S,), math.nan), torch.rand(S, generator=g) + 0.5)
    return [loss_sum, loss_count, last_loss, last_score]


def test_torch_fold_is_the_per_sample_table_update():
    """The reference is fold_report of epoch_report (what the table did with two calls),
    and it changes counters where a loss or score was recorded (the test can fail)."""
    g = torch.Generator().manual_seed(3)
    new_scores = counted = 0
    for hist, count, order, window in rings(g):
        a = counters(hist.shape[0], g)
        before = [t.clone() for t in a]
        b = [t.clone() for t in a]
        fold_epoch_report_torch(hist, count, order, window, *a)
        loss, score = epoch_report_torch(hist, count, order, window)
        fold_report(loss, score, *b)
        assert all(torch.equal(bits(x), bits(y)) for x, y in zip(a, b))
        seen = ~torch.isnan(loss)
        assert torch.equal(b[2][seen], loss[seen]) and torch.equal(b[1] - before[1], seen.int())
        new_scores += int((~torch.isnan(score)).sum())
        counted += int(seen.sum())
    assert new_scores > 0 and counted > 0


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
def test_native_fold_epoch_report_equals_torch(threads):
    if not ring._has_op("fold_epoch_report"):
        pytest.skip("ies_fast._C built without fold_epoch_report (rebuild it)")
    g = torch.Generator().manual_seed(5 + threads)
    before_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for hist, count, order, window in rings(g):
            want = counters(hist.shape[0], g)
            got = [t.clone() for t in want]
            hist_before, count_before = hist.clone(), count.clone()
            torch.ops.ies_fast.fold_epoch_report(hist, count, order, window, *got)
            fold_epoch_report_torch(hist, count, order, window, *want)
            for name, x, y in zip(("loss_sum", "loss_count", "last_loss", "last_score"), got, want):
                assert torch.equal(bits(x), bits(y)), (name, order, window, hist.shape)
            assert torch.equal(bits(hist), bits(hist_before)) and torch.equal(count, count_before)  # reads only
    finally:
        torch.set_num_threads(before_threads)


@needs_native
def test_native_fold_epoch_report_names_a_bad_counter():
    hist, count = torch.rand(8, 5), torch.zeros(8, dtype=torch.uint8)
    good = counters(8, torch.Generator().manual_seed(1))
    for i, name in enumerate(("loss_sum", "loss_count", "last_loss", "last_score")):
        bad = list(good)
        bad[i] = good[i][:7]
        with pytest.raises(ValueError, match=name):
            torch.ops.ies_fast.fold_epoch_report(hist, count, 2, 3, *bad)
    bad = list(good)
    bad[0] = good[0].float()
    with pytest.raises(ValueError, match="loss_sum"):
        torch.ops.ies_fast.fold_epoch_report(hist, count, 2, 3, *bad)


def removal_state(S, g):
    removed = torch.rand(S, generator=g) < 0.4
    prev = torch.rand(S, generator=g) < 0.5
    epochs_removed = torch.randint(0, 50, (S,), generator=g, dtype=torch.int32)
    came_back = torch.randint(0, 50, (S,), generator=g, dtype=torch.int32)
    first = torch.where(torch.rand(S, generator=g) < 0.5, torch.full((S,), -1, dtype=torch.int32),
                        torch.randint(0, 40, (S,), generator=g, dtype=torch.int32))
    return removed, [prev, epochs_removed, came_back, first]


@needs_native
@pytest.mark.parametrize("S", [1, 1000, 70001])  # 70001: above the op's threading cut-off
def test_native_fold_removed_equals_torch(S):
    if not ring._has_op("fold_removed"):
        pytest.skip("ies_fast._C built without fold_removed (rebuild it)")
    g = torch.Generator().manual_seed(S)
    for epoch in (0, 7, 2**31 - 1):
        for count_came_back in (True, False):
            removed, want = removal_state(S, g)
            got = [t.clone() for t in want]
            torch.ops.ies_fast.fold_removed(removed, *got, epoch, count_came_back)
            fold_removed_torch(removed, *want, epoch, count_came_back)
            for name, x, y in zip(("prev_removed", "epochs_removed", "came_back", "first_mastered"), got, want):
                assert torch.equal(x, y), (name, S, epoch, count_came_back)
    if S > 1:
        assert int((want[3] == 2**31 - 1).sum()) > 0 and int((want[2] > 50).sum()) == 0


@needs_native
def test_ring_wrappers_pick_native_or_torch_alike():
    """The backend switch of the wrappers: "torch" and "native" give the same counters,
    and a non-contiguous removed mask is accepted."""
    g = torch.Generator().manual_seed(9)
    removed2, state = removal_state(4000, g)
    removed = removed2.repeat_interleave(2)[::2]  # non-contiguous view of the same mask
    assert not removed.is_contiguous()
    a, b = [t.clone() for t in state], [t.clone() for t in state]
    ring.fold_removed("native", removed, *a, 3, True)
    ring.fold_removed("torch", removed, *b, 3, True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    hist, count, order, window = next(rings(g))
    a = counters(hist.shape[0], g)
    b = [t.clone() for t in a]
    ring.fold_epoch_report("native", hist, count, order, window, *a)
    ring.fold_epoch_report("torch", hist, count, order, window, *b)
    assert all(torch.equal(bits(x), bits(y)) for x, y in zip(a, b))
