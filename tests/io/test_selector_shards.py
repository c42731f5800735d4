"""Selector checkpoints that reshard (ies_fast.io.selector_shards): saved on 2 gloo
ranks in both storages (verified files, and torch.distributed.checkpoint with
safetensors), resumed on 1 and on 3, in both modes (replicated and
``shard_state=True``), each ending equal to the uninterrupted 2-rank run; a bad shard
is refused whole."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
import torch.distributed as dist

from ies_fast.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ies_fast.io.selector_shards import (DCP_FORMAT, MANIFEST, join_shards, load_selector, save_selector,
                                         shard_name)
from _support import sharded_worker as sw
from _support.spawn_ranks import launch

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

EPOCHS, SAVE_AT = 9, 5


@pytest.fixture(scope="module")
def saved_on_two(tmp_path_factory):
    """A 2-rank run of EPOCHS epochs that saved both selectors at epoch SAVE_AT."""
    out = tmp_path_factory.mktemp("two")
    launch("_support.sharded_worker", 2, out, {"epochs": EPOCHS, "save_at": SAVE_AT, "min_kept": 20,
                                               "storages": ["files", "dcp"]})
    return out


def _pairs(saved_on_two) -> list:
    """The replicated and sharded folders of each storage."""
    return [[str(saved_on_two / f"replicated{suffix}"), str(saved_on_two / f"sharded{suffix}")]
            for suffix in ("", "-dcp")]


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_two_rank_save_has_one_shard_per_rank_in_sharded_mode(saved_on_two):
    for mode, world in (("replicated", 1), ("sharded", 2)):
        manifest = json.loads((saved_on_two / mode / MANIFEST).read_text())
        assert manifest["world"] == world and manifest["epoch"] == SAVE_AT
        files = sorted(os.listdir(saved_on_two / mode / manifest["shards"]))
        assert files == [shard_name(r, world) for r in range(world)]


def test_dcp_save_is_one_safetensors_file_per_shard_and_no_pickle(saved_on_two):
    for mode, world in (("replicated", 1), ("sharded", 2)):
        manifest = json.loads((saved_on_two / f"{mode}-dcp" / MANIFEST).read_text())
        assert manifest["format"] == DCP_FORMAT and manifest["world"] == world and manifest["epoch"] == SAVE_AT
        files = sorted(os.listdir(saved_on_two / f"{mode}-dcp" / manifest["shards"]))
        assert files == sorted(manifest["files"]) and len(files) == world
        assert all(f.endswith(".safetensors") for f in files)  # no pickled .metadata


def test_resume_on_one_process_equals_the_uninterrupted_run(saved_on_two, tmp_path):
    job = {"epochs": EPOCHS, "min_kept": 20, "load": _pairs(saved_on_two)}
    resumed = sw.run(0, 1, str(tmp_path), job)
    assert resumed.epoch == EPOCHS
    assert _tensors_equal(resumed.state_dict(), load_checkpoint(saved_on_two / "final.ckpt"))


def test_resume_on_three_ranks_equals_the_uninterrupted_run(saved_on_two, tmp_path):
    # cross: the sharded selector resumes from the replicated save and the other way round
    job = {"epochs": EPOCHS, "min_kept": 20, "cross": True, "load": _pairs(saved_on_two)}
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


def _trained_pair():
    pair = sw.pair(min_kept=20)
    for selector in pair:
        for epoch in range(2):
            loss, index = sw.epoch_observations(epoch)
            selector.observe(loss, index)
            selector.step()
    return pair


@pytest.mark.parametrize("damage,error,match", [
    ("flip", CheckpointError, "SHA-256"),
    ("extra", ValueError, "extra"),
    ("missing", ValueError, "shard-00002"),
    ("epoch", ValueError, "epoch"),
    ("count", ValueError, "count"),
    ("link", Exception, "link|refused"),
])
def test_a_bad_dcp_shard_set_is_refused_and_nothing_is_applied(saved_on_two, tmp_path, damage, error, match):
    folder = tmp_path / "ckpt"
    shutil.copytree(saved_on_two / "sharded-dcp", folder)
    m = json.loads((folder / MANIFEST).read_text())
    shards = folder / m["shards"]
    second = shards / sorted(m["files"])[1]
    if damage == "flip":
        data = bytearray(second.read_bytes())
        data[-3] ^= 0xFF
        second.write_bytes(bytes(data))
    elif damage == "extra":
        (shards / "extra.safetensors").write_bytes(b"")
    elif damage == "missing":
        second.unlink()
    elif damage == "epoch":  # the manifest's plain values disagree with the rest
        m["plain"]["epoch"] += 1
        (folder / MANIFEST).write_text(json.dumps(m))
    elif damage == "count":  # a well-formed file, its digest updated, with a count no ring can hold
        from safetensors import safe_open
        from safetensors.torch import save_file
        with safe_open(str(second), framework="pt") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        tensors["count.00001"][3] = 250
        save_file(tensors, str(second), metadata=meta)
        m["files"][second.name] = hashlib.sha256(second.read_bytes()).hexdigest()
        (folder / MANIFEST).write_text(json.dumps(m))
    else:  # a file replaced by a link to a copy of itself
        copy = tmp_path / "elsewhere.safetensors"
        shutil.copy(second, copy)
        second.unlink()
        second.symlink_to(copy)
    for selector in _trained_pair():
        before = selector.state_dict()
        with pytest.raises(error, match=match):
            load_selector(selector, folder)
        assert _tensors_equal(selector.state_dict(), before)


def test_dcp_load_never_unpickles(saved_on_two, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("a DCP selector checkpoint was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    for selector, mode in zip(_trained_pair(), ("replicated", "sharded")):
        load_selector(selector, saved_on_two / f"{mode}-dcp")
        assert selector.epoch == SAVE_AT


def test_dcp_storage_refuses_state_json_cannot_hold_before_writing(tmp_path):
    selector = sw.pair()[0]
    state = selector.state_dict()
    selector.state_dict = lambda: dict(state, window=(3,))  # a tuple would come back as a list
    with pytest.raises(TypeError, match="window"):
        save_selector(selector, tmp_path / "ckpt", storage="dcp")
    assert not (tmp_path / "ckpt" / MANIFEST).exists()
    with pytest.raises(ValueError, match="storage"):
        save_selector(selector, tmp_path / "ckpt", storage="pickle")
