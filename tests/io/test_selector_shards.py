"""Selector checkpoints that reshard (ies_fast.io.selector_shards): saved on 2 gloo
ranks, resumed on 1 and on 3, in both modes (replicated and ``shard_state=True``),
each ending equal to the uninterrupted 2-rank run; a bad shard is refused whole."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import torch.distributed as dist

from ies_fast.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ies_fast.io.selector_shards import MANIFEST, join_shards, load_selector, save_selector, shard_name
from _support import sharded_worker as sw
from _support.spawn_ranks import launch

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

EPOCHS, SAVE_AT = 9, 5


@pytest.fixture(scope="module")
def saved_on_two(tmp_path_factory):
    """A 2-rank run of EPOCHS epochs that saved both selectors at epoch SAVE_AT."""
    out = tmp_path_factory.mktemp("two")
    launch("_support.sharded_worker", 2, out, {"epochs": EPOCHS, "save_at": SAVE_AT, "min_kept": 20})
    return out


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_two_rank_save_has_one_shard_per_rank_in_sharded_mode(saved_on_two):
    for mode, world in (("replicated", 1), ("sharded", 2)):
        manifest = json.loads((saved_on_two / mode / MANIFEST).read_text())
        assert manifest["world"] == world and manifest["epoch"] == SAVE_AT
        files = sorted(os.listdir(saved_on_two / mode / manifest["shards"]))
        assert files == [shard_name(r, world) for r in range(world)]


def test_resume_on_one_process_equals_the_uninterrupted_run(saved_on_two, tmp_path):
    job = {"epochs": EPOCHS, "min_kept": 20, "load": [str(saved_on_two / "replicated"), str(saved_on_two / "sharded")]}
    resumed = sw.run(0, 1, str(tmp_path), job)
    assert resumed.epoch == EPOCHS
    assert _tensors_equal(resumed.state_dict(), load_checkpoint(saved_on_two / "final.ckpt"))


def test_resume_on_three_ranks_equals_the_uninterrupted_run(saved_on_two, tmp_path):
    # cross: the sharded selector resumes from the replicated save and the other way round
    job = {"epochs": EPOCHS, "min_kept": 20, "cross": True,
           "load": [str(saved_on_two / "replicated"), str(saved_on_two / "sharded")]}
    launch("_support.sharded_worker", 3, tmp_path, job)
    assert _tensors_equal(load_checkpoint(tmp_path / "final.ckpt"), load_checkpoint(saved_on_two / "final.ckpt"))


def _copy(saved_on_two, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(saved_on_two / "sharded", folder)
    shards = folder / json.loads((folder / MANIFEST).read_text())["shards"]
    return folder, shards / shard_name(1, 2)


def _tamper(path, change):
    state = load_checkpoint(path)
    change(state)
    save_checkpoint(state, path)


@pytest.mark.parametrize("damage,error,match", [
    ("flip", CheckpointError, "SHA-256|digest|corrupt"),
    ("count", ValueError, "count"),
    ("rank", ValueError, "shard"),
    ("epoch", ValueError, "epoch"),
    ("rows", ValueError, "rows"),
    ("manifest", CheckpointError, "shard-0000"),
])
def test_a_bad_shard_is_refused_and_nothing_is_applied(saved_on_two, tmp_path, damage, error, match):
    folder, shard = _copy(saved_on_two, tmp_path)
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-100] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "count":
        _tamper(shard, lambda s: s["count"].__setitem__(3, 250))
    elif damage == "rank":
        _tamper(shard, lambda s: s.__setitem__("shard", {"rank": 0, "world": 2}))
    elif damage == "epoch":
        _tamper(shard, lambda s: s.__setitem__("epoch", s["epoch"] + 1))
    elif damage == "rows":
        _tamper(shard, lambda s: s.__setitem__("hist", s["hist"][:-1]))
    else:  # the manifest names three shards where two were written
        m = json.loads((folder / MANIFEST).read_text())
        (folder / MANIFEST).write_text(json.dumps(dict(m, world=3)))
    for selector in sw.pair(min_kept=20):
        for epoch in range(2):
            loss, index = sw.epoch_observations(epoch)
            selector.observe(loss, index)
            selector.step()
        before = selector.state_dict()
        with pytest.raises(error, match=match):
            load_selector(selector, folder)
        assert _tensors_equal(selector.state_dict(), before)


def test_save_replaces_the_previous_set_and_a_killed_save_leaves_it_in_force(tmp_path):
    replicated, sharded = sw.pair()
    save_selector(sharded, tmp_path)
    first = json.loads((tmp_path / MANIFEST).read_text())["shards"]
    loss, index = sw.epoch_observations(0)
    sharded.observe(loss, index)
    sharded.step()
    save_selector(sharded, tmp_path)
    second = json.loads((tmp_path / MANIFEST).read_text())["shards"]
    assert second != first and not (tmp_path / first).exists()
    (tmp_path / "shards-00000000000000ff").mkdir()  # what a save killed before its manifest leaves
    load_selector(replicated, tmp_path)
    assert replicated.epoch == 1 and torch.equal(replicated.hist, sharded.hist)


def test_join_shards_interleaves_rows():
    state = {"kind": "X", "hist": torch.arange(7.0).unsqueeze(1), "count": torch.arange(7), "epoch": 2}
    shards = [dict(state, hist=state["hist"][r::3], count=state["count"][r::3], shard={"rank": r, "world": 3})
              for r in range(3)]
    joined = join_shards(shards, 7)
    assert _tensors_equal(joined, state)
    with pytest.raises(ValueError, match="shard"):
        join_shards(shards[::-1], 7)
