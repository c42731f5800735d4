"""``IESTrainer`` under ``accelerate launch`` and ``torchrun`` with 2 processes (CPU, gloo):
every rank trains on the same kept set with the same optimizer steps although the kept
count does not divide by 2 (each run has a timeout: unequal steps would hang DDP); a
rank SIGKILLed mid-run under torchrun, then ``train(resume_from_checkpoint=True)``,
ends equal to the uninterrupted run under ``accelerate launch`` (so the two launchers
agree); the checkpoint resumes on 1 and on 3 processes. With ``ies={..., "shard_state": True}``
(a ShardedIES: each rank holds its own examples' state) the run equals the replicated
one's (same policy) epoch by epoch and weight by weight, every checkpoint's selector file
holds the whole state bit for bit, and it resumes on 3 processes (on 2, equal to the
uninterrupted run, with ``IES_FAST_FULL_DDP=1``)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from _support import ddp_runs  # noqa: E402
from _support.sharded_worker import assert_same_state  # noqa: E402
from _support.spawn_ranks import free_port  # noqa: E402
from ies_fast.integrations._hf_checkpoint import read_state  # noqa: E402

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "_support" / "hf_ddp_worker.py"
EPOCHS, TIMEOUT_S = 6, 300


def run(out: Path, world: int, *extra, check: bool = True) -> int:
    """The worker under ``torchrun --nproc_per_node world``."""
    return ddp_runs.torchrun(SCRIPT, world, out, *extra, timeout_s=TIMEOUT_S, check=check)


def accelerate_launch(out: Path, world: int, *extra) -> int:
    """The worker under ``accelerate launch --multi_gpu --num_processes world`` (as Hugging
    Face users start a Trainer; on a machine without CUDA it runs CPU processes over gloo)."""
    return ddp_runs.run(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", world,
                         "--num_machines", 1, "--mixed_precision", "no", "--dynamo_backend", "no",
                         "--main_process_port", free_port(), SCRIPT, out, *extra], TIMEOUT_S)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    accelerate_launch(out, 2, EPOCHS)
    return out


def test_every_rank_the_same_kept_set_and_steps_with_uneven_counts(uninterrupted):
    a, b = ddp_runs.rank_logs(uninterrupted, 2)
    assert a == b and len(a) == EPOCHS
    kept = [len(e["kept"]) for e in a]
    assert min(kept) < 50 and any(k % 8 for k in kept), kept  # removed samples; batches of 2 x 4 do not divide
    assert all(e["steps"] == -(-len(e["kept"]) // 8) for e in a)  # ceil(k / (2 ranks x 4))


def test_sigkill_then_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    assert run(tmp_path, 2, EPOCHS, "--kill", 20, check=False) != 0
    run(tmp_path, 2, EPOCHS, "--resume")
    full, resumed = ddp_runs.rank_logs(uninterrupted, 2)[0], ddp_runs.rank_logs(tmp_path, 2)[0]
    done = {e["epoch"]: e for e in resumed}  # the killed epoch was logged by no one, then ran again
    assert [done[e["epoch"]] for e in full] == full
    a, b = torch.load(uninterrupted / "final.pt"), torch.load(tmp_path / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("world", ddp_runs.world_sizes(1, 3))
def test_resume_on_another_number_of_processes(uninterrupted, tmp_path, world):
    after_epoch_3(uninterrupted, tmp_path)
    run(tmp_path, world, EPOCHS, "--resume")
    ddp_runs.assert_resumed(uninterrupted, tmp_path, world, done=3)


def after_epoch_3(full: Path, out: Path) -> None:
    """``full``'s checkpoint after epoch 3 (epochs of 50 examples are 7 steps of 2 x 4:
    step 21) in ``out``, and rank 0's log up to it."""
    shutil.copytree(full / "checkpoint-21", out / "checkpoint-21")
    ddp_runs.copy_log_lines(full, out, rank=0, lines=3)


sharded = ddp_runs.sharded_fixture(run, 2, EPOCHS)  # (sharded, replicated) runs on 2 processes


def test_sharded_state_trains_as_the_replicated_selector(sharded):
    ddp_runs.assert_same_runs(*sharded)  # kept sets and steps, rank by rank, and the weights
    assert min(len(e["kept"]) for e in ddp_runs.rank_logs(sharded[0], 1)[0]) < 50  # IES removed examples
    folders = sorted(p.name for p in sharded[1].glob("checkpoint-*"))
    assert len(folders) >= 3
    for name in folders:  # rank 0 wrote the whole state, gathered from both ranks
        got, expected = (read_state(folder / name) for folder in sharded)
        assert_same_state(got["selector"], expected["selector"], name)


@pytest.mark.parametrize("world", ddp_runs.world_sizes(3, 2))
def test_sharded_checkpoint_resumes(sharded, tmp_path, world):
    after_epoch_3(sharded[0], tmp_path)
    run(tmp_path, world, EPOCHS, "--shard", "--resume")
    ddp_runs.assert_resumed(sharded[0], tmp_path, world, done=3)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP2 under the Trainer needs 2 CUDA devices: "
                    "accelerate does not shard CPU ranks (MULTI_CPU ignores the FSDP plugin)")
def test_fsdp2_sharded_model_every_rank_the_same_kept_set_and_steps(tmp_path):
    run(tmp_path, 2, EPOCHS, "--fsdp")
    a, b = ddp_runs.rank_logs(tmp_path, 2)
    assert a == b and len(a) == EPOCHS and min(len(e["kept"]) for e in a) < 50
    assert all(e["steps"] == -(-len(e["kept"]) // 8) for e in a)
