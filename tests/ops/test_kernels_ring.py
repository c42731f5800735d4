"""Triton ring record / close_epoch against the plain-torch ops, and IES(backend='triton')
against the torch backend and the reference criterion."""
import functools
import os

import pytest
import torch
from _support.triton_compile import compile_for_sm90


from ies_fast.selectors.rule import history_length
from ies_fast.ops.ring.triton import close_epoch_triton, record_triton
from ies_fast.ops.ring.reference import close_epoch_torch, record_torch

from _support.selector_driver import (
    assert_backend_handles_duplicates_and_nonfinite,
    assert_backend_matches_torch_and_reference,
    assert_close_matches_torch,
    assert_epochs_with_records_match_torch,
    random_batch,
    random_state,
    rule,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("S,L,B,block", [(7, 5, 40, 16), (100, 3, 257, 64), (33, 8, 5, 0)])
def test_record_matches_torch(dtype, S, L, B, block):
    gen = torch.Generator().manual_seed(S + B)
    hist, count, _ = random_state(S, L, 2, gen)
    loss, index = random_batch(S, B, gen)
    loss = loss.to(dtype)
    got, want = hist.clone(), hist.clone()
    record_triton(got, count, loss, index, block=block)
    record_torch(want, count, loss, index)
    assert torch.equal(got, want)
    assert not torch.equal(got, hist)


def test_record_empty_batch_is_noop():
    hist = torch.randn(4, 3)
    before = hist.clone()
    record_triton(hist, torch.zeros(4, dtype=torch.uint8), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert torch.equal(hist, before)


def assert_same_close(hist, count, mastered, args, block):
    return assert_close_matches_torch(functools.partial(close_epoch_triton, block=block), hist, count, mastered, args)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
@pytest.mark.parametrize("window,k,eligibility", [(1, 1, "paper"), (3, 1, "official"), (5, 1, "paper"), (2, 3, "official")])
@pytest.mark.parametrize("S,block", [(301, 64), (5, 0)])
def test_close_epoch_matches_torch(order, window, k, eligibility, S, block):
    gen = torch.Generator().manual_seed(order * 10 + window + S)
    L = history_length(order, window, k, eligibility)
    hist, count, mastered = random_state(S, L, order, gen)
    (_, _, now), stats = assert_same_close(hist, count, mastered, rule(order, window, k, 0.05 / k), block)
    if S > 100:  # the random states exercise every branch
        assert 0 < int(now.sum()) < S
        assert stats[1] > 0 and stats[3] > 0 and stats[5] > 0


def test_close_epoch_several_epochs_with_records():
    assert_epochs_with_records_match_torch(functools.partial(record_triton, block=64),
                                           functools.partial(close_epoch_triton, block=32))


def test_close_epoch_delta_zero_masters_nothing():
    gen = torch.Generator().manual_seed(10)
    hist, count, mastered = random_state(50, 5, 2, gen)
    mastered.zero_()
    close_epoch_triton(hist, count, mastered, *rule(2, 3, 1, 0.0))
    assert not mastered.any()


def test_bad_state_is_rejected():
    hist = torch.zeros(4, 5)
    count = torch.zeros(4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="hist"):
        record_triton(hist.t(), count, torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="count"):
        record_triton(hist, count.long(), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="index"):
        record_triton(hist, count, torch.zeros(2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="mastered"):
        close_epoch_triton(hist, count, torch.zeros(4, dtype=torch.uint8), 2, 3, 1, 0.25)
    with pytest.raises(ValueError, match="order"):
        close_epoch_triton(hist, count, torch.zeros(4, dtype=torch.bool), 5, 3, 1, 0.25)
    with pytest.raises(ValueError, match="k"):
        close_epoch_triton(hist, count, torch.zeros(4, dtype=torch.bool), 2, 3, 2, 0.25)  # needs L = 6
    with pytest.raises(ValueError, match="threshold"):
        close_epoch_triton(hist, count, torch.zeros(4, dtype=torch.bool), 2, 3, 1, 0.1)  # not an fp32 value


# ---- the selector on the triton backend ------------------------------------------------


@pytest.mark.parametrize("order,window", [(0, 1), (2, 3), (3, 2)])
def test_selector_triton_matches_torch_and_reference(order, window):
    assert_backend_matches_torch_and_reference("triton", order, window)


def test_selector_triton_partial_duplicates_nonfinite():
    assert_backend_handles_duplicates_and_nonfinite("triton")


# ---- compiled mode, without a GPU -----------------------------------------------------


def test_kernels_compile_for_sm90(tmp_path):
    compile_for_sm90(tmp_path, """
from ies_fast.ops.ring.triton import _record_kernel, _close_epoch_kernel
build(_record_kernel, dict(hist_ptr="*fp32", count_ptr="*u8", loss_ptr="*fp32", index_ptr="*i64", B="i32"),
      dict(L=5, BLOCK=1024))
# the last two have L = 120: real loops, not unrolled, so they compile quickly
for order, window, k in [(o, w, k) for o in range(4) for w, k in ((1, 1), (3, 1), (5, 2))] + [(3, 116, 1), (2, 60, 58)]:
    build(_close_epoch_kernel,
          dict(hist_ptr="*fp32", count_ptr="*u8", mastered_ptr="*u8", partial_ptr="*i32", S="i32", threshold="fp32"),
          dict(L=order + window + k, ORDER=order, WINDOW=window, K=k, NSTATS=6, BLOCK=1024))
""")


# ---- realistic sizes on CUDA ---------------------------------------------------------


#: the CUDA tests need compiled kernels: run them as ``TRITON_INTERPRET=0 pytest -m gpu``
compiled = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="interpreted Triton; run TRITON_INTERPRET=0 pytest -m gpu"
)


@pytest.mark.gpu
@compiled
@pytest.mark.parametrize("order", [0, 2, 3])
def test_cuda_close_epoch_matches_torch(order):
    """Against the torch op on CPU: the same fp32 subtractions and left-to-right sums."""
    gen = torch.Generator().manual_seed(0)
    state = random_state(1_281_167, order + 3, order, gen)
    fast = tuple(t.cuda() for t in state)
    slow = tuple(t.clone() for t in state)
    stats = close_epoch_triton(*fast, *rule(order, 3))
    assert torch.equal(stats.cpu(), close_epoch_torch(*slow, *rule(order, 3)))
    for a, b in zip(fast, slow):
        assert torch.equal(a.cpu(), b)


@pytest.mark.gpu
@compiled
def test_cuda_record_matches_torch():
    gen = torch.Generator().manual_seed(1)
    S = 1_281_167
    hist, count, _ = random_state(S, 5, 2, gen)
    loss, index = random_batch(S, 1 << 20, gen)
    got, want = hist.cuda(), hist.cuda()
    record_triton(got, count.cuda(), loss.cuda(), index.cuda())
    record_torch(want, count.cuda(), loss.cuda(), index.cuda())
    assert torch.equal(got, want)
