"""``ies-fast train`` turns every bad flag, unusable folder or full disk into one
line on stderr and exit 2 (no traceback), before any work where it can be known
before. Runs in-process on a tiny synthetic data set."""
import errno
import os

import pytest

import ies_fast.app.train.loop as loop
from ies_fast.app.cli import main

from _support.cli_helpers import one_line_error

TINY = ["train", "--dataset", "synthetic", "--synthetic-size", "64", "--image-size", "4", "--model", "mlp",
        "--batch-size", "16", "--epochs", "2", "--no-progress", "--no-plot"]


def test_resume_on_a_missing_folder_is_an_error_not_a_fresh_run(capsys, tmp_path):
    missing = tmp_path / "typo"
    one_line_error(capsys, [*TINY, "--out", str(missing), "--resume"], "--resume", str(missing), "does not exist")
    assert not missing.exists()  # nothing was started there
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(capsys, [*TINY, "--out", str(empty), "--resume"], "--resume", "no checkpoint")
    assert os.listdir(empty) == []


def test_out_naming_a_file(capsys, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    one_line_error(capsys, [*TINY, "--out", str(f)], "--out", "is a file")


def no_data_loading(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise AssertionError("the data set was loaded before --out was checked")

    monkeypatch.setattr("ies_fast.app.train.datasets.load_dataset", load_dataset)


def test_out_in_a_folder_nobody_may_write(capsys, monkeypatch):
    """/sys refuses new files even to root (tests run as root, so chmod would prove
    nothing); the error comes before any data is loaded."""
    try:
        open("/sys/ies_fast_probe", "w").close()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    no_data_loading(monkeypatch)
    one_line_error(capsys, [*TINY, "--out", "/sys"], "--out /sys", "not writable")


def test_out_read_only_reported_before_training(capsys, tmp_path, monkeypatch):
    """A read-only mount, simulated: creating any file in --out fails with EROFS."""
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(loop.tempfile, "TemporaryFile", refuse)
    no_data_loading(monkeypatch)
    one_line_error(capsys, [*TINY, "--out", str(tmp_path / "ro")], "--out", "not writable", "Read-only file system")


def test_backend_triton_without_cuda_or_interpreter(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    one_line_error(capsys, [*TINY, "--out", str(tmp_path), "--backend", "triton", "--device", "cpu"],
                   "--backend triton", "cpu")


@pytest.mark.parametrize("device", ["meta", "toaster", "cuda:99"])
def test_unusable_devices(capsys, tmp_path, device):
    one_line_error(capsys, [*TINY, "--out", str(tmp_path), "--device", device], "--device")


@pytest.mark.parametrize("seed", [str(2**70), "-1", str(2**32)])
def test_seed_out_of_range(capsys, tmp_path, seed):
    one_line_error(capsys, [*TINY, "--out", str(tmp_path), "--seed", seed], "--seed", "2**32 - 1")


def test_largest_seed_runs(capsys, tmp_path):
    assert main([*TINY, "--epochs", "1", "--out", str(tmp_path), "--seed", str(2**32 - 1)]) == 0


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 9984 vs 9872"),
])
def test_full_disk_names_the_folder_and_the_bytes(capsys, tmp_path, monkeypatch, failure):
    """A full disk, simulated: the checkpoint writer fails the way torch.save does
    (ENOSPC from the file, or the zip writer's 'enforce fail')."""
    def full(*args, **kwargs):
        raise failure

    monkeypatch.setattr(loop, "save_checkpoint", full)
    err = one_line_error(capsys, [*TINY, "--out", str(tmp_path)], f"--out {tmp_path}", "no space left", "bytes")
    assert "after epoch 1" in err


def test_file_size_limit_is_said_like_a_full_disk(capsys, tmp_path, monkeypatch):
    """``ulimit -f``: Python ignores SIGXFSZ, so a write fails with EFBIG (issue 31)."""
    def too_large(*args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(loop, "save_checkpoint", too_large)
    err = one_line_error(capsys, [*TINY, "--out", str(tmp_path)], f"--out {tmp_path}", "ulimit -f", "bytes")
    assert "after epoch 1" in err


def test_full_disk_when_writing_config_json(capsys, tmp_path, monkeypatch):
    from ies_fast.app.train.logs import RunFiles

    def full(self, path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RunFiles, "write_json", full)
    one_line_error(capsys, [*TINY, "--out", str(tmp_path)], "no space left", "at the start", "bytes")


def test_other_write_errors_are_not_reported_as_a_full_disk(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(loop, "save_checkpoint", broken)
    with pytest.raises(RuntimeError, match="something else"):
        main([*TINY, "--out", str(tmp_path)])


def test_dist_timeout_reaches_the_process_group(capsys, tmp_path, monkeypatch):
    seen = {}

    def init_from_env(timeout_s=600.0, **kwargs):
        seen["timeout_s"] = timeout_s
        raise ValueError("stop here")

    monkeypatch.setattr(loop.dist_utils, "init_from_env", init_from_env)
    one_line_error(capsys, [*TINY, "--out", str(tmp_path), "--dist-timeout", "30"], "stop here")
    assert seen["timeout_s"] == 30.0
    one_line_error(capsys, [*TINY, "--out", str(tmp_path), "--dist-timeout", "0"], "--dist-timeout")


@pytest.mark.parametrize("command", [["compare", "--selectors", "none"], ["sweep", "--deltas", "0.1"]])
def test_ctrl_c_in_compare_or_sweep_is_one_line_and_exit_130(capsys, tmp_path, monkeypatch, command):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    tiny = [a for a in TINY[1:] if a != "--no-plot"]
    assert main([command[0], *tiny, *command[1:], "--out", str(tmp_path), "--seeds", "0"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ies-fast: interrupted (SIGINT): the finished runs"), err
