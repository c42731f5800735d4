"""KeptFloor.replay_mask picks exactly what the argsort of all keys picked (random
masks, sizes and floors, with tied keys), on both of its paths, and draws nothing on
CPU when no replay is needed."""
from __future__ import annotations

import pytest
import torch

from ies_fast.selectors.floor import KeptFloor


def argsort_replay(floor: KeptFloor, mastered: torch.Tensor, epoch: int) -> torch.Tensor:
    """The former implementation: rank all ``S`` keys, replay the first ``shortfall``."""
    if floor.min_kept == 0:
        return torch.zeros_like(mastered)
    S = floor.num_samples
    shortfall = floor.min_kept - (~mastered).sum()
    g = torch.Generator(device=mastered.device).manual_seed(floor.seed * 1_000_003 + epoch)
    keys = torch.rand(S, generator=g, device=mastered.device)
    keys = torch.where(mastered, keys, torch.full_like(keys, 2.0))
    rank = torch.empty(S, dtype=torch.int64, device=mastered.device)
    rank[torch.argsort(keys, stable=True)] = torch.arange(S, device=mastered.device)
    return mastered & (rank < shortfall)


def cases(count: int):
    g = torch.Generator().manual_seed(27)
    for case in range(count):
        S = int(torch.randint(1, 40_000, (1,), generator=g))
        min_kept = float(torch.rand(1, generator=g)) if case % 2 else int(torch.randint(0, S + 1, (1,), generator=g))
        mastered = torch.rand(S, generator=g) < float(torch.rand(1, generator=g)) ** 0.3
        yield KeptFloor(S, min_kept, seed=case), mastered, case


def test_same_choice_as_the_argsort_on_random_inputs():
    replayed = 0
    for floor, mastered, epoch in cases(60):
        want = argsort_replay(floor, mastered, epoch)
        assert torch.equal(floor.replay_mask(mastered, epoch), want), (floor.num_samples, floor.min_kept)
        replayed += int(want.sum())
        # the path a GPU takes (k = min_kept, no host read), run here on CPU
        if floor.min_kept:
            shortfall = floor.min_kept - (~mastered).sum()
            assert torch.equal(floor._first_mastered(mastered, shortfall, floor.min_kept, epoch), want)
    assert replayed > 0  # the cases do replay


def test_tied_keys_are_taken_in_index_order():
    """At 40k samples fp32 keys tie (24-bit draws); the order is (key, index) as a stable sort's."""
    S = 40_000
    g = torch.Generator().manual_seed(3 * 1_000_003 + 1)
    keys = torch.rand(S, generator=g)
    assert keys.unique().numel() < S  # there are ties to break
    floor = KeptFloor(S, S // 2, seed=3)
    mastered = torch.ones(S, dtype=torch.bool)
    assert torch.equal(floor.replay_mask(mastered, 1), argsort_replay(floor, mastered, 1))


def test_nothing_drawn_when_nothing_needs_replaying(monkeypatch):
    floor = KeptFloor(1000, 0.1, seed=0)
    mastered = torch.arange(1000) % 2 == 0  # 500 not mastered >= 100

    def no_draw(*args, **kwargs):
        raise AssertionError("drew random keys although nothing needs replaying")

    monkeypatch.setattr(torch, "rand", no_draw)
    assert not floor.replay_mask(mastered, 4).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_and_does_not_sync():
    floor = KeptFloor(10_000, 0.5, seed=1)
    mastered = (torch.arange(10_000) % 10 != 0).cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = floor.replay_mask(mastered, 2)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(got.cpu(), argsort_replay(floor, mastered, 2).cpu())
