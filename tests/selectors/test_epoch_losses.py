"""Selector.epoch_losses(): this epoch's recorded loss per sample (the largest of its
observations; NaN where none or a non-finite one), for every selector, against a
plain-Python reference on random inputs; and the one ring-slot helper."""
from __future__ import annotations

import math

import pytest
import torch

from ies_fast import IES, InfoBatch, RandomRemoval, make_selector
from ies_fast.ops.ring import current_slot

S = 97


def feed(sel, g, exits: int = 1) -> list:
    """Random batches with repeated indices, a few unobserved and non-finite samples;
    returns the reference: max finite loss per sample (NaN: none, or a non-finite one)."""
    want = [None] * S
    bad = set()
    for _ in range(3):
        index = torch.randint(0, S - 10, (40,), generator=g)  # the last 10 never observed
        loss = torch.rand(40, exits, generator=g) * 3 if exits > 1 else torch.rand(40, generator=g) * 3
        if exits == 1:
            loss[0] = math.inf
        sel.observe(loss, index)
        per_sample = loss.amax(1) if exits > 1 else loss
        for i, v in zip(index.tolist(), per_sample.tolist()):
            if not math.isfinite(v):
                bad.add(i)
            want[i] = v if want[i] is None else max(want[i], v)
    return [math.nan if w is None or i in bad else w for i, w in enumerate(want)]


@pytest.mark.parametrize("make", [
    lambda: IES(S, delta=0.1, order=1, window=2, backend="torch"),
    lambda: IES(S, delta=0.1, order=1, window=2, backend="native"),
    lambda: InfoBatch(S, num_epochs=5),
])
def test_epoch_losses_match_the_reference(make):
    sel = make()
    if sel.backend == "native":
        from ies_fast import backend

        if not backend.native_usable(sel.device):
            pytest.skip("native extension not built")
    g = torch.Generator().manual_seed(5)
    for epoch in range(4):
        want = torch.tensor(feed(sel, g), dtype=torch.float32)
        got = sel.epoch_losses()
        assert got.dtype == torch.float32 and got.shape == (S,)
        if isinstance(sel, InfoBatch):  # InfoBatch drops a non-finite loss and keeps the others
            assert torch.isnan(got[-10:]).all() and torch.isfinite(got[:-10][~torch.isnan(want[:-10])]).all()
            want = torch.where(torch.isnan(want) & ~torch.isnan(got), got, want)
        torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
        sel.step()
        assert torch.isnan(sel.epoch_losses()).all()  # a new epoch has recorded nothing


def test_per_exit_takes_the_largest_exit_and_random_removal_keeps_none():
    sel = make_selector("ies", S, delta=0.1, order=1, window=2, backend="torch", num_exits=2, exit_reduction="per_exit")
    g = torch.Generator().manual_seed(2)
    want = torch.tensor(feed(sel, g, exits=2), dtype=torch.float32)
    torch.testing.assert_close(sel.epoch_losses(), want, equal_nan=True, rtol=0, atol=0)
    assert RandomRemoval(S, 0.3).epoch_losses() is None and RandomRemoval(S, 0.3).sample_scores() is None


def test_current_slot_reads_slot_count_mod_L():
    g = torch.Generator().manual_seed(1)
    hist = torch.randn(50, 6, generator=g)
    count = torch.randint(0, 12, (50,), generator=g).to(torch.uint8)
    slot, value = current_slot(hist, count)
    want = torch.tensor([hist[i, int(count[i]) % 6].item() for i in range(50)])
    assert slot.shape == (50, 1) and torch.equal(slot.flatten(), count.long() % 6)
    assert torch.equal(value, want)
