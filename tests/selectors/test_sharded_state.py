"""``make_selector("ies", ..., shard_state=True)`` (ShardedIES): the same decisions, masks, kept lists, statistics and
ring values (bit for bit) as the replicated selector, on 1, 2 and 3 gloo ranks."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from ies_fast import IES
from ies_fast.selectors import make_selector
from _support.spawn_ranks import launch

from ies_fast.selectors.sharded import ShardedIES, interleave, owned_rows, pack_bits, unpack_bits

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 1001])
def test_bits_round_trip(n):
    g = torch.Generator().manual_seed(n)
    mask = torch.rand(n, generator=g) < 0.4
    nbytes = (n + 7) // 8 + 1
    packed = pack_bits(mask, nbytes)
    assert packed.dtype == torch.uint8 and packed.numel() == nbytes
    ref = sum(int(b) << i for i, b in enumerate(mask.tolist()))
    assert int.from_bytes(bytes(packed.tolist()), "little") == ref
    assert torch.equal(unpack_bits(packed)[:n], mask) and not unpack_bits(packed)[n:].any()


@pytest.mark.parametrize("n,world", [(10, 3), (9, 3), (5, 4), (7, 1)])
def test_interleave_is_the_inverse_of_owning_rows(n, world):
    full = torch.randn(n, 2)
    rows = owned_rows(n, 0, world)
    stacked = torch.zeros(world, rows, 2)
    for r in range(world):
        assert owned_rows(n, r, world) == len(range(r, n, world))
        stacked[r, : owned_rows(n, r, world)] = full[r::world]
    assert torch.equal(interleave(stacked, n), full)


def test_constructor_routes_and_refuses_what_it_cannot_shard():
    sel = make_selector("ies", 20, shard_state=True)
    assert isinstance(sel, ShardedIES) and sel.world == 1 and "shard_state=True" in repr(sel)
    assert type(make_selector("ies", 20)) is IES and type(make_selector("ies", 20, shard_state=False)) is IES
    with pytest.raises(ValueError, match="make_selector"):
        IES(20, shard_state=True)
    with pytest.raises(ValueError, match="score_policy"):
        make_selector("ies", 20, shard_state=True, score_policy="backoff")
    with pytest.raises(ValueError, match="per_exit"):
        make_selector("ies", 20, num_exits=2, exit_reduction="per_exit", shard_state=True)


def test_one_process_equals_replicated_with_a_state_round_trip():
    from _support import sharded_worker as sw

    replicated, sharded = sw.pair(min_kept=5)
    mastered = []
    for epoch in range(8):
        loss, index = sw.epoch_observations(epoch)
        for sel in (replicated, sharded):
            sel.observe(loss, index)
            sel.step()
        sw.assert_same(replicated, sharded, f"epoch {epoch}")
        mastered.append(int(replicated.mastered.sum()))
        if epoch == 4:  # a shard saved on one rank is the whole state: both load it
            state = sharded.state_dict()
            again = sw.pair(min_kept=5)
            again[0].load_state_dict(state)
            again[1].load_state_dict(replicated.state_dict())
            sw.assert_same(*again, "after loading each other's state")
    assert max(mastered) > 0, mastered


@pytest.mark.parametrize("world,job", [(1, {}), (2, {"min_kept": 20}),
                                       (3, {"group_rows": 7, "record_chunk": 5, "exchange_rows": 13})])
def test_bit_identical_to_replicated_over_gloo_ranks(tmp_path, world, job):
    # group_rows/record_chunk: the exchange joins batches, splits a batch and records in pieces;
    # exchange_rows: many rounds per step, the ranks with fewer observations sending empty ones
    launch("_support.sharded_worker", world, tmp_path, {"epochs": 9, **job})


@pytest.mark.parametrize("sizes,rows", [([3, 4, 10, 0, 2], 5), ([1] * 9, 4), ([20], 7), ([], 3)])
def test_exchange_rounds_take_the_queue_in_order_in_bounded_parts(sizes, rows):
    from ies_fast.selectors.sharded import _take

    queued = [(torch.randn(n), torch.randint(0, 100, (n,))) for n in sizes]
    expected = [torch.cat([q[i] for q in queued]) if queued else torch.zeros(0) for i in (0, 1)]
    left, parts = list(queued), []
    while left:
        parts.append(_take(left, rows))
    sizes_taken = [sum(b[1].numel() for b in part) for part in parts]
    assert all(n == rows for n in sizes_taken[:-1]) and all(0 <= n <= rows for n in sizes_taken[-1:])
    taken = [b for part in parts for b in part]
    if sizes:
        assert torch.equal(torch.cat([b[0] for b in taken]), expected[0])
        assert torch.equal(torch.cat([b[1] for b in taken]), expected[1])


@pytest.mark.parametrize("sizes,rows", [([3, 4, 10, 0, 2], 5), ([1] * 9, 4), ([20], 7), ([], 3)])
def test_groups_join_and_split_queued_batches_in_order(sizes, rows):
    from ies_fast.selectors.sharded import _groups

    queued = [(torch.randn(n), torch.randint(0, 100, (n,))) for n in sizes]
    expected = [torch.cat([q[i] for q in queued]) if queued else torch.zeros(0) for i in (0, 1)]
    groups = list(_groups(list(queued), rows))
    assert all(g[1].numel() <= 2 * rows for g in groups) and all(g[1].numel() >= rows for g in groups[:-1])
    if sizes:
        assert torch.equal(torch.cat([g[0] for g in groups]), expected[0])
        assert torch.equal(torch.cat([g[1] for g in groups]), expected[1])
    else:
        assert groups == []
