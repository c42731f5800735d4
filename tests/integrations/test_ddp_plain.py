"""``IESDataset`` in a plain DDP loop on 2 gloo processes, both selector modes: every
rank trains on the same kept set and takes the same number of optimizer steps although
kept counts do not divide by the world size (the run has a timeout: unequal steps would
hang DDP's all-reduce); a rank SIGKILLed mid-epoch and a resume from the last
checkpoint end equal to the uninterrupted run; the checkpoint resumes on 1 and 3 ranks."""
from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

from ies_fast.io.checkpoint import load_checkpoint
from _support import ddp_runs
from _support.spawn_ranks import launch

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")]

EPOCHS, TIMEOUT_S = 7, 120


def final(folder) -> tuple[dict, list]:
    state = load_checkpoint(folder / "final.ckpt")
    return state, json.loads(state["log"])


@pytest.fixture(scope="module", params=[False, True], ids=["replicated", "sharded"])
def uninterrupted(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    launch("_support.ddp_plain_worker", 2, out, {"epochs": EPOCHS, "shard_state": request.param}, timeout_s=TIMEOUT_S)
    return request.param, out


def test_same_kept_set_and_steps_on_every_rank_with_uneven_counts(uninterrupted):
    _, out = uninterrupted
    _, log = final(out)
    kept = [len(e["kept"]) for e in log]
    assert len(log) == EPOCHS and min(kept) < 45, kept  # IES removed samples
    assert any(k % 2 for k in kept), f"no epoch with an odd kept count: {kept}"  # the uneven case was run
    assert all(e["steps"] == -(-(-(-len(e["kept"]) // 2)) // 4) for e in log)  # ceil(ceil(k / 2) / 4)


def test_sigkill_of_one_rank_then_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    shard_state, full = uninterrupted
    codes = launch("_support.ddp_plain_worker", 2, tmp_path, {"epochs": EPOCHS, "shard_state": shard_state,
                                                   "kill_at": [4, 1]}, timeout_s=TIMEOUT_S, check=False)
    assert codes[1] == -9 and codes[0] != 0, codes
    launch("_support.ddp_plain_worker", 2, tmp_path, {"epochs": EPOCHS, "shard_state": shard_state, "resume": True},
           timeout_s=TIMEOUT_S)
    (a, log_a), (b, log_b) = final(full), final(tmp_path)
    assert log_a == log_b
    assert torch.equal(a["mastered"], b["mastered"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("world", ddp_runs.world_sizes(3, 1))
def test_resume_at_another_world_size(uninterrupted, tmp_path, world):
    shard_state, full = uninterrupted
    if not shard_state and not ddp_runs.FULL_DDP:  # tests/io/test_distributed.py changes the world of replicated runs
        pytest.skip("set IES_FAST_FULL_DDP=1 for every world-size change")
    codes = launch("_support.ddp_plain_worker", 2, tmp_path, {"epochs": 4, "shard_state": shard_state},
                   timeout_s=TIMEOUT_S)
    assert codes == [0, 0]
    launch("_support.ddp_plain_worker", world, tmp_path, {"epochs": EPOCHS, "shard_state": shard_state, "resume": True},
           timeout_s=TIMEOUT_S)
    _, log_full = final(full)
    _, log = final(tmp_path)
    assert [e["world"] for e in log] == [2] * 4 + [world] * (EPOCHS - 4)
    assert log[:4] == log_full[:4]
    assert log[4]["kept"] == log_full[4]["kept"]  # the decision taken on 2 ranks holds on the new world
