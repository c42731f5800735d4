"""``ies-fast train`` end to end on tiny data: logs, summary, plot and checkpoint;
the schedule follows epochs; CIFAR and ImageNet layouts through both loaders;
selectors, annealing and early stops; a run killed with SIGKILL and resumed
equals an uninterrupted one."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ies_fast.io.checkpoint import load_checkpoint
from ies_fast.app.train.config import TrainConfig
from ies_fast.app.train.logs import COLUMNS, read_rows
from ies_fast.app.train.loop import RunError, train

from _support.train_fixtures import has_dali, write_cifar10, write_cifar100, write_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUIET = dict(progress=False, plot=False)


needs_dali = pytest.mark.skipif(not has_dali(), reason="needs nvidia-dali")


def test_digits_run_writes_logs_summary_plot_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    summary = train(TrainConfig(dataset="digits", epochs=12, out=str(out), progress=False))
    rows = read_rows(out / "log.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, 13)) and rows == summary["history"]  # counted from 1
    with open(out / "log.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS and len(list(reader)) == 12
    assert json.loads((out / "summary.json").read_text())["test_acc"] == summary["test_acc"]
    assert (out / "curves.png").stat().st_size > 1000
    assert summary["test_acc"] > 0.9 and summary["epochs_run"] == 12
    # the counts add up: backward samples + saved = epochs x samples
    last = rows[-1]
    assert last["backward_samples"] + last["backward_saved"] == 12 * last["num_samples"]
    assert summary["backward_saved_fraction"] == pytest.approx(last["backward_saved"] / (12 * last["num_samples"]))
    assert all(r["time_epoch_s"] >= r["time_train_s"] > 0 for r in rows)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 11 and {"model", "optimizer", "schedule", "selector", "sampler", "rng", "history"} <= set(ckpt)
    assert ckpt["sampler"]["epoch"] == 11


def test_lr_moves_one_epoch_per_epoch_however_many_samples_are_kept(tmp_path):
    s = train(TrainConfig(dataset="digits", epochs=14, lr=0.05, lr_schedule="exp", lr_gamma=0.8, delta=0.05,
                          out=str(tmp_path), **QUIET))
    kept = [r["kept"] for r in s["history"]]
    assert min(kept) < kept[0]  # epochs did shrink
    for r in s["history"]:
        assert r["lr"] == pytest.approx(0.05 * 0.8 ** (r["epoch"] - 1))  # epochs count from 1


def test_cifar10_folder_with_the_recipe_model(tmp_path):
    data = write_cifar10(tmp_path / "data", n_train_per_batch=8, n_test=12)
    s = train(TrainConfig(dataset="cifar10", data_dir=data, epochs=2, batch_size=16, out=str(tmp_path / "o"), **QUIET))
    assert s["model"] == "resnet18" and s["epochs_run"] == 2 and rows_ok(s)


def test_cifar100_folder_torch_loader(tmp_path):
    data = write_cifar100(tmp_path / "data", n_train=40, n_test=10)
    s = train(TrainConfig(dataset="cifar100", data_dir=data, model="mlp", epochs=3, batch_size=8,
                          out=str(tmp_path / "o"), **QUIET))
    assert s["history"][0]["num_samples"] == 40 and rows_ok(s)


@needs_dali
def test_cifar10_folder_dali_loader(tmp_path):
    data = write_cifar10(tmp_path / "data", n_train_per_batch=8, n_test=12)
    s = train(TrainConfig(dataset="cifar10", data_dir=data, model="mlp", loader="dali", epochs=8, batch_size=8,
                          delta=0.5, window=2, order=1, out=str(tmp_path / "o"), **QUIET))
    assert rows_ok(s)
    # removal happened, and the DALI epochs followed the shrinking kept list
    assert s["backward_saved"] > 0 and min(r["kept"] for r in s["history"]) < 40


@needs_dali
def test_imagenet_folder_dali_loader(tmp_path):
    data = write_image_folder(tmp_path / "imnet", classes=3, per_class=4, size=40)
    s = train(TrainConfig(dataset="imagenet", data_dir=data, model="mlp", image_size=32, epochs=2, batch_size=4,
                          eval_batch_size=8, workers=1, out=str(tmp_path / "o"), **QUIET))
    assert s["history"][0]["num_samples"] == 12 and rows_ok(s)


def test_imagenet_folder_torch_loader(tmp_path):
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # missing, or a build that does not match torch
        pytest.skip(f"torchvision not usable: {exc}")
    data = write_image_folder(tmp_path / "imnet", classes=3, per_class=4, size=40)
    s = train(TrainConfig(dataset="imagenet", data_dir=data, model="mlp", loader="torch", image_size=32, epochs=2,
                          batch_size=4, workers=0, out=str(tmp_path / "o"), **QUIET))
    assert rows_ok(s)


def rows_ok(summary) -> bool:
    h = summary["history"]
    return all(0.0 <= r["test_acc"] <= 1.0 and r["train_loss"] == r["train_loss"] for r in h)


@pytest.mark.parametrize("selector", ["none", "random", "infobatch"])
def test_other_selectors_through_the_same_loop(tmp_path, selector):
    s = train(TrainConfig(dataset="digits", epochs=6, selector=selector, random_ratio=0.25, out=str(tmp_path),
                          **QUIET))
    if selector == "none":
        assert s["backward_saved"] == 0 and s["scored_samples"] == 0
    elif selector == "random":
        assert s["backward_saved_fraction"] == pytest.approx(0.25, abs=0.01)
    else:
        assert 0 < s["backward_saved_fraction"] < 0.5


def test_amp_and_compile(tmp_path):
    base = train(TrainConfig(dataset="digits", epochs=2, out=str(tmp_path / "fp32"), **QUIET))
    amp = train(TrainConfig(dataset="digits", epochs=2, amp=True, out=str(tmp_path / "amp"), **QUIET))
    assert amp["history"][0]["train_loss"] != base["history"][0]["train_loss"]  # bf16 forward really ran
    assert amp["history"][0]["train_loss"] == pytest.approx(base["history"][0]["train_loss"], rel=0.05)
    compiled = train(TrainConfig(dataset="digits", epochs=1, compile=True, out=str(tmp_path / "c"), **QUIET))
    assert compiled["history"][0]["train_loss"] == pytest.approx(base["history"][0]["train_loss"], rel=1e-3)
    keys = load_checkpoint(tmp_path / "c" / "checkpoint.pt")["model"].keys()
    assert not any(k.startswith("_orig_mod") for k in keys)  # the checkpoint holds the plain module


def test_anneal_trains_the_last_epochs_on_everything(tmp_path):
    s = train(TrainConfig(dataset="digits", epochs=10, delta=10.0, anneal=0.3, out=str(tmp_path), **QUIET))
    h = s["history"]
    n = h[0]["num_samples"]
    assert min(r["kept"] for r in h[:7]) < n  # removal was on before
    assert [r["kept"] for r in h[7:]] == [n] * 3 and not any(r["removal_enabled"] for r in h[7:])


def test_early_stop_when_everything_is_mastered(tmp_path):
    s = train(TrainConfig(dataset="digits", epochs=30, delta=100.0, early_stop="mastered", out=str(tmp_path), **QUIET))
    assert s["stopped_early"] and s["epochs_run"] == 5  # eligible after order + window = 5 epochs


def test_an_existing_run_is_not_overwritten_and_resume_checks_the_config(tmp_path):
    train(TrainConfig(dataset="digits", epochs=2, out=str(tmp_path), **QUIET))
    with pytest.raises(RunError, match="--resume"):
        train(TrainConfig(dataset="digits", epochs=2, out=str(tmp_path), **QUIET))
    with pytest.raises(RunError, match="--delta"):
        train(TrainConfig(dataset="digits", epochs=2, delta=0.5, out=str(tmp_path), resume=True, **QUIET))
    # a finished run resumed is read back, not repeated
    s = train(TrainConfig(dataset="digits", epochs=2, out=str(tmp_path), resume=True, **QUIET))
    assert s["epochs_run"] == 2


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    cfg = dict(dataset="digits", epochs=4, out=str(tmp_path), **QUIET)
    whole = train(TrainConfig(**dict(cfg, out=str(tmp_path / "whole"))))
    train(TrainConfig(stop_after=3, **cfg))
    ckpt = tmp_path / "checkpoint.pt"
    raw = bytearray(ckpt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped bit in the newest file (epoch 3)
    ckpt.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="previous good checkpoint"):
        resumed = train(TrainConfig(resume=True, **cfg))  # continues after epoch 2 from checkpoint.pt.prev
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]
    assert strip(resumed["history"]) == strip(whole["history"])


def _cli(out, *extra):
    return [sys.executable, "-m", "ies_fast.app.cli", "train", "--dataset", "synthetic", "--synthetic-size", "3000",
            "--image-size", "12", "--model", "mlp", "--epochs", "8", "--batch-size", "32", "--delta", "0.02",
            "--seed", "5", "--deterministic", "--no-progress", "--no-plot", "--out", str(out), *extra]


def _env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cli(whole), env=_env(), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(_cli(killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    log = killed / "log.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(read_rows(log)) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_rows(log))
    assert 3 <= done < 8
    resumed = subprocess.run(_cli(killed, "--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(killed / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 7
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in a["selector"].items():
        assert torch.equal(v, b["selector"][k]) if isinstance(v, torch.Tensor) else v == b["selector"][k], k
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]
    assert strip(read_rows(whole / "log.jsonl")) == strip(read_rows(log))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_steps_do_not_wait_for_the_gpu(tmp_path):
    """The optimizer steps of an epoch (forward, fused loss recording into the
    selector, backward, step, LR, running sums) under sync-debug mode "error"; the
    epoch's batches are gathered first (their one host copy of the kept list)."""
    from ies_fast.app.train.loop import Trainer

    t = Trainer(TrainConfig(dataset="synthetic", synthetic_size=512, image_size=16, model="resnet18", epochs=3,
                            batch_size=64, delta=0.5, device="cuda", out=str(tmp_path), **QUIET))
    for epoch in range(2):  # the second epoch runs with samples removed
        t.batches.set_epoch(epoch)
        batches = list(t.batches.train())
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            t._train_steps(epoch, batches, len(batches), type("Bar", (), {"update": lambda self, n: None})())
        finally:
            torch.cuda.set_sync_debug_mode("default")
        t.selector.step()
