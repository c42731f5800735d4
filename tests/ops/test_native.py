"""The native extension ``ies_fast._C`` against the plain-torch ops, and
IES(backend='native') against the torch backend and the reference criterion."""
import math
import os

import pytest
import torch

from ies_fast import IES
from ies_fast.backend import native_status
from ies_fast.ops.compact.reference import compact_torch
from ies_fast.selectors.rule import history_length
from ies_fast.ops.ring.reference import close_epoch_torch, record_torch

from _support.selector_driver import (
    assert_backend_handles_duplicates_and_nonfinite,
    assert_backend_matches_torch_and_reference,
    assert_close_matches_torch,
    assert_epochs_with_records_match_torch,
    random_batch,
    random_state,
    rule,
    run_both,
)


@pytest.mark.skipif(os.environ.get("IES_FAST_EXPECT_NATIVE") != "1", reason="set IES_FAST_EXPECT_NATIVE=1")
def test_native_was_built():
    cpu, _, message = native_status()
    assert cpu, message


native = pytest.importorskip("ies_fast._C", reason="native extension ies_fast._C not built")
ops = torch.ops.ies_fast


# ---- record ------------------------------------------------------------------------------


@pytest.mark.parametrize("S,L,B", [(7, 5, 40), (100, 3, 257), (33, 8, 5), (1000, 1, 3000), (5, 4, 0), (0, 3, 4)])
def test_record_matches_torch(S, L, B):
    gen = torch.Generator().manual_seed(S + B + L)
    hist, count, _ = random_state(S, L, 2, gen)
    loss, index = random_batch(S, B, gen)
    got, want = hist.clone(), hist.clone()
    ops.record(got, count, loss, index)
    if S:  # the torch op cannot index an empty state, even for skipped rows
        record_torch(want, count, loss, index)
    assert torch.equal(got, want)
    if S and B:
        assert not torch.equal(got, hist)


def test_record_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(3)
    hist, count, _ = random_state(50, 5, 2, gen)
    loss, index = random_batch(50, 200, gen)
    got, want = hist.clone(), hist.clone()
    ops.record(got, count, loss[::2], index[::2])
    record_torch(want, count, loss[::2], index[::2])
    assert torch.equal(got, want)


def test_record_rejects_bad_arguments():
    hist, count = torch.zeros(4, 5), torch.zeros(4, dtype=torch.uint8)
    loss, index = torch.zeros(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="hist"):
        ops.record(hist.t(), count, loss, index)
    with pytest.raises(ValueError, match="count"):
        ops.record(hist, count.long(), loss, index)
    with pytest.raises(ValueError, match="loss"):
        ops.record(hist, count, loss.double(), index)
    with pytest.raises(ValueError, match="index"):
        ops.record(hist, count, loss, torch.zeros(3, dtype=torch.long))
    with pytest.raises(IndexError, match="index"):
        ops.record(hist, count, loss, torch.tensor([0, 4]))


# ---- close_epoch -------------------------------------------------------------------------


def assert_same_close(hist, count, mastered, args):
    return assert_close_matches_torch(ops.close_epoch, hist, count, mastered, args)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
@pytest.mark.parametrize("window,k,eligibility", [(1, 1, "paper"), (3, 1, "official"), (5, 1, "paper"), (2, 3, "official")])
@pytest.mark.parametrize("S", [301, 5, 0])
def test_close_epoch_matches_torch(order, window, k, eligibility, S):
    gen = torch.Generator().manual_seed(order * 10 + window + S)
    hist, count, mastered = random_state(S, history_length(order, window, k, eligibility), order, gen)
    (_, _, now), stats = assert_same_close(hist, count, mastered, rule(order, window, k, 0.05 / k))
    if S > 100:  # the random states exercise every branch
        assert 0 < int(now.sum()) < S
        assert stats[1] > 0 and stats[3] > 0 and stats[5] > 0


def test_close_epoch_parallel_path_matches_torch():
    """Large enough for the OpenMP loop and its reductions."""
    gen = torch.Generator().manual_seed(11)
    hist, count, mastered = random_state(20_011, 5, 2, gen)
    assert_same_close(hist, count, mastered, rule(2, 3))


def test_close_epoch_inf_in_window_never_masters():
    hist = torch.tensor([[0.5, math.inf, 0.5, 0.5, 0.5], [0.5, -math.inf, 0.5, 0.5, 0.5]])
    count = torch.tensor([6, 6], dtype=torch.uint8)  # current slot 1; after the fold 7 -> window slots 2..6
    mastered = torch.tensor([True, True])
    assert_same_close(hist, count, mastered, rule(2, 3))


def test_close_epoch_several_epochs_with_records():
    assert_epochs_with_records_match_torch(ops.record, ops.close_epoch)


def test_close_epoch_rejects_bad_arguments():
    hist, count = torch.zeros(4, 5), torch.zeros(4, dtype=torch.uint8)
    flags = torch.zeros(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="mastered"):
        ops.close_epoch(hist, count, torch.zeros(4, dtype=torch.uint8), 2, 3, 1, 0.25)
    with pytest.raises(ValueError, match="order"):
        ops.close_epoch(hist, count, flags, 5, 3, 1, 0.25)
    with pytest.raises(ValueError, match="hist"):
        ops.close_epoch(torch.zeros(4, 200), count, flags, 2, 3, 1, 0.25)
    with pytest.raises(ValueError, match="window"):
        ops.close_epoch(hist, count, flags, 2, 0, 1, 0.25)
    with pytest.raises(ValueError, match="k must"):
        ops.close_epoch(hist, count, flags, 2, 3, 0, 0.25)
    with pytest.raises(ValueError, match="order \\+ window \\+ k"):
        ops.close_epoch(hist, count, flags, 2, 3, 2, 0.25)  # needs L = 6
    with pytest.raises(ValueError, match="threshold"):
        ops.close_epoch(hist, count, flags, 2, 3, 1, 0.1)  # not an fp32 value
    with pytest.raises(ValueError, match="threshold"):
        ops.close_epoch(hist, count, flags, 2, 3, 1, -0.25)


# ---- compact -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 65_537, 200_003])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_compact_matches_torch(n, p):
    gen = torch.Generator().manual_seed(n)
    mask = torch.rand(n, generator=gen) < p
    got, count = ops.compact(mask)
    want, want_count = compact_torch(mask)
    assert got.dtype == torch.int64 and got.shape == (int(want_count),)  # CPU: exactly count entries
    assert count.dtype == torch.int64 and count.dim() == 0
    assert torch.equal(count, want_count)
    k = int(count)
    assert torch.equal(got[:k], want[:k])
    assert torch.equal(got[:k], mask.nonzero().squeeze(1))


def test_compact_flattens_and_rejects_non_bool():
    mask = torch.rand(30, 7, generator=torch.Generator().manual_seed(2)) < 0.5
    got, count = ops.compact(mask)
    assert torch.equal(got[: int(count)], mask.reshape(-1).nonzero().squeeze(1))
    with pytest.raises(ValueError, match="mask"):
        ops.compact(mask.float())


# ---- the selector on the native backend ---------------------------------------------------


@pytest.mark.parametrize("order,window", [(0, 1), (2, 3), (3, 2)])
def test_selector_native_matches_torch_and_reference(order, window):
    assert_backend_matches_torch_and_reference("native", order, window)


def test_selector_native_partial_duplicates_nonfinite():
    assert_backend_handles_duplicates_and_nonfinite("native")


# ---- CUDA --------------------------------------------------------------------------------

cuda_native = pytest.mark.skipif(not native_status()[1], reason="ies_fast._C built without CUDA")


@pytest.mark.gpu
@cuda_native
@pytest.mark.parametrize("S,L,B", [(1_281_167, 5, 1 << 20), (37, 3, 1000), (10, 4, 0)])
def test_cuda_record_matches_torch(S, L, B):
    gen = torch.Generator().manual_seed(1)
    hist, count, _ = random_state(S, L, 2, gen)
    loss, index = random_batch(S, B, gen)
    got = hist.cuda()
    ops.record(got, count.cuda(), loss.cuda(), index.cuda())
    want = hist.clone()
    record_torch(want, count, loss, index)
    assert torch.equal(got.cpu(), want)


@pytest.mark.gpu
@cuda_native
@pytest.mark.parametrize("order", [0, 2, 3])
@pytest.mark.parametrize("S", [1_281_167, 301, 0])
def test_cuda_close_epoch_matches_torch(order, S):
    gen = torch.Generator().manual_seed(order + S)
    state = random_state(S, order + 3, order, gen)
    fast = tuple(t.cuda() for t in state)
    slow = tuple(t.clone() for t in state)
    stats = ops.close_epoch(*fast, *rule(order, 3))
    assert stats.is_cuda
    assert torch.equal(stats.cpu(), close_epoch_torch(*slow, *rule(order, 3)))
    for a, b in zip(fast, slow):
        assert torch.equal(a.cpu(), b)


@pytest.mark.gpu
@cuda_native
@pytest.mark.parametrize("n", [0, 1, 1000, 1_281_167])
def test_cuda_compact_matches_torch(n):
    gen = torch.Generator().manual_seed(n)
    mask = torch.rand(n, generator=gen) < 0.4
    got, count = ops.compact(mask.cuda())
    assert got.is_cuda and count.is_cuda and count.dim() == 0
    assert int(count) == int(mask.sum())
    assert torch.equal(got[: int(count)].cpu(), mask.nonzero().squeeze(1))


@pytest.mark.gpu
@cuda_native
def test_selector_native_cuda_matches_reference():
    fast = IES(61, delta=0.05, device="cuda", backend="native")
    for got, want in run_both(fast, 11, 2):
        assert torch.equal(got, want)
