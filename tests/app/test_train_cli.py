"""``ies-fast train`` on the command line: bad arguments end in one line on stderr
(exit 2, no traceback); under torchrun (2 gloo ranks) the same command trains DDP
with rank-0 logs and checkpoints, and a single process resumes that run."""
import json
import os
import socket
import subprocess
import sys

import pytest

from ies_fast.app.cli import main
from ies_fast.app.train.logs import read_rows

from _support.cli_helpers import one_line_error
from _support.train_fixtures import has_dali

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_missing_cifar_data_dir(capsys, tmp_path):
    one_line_error(capsys, ["train", "--dataset", "cifar10", "--out", str(tmp_path)], "--data-dir")
    one_line_error(capsys, ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"),
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
    one_line_error(capsys, ["train", "--dataset", "digits", "--out", str(tmp_path), *argv], needle)


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
    one_line_error(capsys, argv, "--resume")


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
           f"--master_port={_free_port()}", "-m", "ies_fast.app.cli", *args, "--stop-after", "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])  # printed once, by rank 0
    assert proc.stdout.count('"world_size"') == 1 and summary["world_size"] == 2
    rows = read_rows(tmp_path / "log.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    # every rank checked the selector fingerprints each epoch (the run would have failed otherwise);
    # removal happened, and 2 ranks padded to equal shards
    assert rows[-1]["backward_saved"] > 0
    resumed = subprocess.run([sys.executable, "-m", "ies_fast.app.cli", *args, "--resume"], env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    after = read_rows(tmp_path / "log.jsonl")
    assert [r["epoch"] for r in after] == list(range(1, 7)) and after[:4] == rows
    assert json.loads(resumed.stdout)["world_size"] == 1


def test_dist_timeout_ends_the_wait_for_a_frozen_rank():
    """Under torchrun with gloo, rank 1 freezes for 300 s; rank 0's all_reduce fails
    after --dist-timeout's value (3 s) instead of gloo's default 600 s."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", os.path.join(ROOT, "tests", "_support", "dist_timeout_worker.py"), "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert "TIMED OUT" in proc.stdout and "Timed out" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert proc.returncode != 0


def test_imagenet_folder_errors(capsys, tmp_path):
    from ies_fast.app.train.models import import_torchvision
    from _support.train_fixtures import write_image_folder

    one_line_error(capsys, ["train", "--dataset", "imagenet", "--data-dir", str(tmp_path / "none"),
                             "--out", str(tmp_path / "o")], "train/<class>", "val/<class>")
    data = write_image_folder(tmp_path / "imnet")  # --loader torch decodes with Pillow: no torchvision needed
    assert main(["train", "--dataset", "imagenet", "--data-dir", data, "--loader", "torch", "--model", "mlp",
                 "--image-size", "32", "--epochs", "1", "--workers", "0", "--no-progress", "--no-plot",
                 "--out", str(tmp_path / "o")]) == 0
    if import_torchvision()[0] is None:  # the paper's resnet101 still needs it, and says so
        one_line_error(capsys, ["train", "--dataset", "imagenet", "--data-dir", data, "--image-size", "32",
                                 "--out", str(tmp_path / "o2")], "torchvision")


TINY = ["train", "--dataset", "synthetic", "--synthetic-size", "64", "--image-size", "4", "--model", "mlp",
        "--no-plot"]


def test_resume_rule_end_to_end(capsys, tmp_path):
    """One rule: flags left out keep the run's values, run-defining flags that differ
    are refused (all named at once), changeable ones apply, config.json records
    what the run uses."""
    out = str(tmp_path)
    assert main([*TINY, "--epochs", "3", "--lr", "0.07", "--batch-size", "16", "--stop-after", "1", "--out", out,
                 "--no-progress"]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, ["train", "--out", out, "--resume", "--lr", "0.1", "--batch-size", "8",
                                   "--momentum", "0.5", "--score-every", "2", "--lr-gamma", "0.5"],
                          "--lr 0.07 (now 0.1)", "--batch-size 16 (now 8)", "--momentum", "--score-every", "--lr-gamma")
    assert "--dataset" not in err  # left out: taken from the run, not the default digits
    assert main(["train", "--out", out, "--resume", "--print-config"]) == 0  # what the resumed run would use
    assert json.loads(capsys.readouterr().out)["lr"] == 0.07
    assert main(["train", "--out", out, "--resume", "--workers", "2", "--stop-after", "2", "--no-progress"]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["dataset"], config["lr"], config["batch_size"], config["workers"], config["stop_after"]) == (
        "synthetic", 0.07, 16, 2, 2)
    assert [r["epoch"] for r in read_rows(tmp_path / "log.jsonl")] == [1, 2]
    assert [r["lr"] for r in read_rows(tmp_path / "log.jsonl")] == pytest.approx([0.07, 0.07 * 0.96])  # exp recipe


def test_epochs_count_from_one_everywhere_and_warm_up_is_shown(capsys, tmp_path):
    """Console, log.jsonl, log.csv and summary.json all say epoch 1..E; while IES
    cannot remove anything yet (order + window epochs) the console says so."""
    assert main([*TINY, "--epochs", "3", "--order", "1", "--window", "1", "--batch-size", "16",
                 "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout holds the summary alone; epoch lines go to stderr
    lines = [l for l in captured.err.replace("\r", "\n").splitlines() if l.startswith("epoch ") and "/3 " in l]
    assert [l.split()[1] for l in lines] == ["1/3", "2/3", "3/3"], captured.err
    assert "warming up: nothing removed before epoch 3" in lines[0] and "warming up" not in lines[1] + lines[2]
    rows = read_rows(tmp_path / "log.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and summary["epochs_run"] == 3
    assert (tmp_path / "log.csv").read_text().splitlines()[1].startswith("1,")
    assert [r["epoch"] for r in json.loads((tmp_path / "summary.json").read_text())["history"]] == [1, 2, 3]


def test_help_shows_defaults_once_and_the_recipes(capsys):
    from ies_fast.app.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text
    flat = " ".join(text[text.index("\ndata:"):].split())  # the flag descriptions, past the usage lines
    for flag in ("--epochs EPOCHS epochs", "--optimizer {sgd,adam,adamw} optimizer", "--momentum MOMENTUM SGD",
                 "--weight-decay WEIGHT_DECAY L2", "--patience PATIENCE --early-stop", "--seed SEED seeds",
                 "--dist-timeout SECONDS", "--print-config"):
        assert flag in flat, flag
    for start, end in (("--loader {", "--workers"), ("--model MODEL", "--optimizer"), ("--device DEVICE", "--deterministic")):
        own_help = flat[flat.index(start):flat.index(end, flat.index(start))]
        assert own_help.count("default") == 1, own_help
    recipes = text[text.index("recipes ("):]
    digits = next(l.split() for l in recipes.splitlines() if l.strip().startswith("digits "))
    assert digits[:12] == ["digits", "mlp", "60", "64", "sgd", "0.05", "0.0", "constant", "0.0002", "2", "3", "0.0"]
    from ies_fast.app.train.config import RECIPES

    assert digits[12:] == [str(RECIPES["digits"]["min_kept"]), RECIPES["digits"]["eligibility"], "every", "1"]
    mnist1d = next(l.split() for l in recipes.splitlines() if l.strip().startswith("mnist1d "))
    assert mnist1d[8] == "0.01" and mnist1d[-2] == "backoff"  # the measured winners (docs/training.md)
    fashion = next(l.split() for l in recipes.splitlines() if l.strip().startswith("fashion-mnist "))
    assert fashion[8] == "0.2" and fashion[-2:] == ["backoff", "5"]  # the test pass every 5 epochs (issue 27)
    mnist = next(l.split() for l in recipes.splitlines() if l.strip().startswith("mnist "))
    assert mnist[8:11] == ["0.3", "1", "2"] and mnist[-2:] == ["backoff", "4"]  # δ, order, window: its front


def test_print_config_shows_the_recipe_before_a_run(capsys, tmp_path):
    out = tmp_path / "never"
    assert main(["train", "--dataset", "digits", "--out", str(out), "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["lr"], config["batch_size"], config["delta"], config["lr_schedule"], config["epochs"]) == (
        0.05, 64, 2e-4, "constant", 60)
    assert not out.exists()
