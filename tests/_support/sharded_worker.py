"""Worker side of tests/selectors/test_sharded_state.py and tests/io/test_selector_shards.py:
each rank feeds its share of dist_worker's observations to a replicated and a sharded
selector side by side and checks, after every step, that they agree bit for bit."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

import ies_fast.selectors.sharded as sharded_module
from ies_fast import IES
from ies_fast.selectors import make_selector
from ies_fast.io.checkpoint import save_checkpoint
from ies_fast.io.selector_shards import load_selector, save_selector

S, DELTA, ORDER, WINDOW = 97, 5e-3, 1, 2


def epoch_observations(epoch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(losses, index)`` observed in ``epoch`` by all ranks together: two thirds of the
    samples settle (mastered after a few epochs), the rest move; a tenth go unseen each
    epoch; some are observed twice (the larger loss counts); NaN/Inf in epoch 5; epoch 3
    is empty."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    if epoch == 3:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    settles = torch.arange(S) % 3 != 0
    loss = torch.where(settles, 1.0 / (1 + epoch) ** 2 + torch.rand(S, generator=g) * 1e-4,
                       torch.rand(S, generator=g) * 2)
    index = torch.randperm(S, generator=g)[: int(S * 0.9)]
    twice = index[torch.randperm(index.numel(), generator=g)[:15]]
    index = torch.cat([index, twice])
    loss = torch.cat([loss[index[:-15]], loss[twice] * torch.rand(15, generator=g) * 1.5])
    if epoch == 5:
        loss[:2] = torch.tensor([float("nan"), float("inf")])
    perm = torch.randperm(index.numel(), generator=g)
    return loss[perm], index[perm]


def pair(min_kept: int = 0) -> tuple[IES, IES]:
    """A replicated and a sharded selector of the same configuration."""
    kw = dict(delta=DELTA, order=ORDER, window=WINDOW, min_kept=min_kept, seed=3)
    return IES(S, **kw), make_selector("ies", S, shard_state=True, **kw)


def assert_same(replicated: IES, sharded: IES, where: str) -> None:
    rank, world = sharded.rank, sharded.world
    checks = {
        "hist": torch.equal(sharded.hist.view(torch.int32), replicated.hist[rank::world].view(torch.int32)),
        "count": torch.equal(sharded.count, replicated.count[rank::world]),
        "mastered": torch.equal(sharded.mastered, replicated.mastered),
        "removed": torch.equal(sharded.removed_mask(), replicated.removed_mask()),
        "kept": torch.equal(sharded.kept_indices(), replicated.kept_indices()),
        "stats": sharded.stats() == replicated.stats(),
    }
    bad = [k for k, ok in checks.items() if not ok]
    assert not bad, f"{where}: sharded differs from replicated in {bad} (rank {rank} of {world})"
    assert_same_state(sharded.full_state_dict(), replicated.state_dict(), f"{where}: full_state_dict()")


def assert_same_state(got: dict, expected: dict, where: str) -> None:
    """``got`` equals ``expected`` key for key, tensors bit for bit (dtype, shape, bytes)."""
    assert got.keys() == expected.keys(), f"{where}: keys {sorted(got)} != {sorted(expected)}"
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            same = (value.dtype == got[key].dtype and value.shape == got[key].shape
                    and torch.equal(got[key].flatten().view(torch.uint8), value.flatten().view(torch.uint8)))
        else:
            same = got[key] == value
        assert same, f"{where}[{key!r}] differs from the replicated selector's"


def run(rank: int, world: int, out_dir: str, job: dict) -> IES:
    """Train a replicated and a sharded selector side by side over ``job["epochs"]``
    epochs (after loading ``job["load"]``, pairs of checkpoint folders: replicated,
    sharded; ``job["cross"]`` swaps each pair), checking them equal after every step; saves
    both at epoch ``job["save_at"]`` (in each storage of ``job["storages"]``, default
    ``["files"]``; ``"dcp"`` into ``replicated-dcp``, ``sharded-dcp``). Returns the
    replicated one."""
    sharded_module._GROUP_ROWS = job.get("group_rows", sharded_module._GROUP_ROWS)  # small: joins and splits
    sharded_module._RECORD_CHUNK = job.get("record_chunk", sharded_module._RECORD_CHUNK)
    sharded_module._EXCHANGE_ROWS = job.get("exchange_rows", sharded_module._EXCHANGE_ROWS)  # small: many rounds
    replicated, sharded = pair(job.get("min_kept", 0))
    assert sharded.world == world and sharded.hist.shape[0] == len(range(rank, S, world))
    loaded = None
    for pair_dirs in job.get("load", []):  # each pair replaces the last: every storage loads the same state
        rep_dir, shard_dir = pair_dirs[::-1] if job.get("cross") else pair_dirs
        load_selector(replicated, rep_dir)
        load_selector(sharded, shard_dir)
        assert_same(replicated, sharded, f"after loading {pair_dirs}")
        state = replicated.state_dict()
        assert loaded is None or all(torch.equal(v, loaded[k]) if isinstance(v, torch.Tensor) else v == loaded[k]
                                     for k, v in state.items()), f"{pair_dirs} loads another state than the first pair"
        loaded = state
    mastered_any = False
    for epoch in range(replicated.epoch, job["epochs"]):
        loss, index = epoch_observations(epoch)
        mine, mine_index = loss[rank::world], index[rank::world]
        if epoch == 2:
            mine = mine.half().float()
        for sel in (replicated, sharded):
            for i, (part, part_index) in enumerate(zip(mine.split(13), mine_index.split(13))):  # batches of 13, a rest
                sel.observe(part, part_index)
                if sel is sharded and epoch == 4 and i == 1:  # a mid-epoch checkpoint sends the queue early
                    sharded.full_state_dict()
            sel.step()
        assert_same(replicated, sharded, f"epoch {epoch}")
        mastered_any |= bool(replicated.mastered.any())
        if epoch + 1 == job.get("save_at"):
            for storage in job.get("storages", ["files"]):
                suffix = "" if storage == "files" else f"-{storage}"
                save_selector(replicated, os.path.join(out_dir, "replicated" + suffix), storage=storage)
                save_selector(sharded, os.path.join(out_dir, "sharded" + suffix), storage=storage)
    assert mastered_any or job.get("load"), "the observations never mastered a sample: the test would prove nothing"
    return replicated


def worker(rank: int, world: int, port: int, out_dir: str, job: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        replicated = run(rank, world, out_dir, job)
        if rank == 0:
            save_checkpoint(replicated.state_dict(), os.path.join(out_dir, "final.ckpt"))
    finally:
        dist.destroy_process_group()
