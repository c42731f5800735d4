"""``IESTrainer`` under ``accelerate launch`` and ``torchrun`` with 2 processes (CPU, gloo):
every rank trains on the same kept set with the same optimizer steps although the kept
count does not divide by 2 (each run has a timeout: unequal steps would hang DDP); a
rank SIGKILLed mid-run under torchrun, then ``train(resume_from_checkpoint=True)``,
ends equal to the uninterrupted run under ``accelerate launch`` (so the two launchers
agree); the checkpoint resumes on 1 and on 3 processes."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from _support import ddp_runs  # noqa: E402
from _support.spawn_ranks import free_port  # noqa: E402

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
    # the uninterrupted 2-process run's checkpoint after epoch 3 (epochs of 50 examples are 7 steps
    # of 2 x 4: step 21), and rank 0's log up to it
    shutil.copytree(uninterrupted / "checkpoint-21", tmp_path / "checkpoint-21")
    ddp_runs.copy_log_lines(uninterrupted, tmp_path, rank=0, lines=3)
    run(tmp_path, world, EPOCHS, "--resume")
    full = ddp_runs.rank_logs(uninterrupted, 2)[0]
    resumed = ddp_runs.rank_logs(tmp_path, world)
    tail = EPOCHS - 3
    assert all(r[-tail:] == resumed[0][-tail:] for r in resumed)  # the new ranks agree
    assert [e["world"] for e in resumed[0]][3:] == [world] * tail
    assert resumed[0][3]["kept"] == full[3]["kept"]  # the decision taken on 2 processes holds


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP2 under the Trainer needs 2 CUDA devices: "
                    "accelerate does not shard CPU ranks (MULTI_CPU ignores the FSDP plugin)")
def test_fsdp2_sharded_model_every_rank_the_same_kept_set_and_steps(tmp_path):
    run(tmp_path, 2, EPOCHS, "--fsdp")
    a, b = ddp_runs.rank_logs(tmp_path, 2)
    assert a == b and len(a) == EPOCHS and min(len(e["kept"]) for e in a) < 50
    assert all(e["steps"] == -(-len(e["kept"]) // 8) for e in a)
