"""Atomic, verified checkpoints: round trip, .prev kept, corruption and truncation
detected and named, fallback to the previous good file, and a training run killed
with SIGKILL at a random point resumes to the same selector and model."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from ies_fast import IES
from ies_fast.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "ckpt_train_script.py")


def selector_state(seed: int) -> dict:
    sel = IES(40, delta=0.5, order=1, window=2, device="cpu", backend="torch")
    g = torch.Generator().manual_seed(seed)
    for _ in range(4):
        sel.observe(torch.rand(40, generator=g), torch.randperm(40, generator=g))
        sel.step()
    return sel.state_dict()


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_round_trip_and_prev(tmp_path):
    path = tmp_path / "sub" / "sel.ckpt"
    first, second = selector_state(1), selector_state(2)
    save_checkpoint(first, path)
    assert not os.path.exists(str(path) + ".prev")
    save_checkpoint(second, path)
    assert_states_equal(load_checkpoint(path), second)
    assert_states_equal(load_checkpoint(str(path) + ".prev"), first)
    # no temporary files left behind
    assert sorted(os.listdir(tmp_path / "sub")) == ["sel.ckpt", "sel.ckpt.prev"]
    # a loaded state drives a selector to the same decision
    sel = IES(40, delta=0.5, order=1, window=2, device="cpu", backend="torch")
    sel.load_state_dict(load_checkpoint(path))
    assert torch.equal(sel.mastered_mask(), second["mastered"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_file_detected_and_fallback(tmp_path, damage):
    path = str(tmp_path / "sel.ckpt")
    first, second = selector_state(3), selector_state(4)
    save_checkpoint(first, path)
    save_checkpoint(second, path)
    raw = open(path, "rb").read()
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":  # one bit inside the payload (the middle of the file)
        mid = len(raw) // 2
        raw = raw[:mid] + bytes([raw[mid] ^ 0x10]) + raw[mid + 1:]
    elif damage == "garbage":
        raw = os.urandom(len(raw))
    else:
        raw = b""
    with open(path, "wb") as f:
        f.write(raw)
    with pytest.raises(CheckpointError, match="sel.ckpt"):
        load_checkpoint(path)
    with pytest.warns(RuntimeWarning, match="previous good checkpoint"):
        got = load_checkpoint(path, fallback=True)
    assert_states_equal(got, first)
    # saving over a damaged file does not promote it to .prev
    save_checkpoint(selector_state(5), path)
    assert_states_equal(load_checkpoint(path + ".prev"), first)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    foreign = tmp_path / "plain.pt"
    torch.save({"a": 1}, foreign)
    with pytest.raises(CheckpointError, match="not an ies_fast checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="previous checkpoint is bad too"):
        load_checkpoint(foreign, fallback=True)


def test_failed_save_keeps_old_file(tmp_path):
    path = tmp_path / "sel.ckpt"
    save_checkpoint({"ok": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint({"bad": Unpicklable()}, path)
    assert load_checkpoint(path) == {"ok": 1}
    assert sorted(os.listdir(tmp_path)) == ["sel.ckpt"]


EPOCHS = 30


def run_script(out_dir, kill_after_epoch=None, delay_s=0.0, timeout_s=60):
    """Run the training script; with ``kill_after_epoch`` SIGKILL it ``delay_s`` after
    it reports that epoch. Returns whether it finished."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, SCRIPT, str(out_dir), str(EPOCHS)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        for line in proc.stdout:
            if time.monotonic() > deadline:
                pytest.fail("training script ran past its time limit")
            if kill_after_epoch is not None and line.strip() == f"epoch {kill_after_epoch}":
                time.sleep(delay_s)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                return False
        rc = proc.wait(timeout_s)
        assert rc == 0, proc.stderr.read()
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sigkill_and_resume_matches_uninterrupted(tmp_path):
    rng = random.Random(os.getpid())
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    clean.mkdir()
    killed.mkdir()
    assert run_script(clean)
    kills = 0
    for kill_epoch in sorted(rng.sample(range(1, EPOCHS), 2)):
        # the delay lands the kill anywhere in the following epoch, or inside the save
        if not run_script(killed, kill_after_epoch=kill_epoch, delay_s=rng.uniform(0.0, 0.15)):
            kills += 1
    assert kills >= 1
    assert run_script(killed)
    a = torch.load(clean / "final.pt", weights_only=False)
    b = torch.load(killed / "final.pt", weights_only=False)
    assert_states_equal(a["selector"], b["selector"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert int(a["selector"]["mastered"].sum()) > 0  # the run did master samples
