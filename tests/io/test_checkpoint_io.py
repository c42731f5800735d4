"""Atomic, verified checkpoints: round trip, .prev kept, corruption and truncation
detected and named, fallback to the previous good file, and a training run killed
with SIGKILL at a random point resumes to the same selector and model."""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ies_fast import IES
from ies_fast.io import checkpoint as checkpoint_io
from ies_fast.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "_support", "ckpt_train_script.py")


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
    with pytest.raises(TypeError, match=r"checkpoint\['rng'\]\['numpy'\] is a numpy.ndarray"):
        save_checkpoint({"ok": 2, "rng": {"numpy": np.zeros(3)}}, path)  # weights_only could not read it back
    with pytest.raises(TypeError, match=r"checkpoint\['a'\]\[1\] is a .*Unpicklable"):
        save_checkpoint({"a": [1, Unpicklable()]}, path)
    with pytest.raises(TypeError, match=r"checkpoint\['history'\]\[0\]\['loss'\] is a numpy.float64"):
        save_checkpoint({"history": [{"loss": np.float64(0.5)}]}, path)  # a float subclass pickles as numpy's
    with pytest.raises(TypeError, match=r"checkpoint\['a'\]\[0\] has a key of type tuple"):
        save_checkpoint({"a": [{"ok": 1, ("x",): 2}]}, path)
    assert load_checkpoint(path) == {"ok": 1}
    assert sorted(os.listdir(tmp_path)) == ["sel.ckpt"]


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


class Planted:
    """Unpickling this creates ``marker`` (stands for any code a planted file could run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path, marker, kind: str) -> None:
    """Write a file at ``path`` whose unpickling would create ``marker``: ``old`` a
    format-1 checkpoint (a torch.save'd dict, what main wrote before format 2) with
    a valid digest; ``new`` a format-2 file with correct magic, header and SHA-256
    around a malicious payload."""
    buf = io.BytesIO()
    torch.save({"model": Planted(marker), "epoch": 3}, buf)
    payload = buf.getvalue()
    if kind == "old":
        torch.save({"format": "ies_fast.checkpoint/1", "sha256": hashlib.sha256(payload).hexdigest(),
                    "payload": payload, "x": Planted(marker)}, path)
    else:
        with open(path, "wb") as f:
            f.write(checkpoint_io._encode(payload) + payload)


@pytest.mark.parametrize("kind", ["old", "new"])
@pytest.mark.parametrize("where", ["current", "prev", "both"])
def test_a_planted_file_never_runs_code(tmp_path, kind, where):
    path, marker = str(tmp_path / "checkpoint.pt"), tmp_path / "marker"
    if where == "prev":
        save_checkpoint({"ok": 1}, path)
    for name in {"current": [path], "prev": [path + ".prev"], "both": [path, path + ".prev"]}[where]:
        plant(name, marker, kind)
    for name in {"current": [path], "prev": [path + ".prev"], "both": [path, path + ".prev"]}[where]:
        with pytest.raises(CheckpointError, match=re.escape(repr(name))):
            load_checkpoint(name)
    if where == "prev":
        assert load_checkpoint(path, fallback=True) == {"ok": 1}
        with open(path, "r+b") as f:  # damage the good file: the fallback reaches the planted one
            f.write(b"garbage")
    with pytest.raises(CheckpointError, match=re.escape(repr(path)) + ".*previous checkpoint is bad too.*"
                       + re.escape(repr(path + ".prev"))):
        load_checkpoint(path, fallback=True)
    save_checkpoint({"ok": 2}, path)  # verifying the current file before keeping it as .prev unpickles nothing
    assert load_checkpoint(path) == {"ok": 2}
    assert not marker.exists()


def test_old_format_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "old.pt"
    payload = b"whatever"
    torch.save({"format": "ies_fast.checkpoint/1", "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, path)
    with pytest.raises(CheckpointError, match="not an ies_fast checkpoint .*older ies_fast checkpoint.*not unpickled"):
        load_checkpoint(path)


def test_payload_length_and_header_are_checked(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint({"w": torch.randn(50)}, path)
    raw = path.read_bytes()
    for damaged, message in ((raw + b"x", "truncated or corrupted: payload has"),
                             (raw[:30], "bad header length"),
                             (raw[:16], "no header"),
                             (raw.replace(b'"payload_bytes"', b'"payload_bytez"'), "corrupted header")):
        path.write_bytes(damaged)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)


def test_what_a_checkpoint_holds_round_trips_with_weights_only(tmp_path):
    import collections

    obj = {"t": torch.randn(3, 2), "p": torch.nn.Parameter(torch.ones(2)), "n": None, "b": b"\x00\xff",
           "nested": [(1, 2.5, True, "s"), {3: float("-inf")}], "od": collections.OrderedDict(a=torch.arange(3)),
           "dt": torch.float16, "dev": torch.device("cpu"), "size": torch.Size([2, 3])}
    save_checkpoint(obj, tmp_path / "c.ckpt")
    got = load_checkpoint(tmp_path / "c.ckpt")
    assert got.keys() == obj.keys() and torch.equal(got["t"], obj["t"]) and torch.equal(got["od"]["a"], torch.arange(3))
    assert got["nested"] == obj["nested"] and got["b"] == obj["b"] and got["size"] == obj["size"]


# ---- temporary files of killed saves ---------------------------------------------------
def test_stale_temp_files_are_removed_but_a_live_one_is_kept(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint({"v": 1}, path)
    stale = [tmp_path / f"c.ckpt.dead{i}.tmp" for i in range(3)]
    for s in stale:
        s.write_bytes(os.urandom(1000))
    live = tmp_path / "c.ckpt.live.tmp"
    live.write_bytes(b"being written")
    other = tmp_path / "other.ckpt.x.tmp"  # another checkpoint's temp file: not ours to remove
    other.write_bytes(b"x")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # a save in progress holds its temp file's lock
        assert load_checkpoint(path) == {"v": 1}
        assert not any(s.exists() for s in stale) and live.exists() and other.exists()
        stale[0].write_bytes(b"y")
        save_checkpoint({"v": 2}, path)
        assert not stale[0].exists() and live.exists()
    assert sorted(os.listdir(tmp_path)) == ["c.ckpt", "c.ckpt.live.tmp", "c.ckpt.prev", "other.ckpt.x.tmp"]


def test_stale_temp_files_of_other_writes_in_the_folder_go_with_the_next_load(tmp_path):
    """A killed write of samples.parquet, log.jsonl, ... leaves ``.<name>.<random>.tmp``
    (issue 31): the next checkpoint load or save in that folder removes those no live
    writer holds; a held one, a FIFO, a link and other names stay."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"v": 1}, path)
    stale = [tmp_path / ".samples.parquet.0123456789ab.tmp", tmp_path / ".log.jsonl.abcdefabcdef.tmp"]
    for s in stale:
        s.write_bytes(b"half written")
    live = tmp_path / ".summary.json.111111111111.tmp"
    live.write_bytes(b"being written")
    os.mkfifo(tmp_path / ".config.json.222222222222.tmp")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_text("precious")
    os.symlink(outside, tmp_path / ".log.csv.333333333333.tmp")
    (tmp_path / "notes.444444444444.tmp").write_text("not a name of ours")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # a write in progress holds its temp file's lock
        assert load_checkpoint(path) == {"v": 1}
        assert not any(s.exists() for s in stale) and live.exists()
        stale[0].write_bytes(b"again")
        save_checkpoint({"v": 2}, path)
        assert not stale[0].exists() and live.exists()
    assert sorted(os.listdir(tmp_path)) == [".config.json.222222222222.tmp", ".log.csv.333333333333.tmp",
                                            ".summary.json.111111111111.tmp", "checkpoint.pt", "checkpoint.pt.prev",
                                            "notes.444444444444.tmp"]
    assert outside.read_text() == "precious"


def test_a_run_folder_write_holds_its_temp_file_lock_until_the_rename(tmp_path, monkeypatch):
    """A cleaner running while a write is in progress leaves its temporary file alone."""
    from ies_fast.io import run_folder

    real_replace, seen = os.replace, []

    def replace(src, dst):
        seen.append(run_folder.remove_stale_temps(str(tmp_path)))  # a concurrent cleaner, mid-write
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    run_folder.write_text(tmp_path / "summary.json", "{}")
    assert seen == [[]] and os.listdir(tmp_path) == ["summary.json"]


KILLED_SAVES = """
import os, random, signal, sys, time, torch
from ies_fast.io.checkpoint import save_checkpoint
path, kills = sys.argv[1], int(sys.argv[2])
state = {"w": torch.randn(1 << 20)}  # 4 MiB
rng = random.Random(os.getpid())
for _ in range(kills):
    pid = os.fork()
    if pid == 0:  # the child saves until it is killed
        while True:
            save_checkpoint(state, path)
    time.sleep(rng.uniform(0.05, 0.25))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print(sum(n.endswith(".tmp") for n in os.listdir(os.path.dirname(path))), flush=True)
"""


def test_saves_killed_by_sigkill_leave_no_temp_files_after_the_next_load(tmp_path):
    path = tmp_path / "big.ckpt"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", KILLED_SAVES, str(path), "8"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    left = [int(n) for n in out.stdout.split()]
    assert len(left) == 8 and max(left) >= 1  # kills landed inside saves; each left its temp file behind
    load_checkpoint(path, fallback=True)
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


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
    a = torch.load(clean / "final.pt", weights_only=True)
    b = torch.load(killed / "final.pt", weights_only=True)
    assert_states_equal(a["selector"], b["selector"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert int(a["selector"]["mastered"].sum()) > 0  # the run did master samples


def test_resume_from_a_planted_file_exits_2_and_runs_nothing(tmp_path, capsys):
    from ies_fast.app.cli import main

    out, marker = tmp_path / "run", tmp_path / "marker"
    out.mkdir()
    for name in ("checkpoint.pt", "checkpoint.pt.prev"):
        plant(out / name, marker, "old")
    rc = main(["train", "--dataset", "digits", "--epochs", "2", "--out", str(out), "--resume", "--no-progress",
               "--no-plot"])
    err = capsys.readouterr().err
    assert rc == 2 and "checkpoint.pt'" in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists()
