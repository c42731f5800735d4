"""``IESCallback`` under ``Trainer(strategy="ddp", accelerator="cpu", devices=2)``: every
rank trains on the same kept set with the same number of optimizer steps although the
kept count does not divide by 2 (each run has a timeout: unequal steps would hang
DDP); a rank SIGKILLed mid-epoch, then ``fit(ckpt_path=last.ckpt)``, ends equal to the
uninterrupted run; the checkpoint resumes on 1 and on 3 processes. The uninterrupted
run is started by torchrun (Lightning finds the processes in its environment), the
others by Lightning itself: the two launchers agree. With the model's parameters
sharded by FSDP2 (``ModelParallelStrategy`` + ``fully_shard``, which Lightning runs on
the CPU) the ranks agree the same way. With ``IESCallback(shard_state=True)`` (a ShardedIES:
each rank holds its own samples' state) the run equals the replicated one's (same
policy) epoch by epoch and weight by weight, rank 0's checkpoint holds the whole selector
state bit for bit, and it resumes on 2 processes equal to the uninterrupted run (on 3
with ``IES_FAST_FULL_DDP=1``)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("sklearn")

from _support import ddp_runs  # noqa: E402
from _support.sharded_worker import assert_same_state  # noqa: E402

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "_support" / "lightning_ddp_resume_worker.py"
EPOCHS, TIMEOUT_S = 6, 400


def run(out: Path, devices: int, *extra, check: bool = True) -> int:
    """The worker, its ``devices`` processes started by Lightning."""
    return ddp_runs.run([SCRIPT, out, devices, *extra], TIMEOUT_S, check)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    ddp_runs.torchrun(SCRIPT, 2, out, 2, EPOCHS, timeout_s=TIMEOUT_S)
    return out


def _same_kept_set_and_steps(out: Path) -> None:
    a, b = ddp_runs.rank_logs(out, 2)
    assert a == b and len(a) == EPOCHS
    kept = [len(e["kept"]) for e in a]
    assert min(kept) < 1500 and any(k % 2 for k in kept), kept  # IES removed samples, and an odd count was run
    assert all(e["steps"] == -(-(-(-len(e["kept"]) // 2)) // 64) for e in a)  # ceil(ceil(k / 2) / 64)


def test_every_rank_the_same_kept_set_and_steps_with_uneven_counts(uninterrupted):
    _same_kept_set_and_steps(uninterrupted)


def test_fsdp2_sharded_model_every_rank_the_same_kept_set_and_steps(tmp_path):
    run(tmp_path, 2, EPOCHS, "--fsdp")
    _same_kept_set_and_steps(tmp_path)
    assert (tmp_path / "ckpt" / "last.ckpt").is_dir()  # Lightning's distributed (DCP) checkpoint of the shards


def test_sigkill_then_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    assert run(tmp_path, 2, EPOCHS, "--kill", 3, 2, check=False) != 0
    run(tmp_path, 2, EPOCHS, "--resume")
    full, resumed = ddp_runs.rank_logs(uninterrupted, 2)[0], ddp_runs.rank_logs(tmp_path, 2)[0]
    assert [e["epoch"] for e in resumed] == [0, 1, 2, 3, 4, 5]  # epoch 3 ran again from its start
    assert resumed == full
    a, b = torch.load(uninterrupted / "final.pt"), torch.load(tmp_path / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("devices", ddp_runs.world_sizes(1, 3))
def test_resume_on_another_number_of_processes(uninterrupted, tmp_path, devices):
    after_epoch_3(uninterrupted, tmp_path)
    run(tmp_path, devices, EPOCHS, "--resume")
    ddp_runs.assert_resumed(uninterrupted, tmp_path, devices, done=3)


def after_epoch_3(full: Path, out: Path) -> None:
    """``full``'s checkpoint after epoch 3 as ``out``'s last.ckpt, and rank 0's log up to it."""
    (out / "ckpt").mkdir()
    (saved,) = (full / "ckpt").glob("epoch=2-*.ckpt")
    shutil.copyfile(saved, out / "ckpt" / "last.ckpt")
    ddp_runs.copy_log_lines(full, out, rank=0, lines=3)


sharded = ddp_runs.sharded_fixture(run, 2, EPOCHS)  # (sharded, replicated) runs on 2 processes


def test_sharded_state_trains_as_the_replicated_selector(sharded):
    _same_kept_set_and_steps(sharded[0])
    ddp_runs.assert_same_runs(*sharded)  # kept sets and steps, rank by rank, and the weights
    for saved in sorted((sharded[1] / "ckpt").glob("epoch=*.ckpt")):  # rank 0 wrote the whole state
        got, expected = (torch.load(folder / "ckpt" / saved.name, weights_only=True)["callbacks"]["IESCallback"]
                         for folder in sharded)
        assert_same_state(got["selector"], expected["selector"], saved.name)


@pytest.mark.parametrize("devices", ddp_runs.world_sizes(2, 3))
def test_sharded_checkpoint_resumes(sharded, tmp_path, devices):
    after_epoch_3(sharded[0], tmp_path)
    run(tmp_path, devices, EPOCHS, "--shard", "--resume")
    ddp_runs.assert_resumed(sharded[0], tmp_path, devices, done=3)
