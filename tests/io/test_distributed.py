"""The selector under gloo with 2 and 3 CPU processes: every rank ends with the
same state, equal to one process fed all observations and to the reference
criterion; a state saved from 2 ranks resumes on 3 ranks or 1 process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ies_fast import ReferenceCriterion
from ies_fast.io import distributed as d
from ies_fast.io.checkpoint import load_checkpoint

from _support import dist_worker as w

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

EPOCHS = 9
JOIN_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, out_dir, job: dict) -> list[dict]:
    """Run ``dist_worker.worker`` on ``world`` spawned processes; fail (never hang)
    if one dies or outlives ``JOIN_TIMEOUT_S``. Returns each rank's snapshot."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=w.worker, args=(r, world, port, str(out_dir), job), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_TIMEOUT_S)
    alive = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    if alive:
        pytest.fail(f"ranks {alive} of {world} still running after {JOIN_TIMEOUT_S}s (hang in a collective?)")
    codes = [p.exitcode for p in procs]
    if any(c != 0 for c in codes):
        pytest.fail(f"rank exit codes {codes} (world {world}, job {job})")
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def single_process(job: dict, epochs: int) -> tuple[dict, list[bool]]:
    """One selector and the reference criterion fed every observation."""
    sel = w.new_selector()
    ref = ReferenceCriterion(w.S, w.DELTA, w.ORDER, w.WINDOW)
    for epoch in range(epochs):
        loss, index = w.epoch_observations(epoch, job["overlap"])
        sel.observe(loss, index)
        ref.observe(loss.tolist(), index.tolist())
        sel.step()
        ref_mask = ref.step()
    return w.snapshot(sel), ref_mask


def assert_same(a: dict, b: dict, what: str) -> None:
    for key in ("hist", "count", "mastered", "kept"):
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"
    assert a["epoch"] == b["epoch"], what
    for key in ("kept", "removed", "mastered", "observed", "eligible", "nonfinite", "nonfinite_total", "backward_saved"):
        assert a["stats"][key] == b["stats"][key], f"{what}: stats[{key!r}] {a['stats'][key]} != {b['stats'][key]}"


@pytest.mark.parametrize("world,overlap", [(2, False), (3, True)])
def test_ranks_agree_with_single_process_and_reference(tmp_path, world, overlap):
    job = {"overlap": overlap, "epochs": EPOCHS, "per_exit": world == 3}
    snaps = launch(world, tmp_path, job)
    single, ref_mask = single_process(job, EPOCHS)
    for r, snap in enumerate(snaps):
        assert_same(snap, single, f"rank {r} vs single process")
    if job["per_exit"]:  # the per-exit selector merges through its inner IES
        pe = w.new_per_exit_selector()
        w.feed(pe, range(EPOCHS), overlap, 0, 1)
        for r, snap in enumerate(snaps):
            assert torch.equal(snap["per_exit"], pe.exit_mastered_mask()), f"rank {r}: per-exit masks differ"
        assert bool(pe.exit_mastered_mask()[:, 0].any())
    assert snaps[0]["mastered"].tolist() == ref_mask
    # the test must be able to fail: something got mastered, and not everything
    assert 0 < int(single["mastered"].sum()) < w.S


@pytest.mark.parametrize("resume_world", [3, 1])
def test_resume_on_another_world_size(tmp_path, resume_world):
    job = {"overlap": True, "epochs": 5, "save_at": 5}
    launch(2, tmp_path, job)  # 2 ranks run epochs 0-4 and checkpoint
    ckpt = os.path.join(tmp_path, "selector.ckpt")
    resume = {"overlap": True, "epochs": EPOCHS, "resume_from": ckpt}
    if resume_world == 1:
        sel = w.new_selector()
        sel.load_state_dict(load_checkpoint(ckpt)["selector"])
        w.feed(sel, range(sel.epoch, EPOCHS), True, 0, 1)
        snaps = [w.snapshot(sel)]
    else:
        snaps = launch(resume_world, tmp_path, resume)
    single, _ = single_process(resume, EPOCHS)
    for r, snap in enumerate(snaps):
        assert_same(snap, single, f"resumed rank {r} of {resume_world} vs uninterrupted")


def test_helpers_without_process_group():
    assert d.get_rank() == 0 and d.get_world_size() == 1 and d.is_main_process()
    model = torch.nn.Linear(2, 2)
    assert d.wrap_model(model, torch.device("cpu")) is model
    assert d.unwrap_model(model) is model
    sel = w.new_selector()
    d.broadcast_selector(sel)
    d.assert_selector_in_sync(sel)
    before = d.selector_fingerprint(sel)
    sel.observe(torch.rand(5), torch.arange(5))
    sel.step()
    assert not torch.equal(before, d.selector_fingerprint(sel))


def test_torchrun_loop_with_helpers(tmp_path):
    """A DDP loop built from ies_fast.io.distributed under torchrun (2 gloo ranks):
    identical selector and model on both ranks, rank 0 checkpoints."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", os.path.join(root, "tests", "_support", "torchrun_script.py"), str(tmp_path), "6"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun run did not finish in 120 s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert a["world"] == b["world"] == 2 and a["ranks"] == 2
    assert a["trained"] == b["trained"] > 0
    for k in ("hist", "count", "mastered", "totals"):
        assert torch.equal(a["selector"][k], b["selector"][k]), k
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["stats"]["mastered"] > 0 and a["stats"]["kept"] > 0
    saved = load_checkpoint(tmp_path / "ckpt.pt")
    assert torch.equal(saved["selector"]["mastered"], a["selector"]["mastered"])
