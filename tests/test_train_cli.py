"""``ies-fast train`` on the command line: bad arguments end in one line on stderr
(exit 2, no traceback); under torchrun (2 gloo ranks) the same command trains DDP
with rank-0 logs and checkpoints, and a single process resumes that run."""
import json
import os
import socket
import subprocess
import sys

import pytest

from ies_fast.cli import main
from ies_fast.train.logs import read_rows

from train_fixtures import has_dali

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line_error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_missing_cifar_data_dir(capsys, tmp_path):
    _one_line_error(capsys, ["train", "--dataset", "cifar10", "--out", str(tmp_path)], "--data-dir")
    _one_line_error(capsys, ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"),
                             "--out", str(tmp_path)], "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar.html")


@pytest.mark.parametrize("argv,needle", [
    (["--epochs", "0"], "--epochs"),
    (["--delta", "-1"], "--delta"),
    (["--anneal", "2"], "--anneal"),
    (["--loader", "dali"], "--loader"),
    (["--model", "resnet9000"], "model"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--device", "toaster"], "--device"),
])
def test_bad_values(capsys, tmp_path, argv, needle):
    _one_line_error(capsys, ["train", "--dataset", "digits", "--out", str(tmp_path), *argv], needle)


@pytest.mark.parametrize("argv", [["train", "--dataset", "svhn"], ["train", "--epochs", "x"], ["train", "--nope"]])
def test_argparse_rejects(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "error" in capsys.readouterr().err


def test_existing_run_needs_resume(capsys, tmp_path):
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path), "--no-progress", "--no-plot"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["epochs_run"] == 1 and "history" not in printed
    _one_line_error(capsys, argv, "--resume")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("loader", ["torch", pytest.param("dali", marks=pytest.mark.skipif(not has_dali(),
                                                                                          reason="needs nvidia-dali"))])
def test_torchrun_ddp_train_then_resume_on_one_process(tmp_path, loader):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    args = ["train", "--dataset", "synthetic", "--synthetic-size", "400", "--image-size", "8", "--model", "mlp",
            "--epochs", "6", "--batch-size", "16", "--delta", "0.05", "--order", "1", "--window", "2",
            "--loader", loader, "--no-progress", "--no-plot", "--out", str(tmp_path)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "ies_fast.cli", *args, "--stop-after", "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])  # printed once, by rank 0
    assert proc.stdout.count('"world_size"') == 1 and summary["world_size"] == 2
    rows = read_rows(tmp_path / "log.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    # every rank checked the selector fingerprints each epoch (the run would have failed otherwise);
    # removal happened, and 2 ranks padded to equal shards
    assert rows[-1]["backward_saved"] > 0
    resumed = subprocess.run([sys.executable, "-m", "ies_fast.cli", *args, "--resume"], env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    after = read_rows(tmp_path / "log.jsonl")
    assert [r["epoch"] for r in after] == list(range(6)) and after[:4] == rows
    assert json.loads(resumed.stdout)["world_size"] == 1


def test_imagenet_folder_errors(capsys, tmp_path):
    from ies_fast.train.models import import_torchvision
    from train_fixtures import write_image_folder

    _one_line_error(capsys, ["train", "--dataset", "imagenet", "--data-dir", str(tmp_path / "none"),
                             "--out", str(tmp_path / "o")], "train/<class>", "val/<class>")
    if import_torchvision()[0] is None:
        data = write_image_folder(tmp_path / "imnet")
        _one_line_error(capsys, ["train", "--dataset", "imagenet", "--data-dir", data, "--loader", "torch",
                                 "--model", "mlp", "--image-size", "32", "--out", str(tmp_path / "o")],
                        "torchvision", "--loader dali")
