"""One run per --out folder: a second run on a folder that a live run holds exits 2
naming the folder and changes nothing there; a lock left by a killed process does
not block the next run; two runs started together on one folder: one trains, the
other exits 2."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ies_fast.app.cli import main
from ies_fast.app.train.run_lock import FILENAME, RunFolderBusy, RunLock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["train", "--dataset", "synthetic", "--synthetic-size", "64", "--image-size", "4", "--model", "mlp",
        "--batch-size", "16", "--epochs", "2", "--no-progress", "--no-plot"]


def env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_the_lock_is_exclusive_and_released(tmp_path):
    out = tmp_path / "run"
    with RunLock(out) as first:
        assert first.held and (out / FILENAME).read_text().strip() == str(os.getpid())
        with pytest.raises(RunFolderBusy, match=f"--out {out} is in use by another run \\(pid {os.getpid()}"):
            RunLock(out).acquire()
    assert not (out / FILENAME).exists()
    RunLock(out).acquire().release()  # free again


def test_a_second_run_on_a_held_folder_exits_2_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):  # stands for a live run (flock: a second open file conflicts even in one process)
        assert main([*TINY, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--out {out} is in use by another run" in err, err
        assert os.listdir(out) == [FILENAME]
        assert main([*TINY, "--out", str(out), "--resume"]) == 2
    assert main([*TINY, "--out", str(out)]) == 0  # the first run ended: the folder is free
    assert not (out / FILENAME).exists() and (out / "checkpoint.pt").exists()
    assert main([*TINY, "--out", str(out), "--resume"]) == 0  # the run let go of it


HOLDER = """
import sys
from ies_fast.app.train.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(tmp_path, capsys):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env(), text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert main([*TINY, "--out", str(out)]) == 2
        assert f"pid {proc.pid}" in capsys.readouterr().err
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()
    assert (out / FILENAME).exists()  # left behind by the killed holder
    assert main([*TINY, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"left by process {proc.pid}, which no longer exists: a stale lock, taken over" in err, err


def test_a_signal_stops_the_run_with_one_line_and_releases_the_lock(tmp_path):
    """Ctrl-C (SIGINT) and kill (SIGTERM) during ``ies-fast train`` (issue 31), one run
    each, side by side: no traceback, one line naming the epoch and the last
    checkpoint, run.lock gone, exit 128 + signal."""
    import re
    import time

    runs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = tmp_path / sig.name
        cmd = [sys.executable, "-m", "ies_fast.app.cli", *TINY, "--selector", "none", "--epochs", "100000",
               "--out", str(out)]
        runs[sig] = (out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), text=True))
    try:
        deadline = time.monotonic() + 90
        waiting = dict(runs)
        while waiting and time.monotonic() < deadline:
            for sig, (out, proc) in list(waiting.items()):
                if (out / "checkpoint.pt").exists() or proc.poll() is not None:
                    proc.send_signal(sig)
                    del waiting[sig]
            time.sleep(0.05)
        errs = {sig: proc.communicate(timeout=60)[1] for sig, (_, proc) in runs.items()}
    finally:
        for _, proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for sig, (out, proc) in runs.items():
        err = errs[sig]
        assert proc.returncode == 128 + sig, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        m = re.fullmatch(rf"ies-fast: interrupted \({sig.name}\) (in|after) epoch (\d+); the last checkpoint is "
                         rf"epoch (\d+); `--resume` continues", lines[0])
        assert m, lines[0]
        running, saved = int(m.group(2)), int(m.group(3))
        assert saved >= 1 and running == (saved + 1 if m.group(1) == "in" else saved)
        assert not (out / FILENAME).exists()
