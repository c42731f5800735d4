"""Bad input to the ``ies-fast`` commands ends in one line and exit 2, before any
work and without leaving folders behind (issue 23): a run lock that cannot be
taken, a read-only file system under ``compare``, ``sweep --json`` naming a
folder, ``bench --out`` naming a file or a read-only place, and bad options.
``compare``/``sweep`` keep each data set's runs in its own default folder."""
import errno
import os

import pytest


import ies_fast.app.train.loop as loop  # noqa: E402
from _support.cli_helpers import one_line_error  # noqa: E402
from ies_fast.app.cli import main  # noqa: E402

TINY = ["--dataset", "synthetic", "--synthetic-size", "64", "--image-size", "4", "--model", "mlp",
        "--batch-size", "32", "--epochs", "1", "--no-progress"]


# ---- the run lock --------------------------------------------------------------------
def test_run_lock_that_is_a_folder_stops_the_run(tmp_path, capsys):
    (tmp_path / "run.lock").mkdir()
    one_line_error(capsys, ["train", *TINY, "--no-plot", "--out", str(tmp_path)], "run lock", "run.lock")
    assert not (tmp_path / "log.jsonl").exists(), "the run did not go on unlocked"


def test_run_lock_this_user_cannot_open_stops_the_run(tmp_path, capsys, monkeypatch):
    """Tests run as root (chmod would prove nothing): opening run.lock is refused."""
    (tmp_path / "run.lock").write_text("")
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if os.fspath(path).endswith("run.lock"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    one_line_error(capsys, ["train", *TINY, "--no-plot", "--out", str(tmp_path)], "run lock", "Permission denied")
    assert not (tmp_path / "log.jsonl").exists()


def test_run_lock_that_is_a_fifo_stops_the_run_without_blocking(tmp_path, capsys):
    os.mkfifo(tmp_path / "run.lock")
    one_line_error(capsys, ["train", *TINY, "--no-plot", "--out", str(tmp_path)], "run lock")


# ---- outputs checked before any work ----------------------------------------------------
def test_compare_on_a_read_only_file_system(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(loop.tempfile, "TemporaryFile", refuse)
    one_line_error(capsys, ["compare", *TINY, "--selectors", "none", "--seeds", "0", "--plot", "",
                            "--out", str(tmp_path / "ro")], "not writable", "Read-only file system")


def test_sweep_json_naming_a_folder_is_refused_before_any_run(tmp_path, capsys):
    (tmp_path / "rows").mkdir()
    out = tmp_path / "sweep"
    one_line_error(capsys, ["sweep", *TINY, "--deltas", "0.1", "--prune-ratios", "--random-ratios", "--seeds", "0",
                            "--out", str(out), "--json", str(tmp_path / "rows")], "--json", "folder")
    assert not (out / "none-seed0").exists()


def test_compare_json_naming_a_folder_is_refused_before_any_run(tmp_path, capsys):
    (tmp_path / "rows").mkdir()
    one_line_error(capsys, ["compare", *TINY, "--selectors", "none", "--seeds", "0", "--plot", "",
                            "--out", str(tmp_path / "c"), "--json", str(tmp_path / "rows")], "--json", "folder")
    assert not (tmp_path / "c" / "none-seed0").exists()


@pytest.fixture
def no_bench_work(monkeypatch):
    from ies_fast.app import bench

    def no_work(*args, **kwargs):
        raise AssertionError("a benchmark ran before --out was checked")

    monkeypatch.setattr(bench, "measured_copy_gbps", no_work)
    monkeypatch.setattr(bench, "run_phase", no_work)
    return bench


def test_bench_out_naming_a_file(tmp_path, capsys, no_bench_work):
    (tmp_path / "results").write_text("mine")
    one_line_error(capsys, ["bench", "--size", "small", "--out", str(tmp_path / "results")], "--out", "is a file")
    assert (tmp_path / "results").read_text() == "mine"


def test_bench_out_read_only(tmp_path, capsys, no_bench_work, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(no_bench_work.tempfile, "TemporaryFile", refuse)
    one_line_error(capsys, ["bench", "--size", "small", "--out", str(tmp_path / "b")], "--out", "Read-only file system")


# ---- default folders ----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_each_data_set_has_its_own_default_folder(command, monkeypatch, capsys):
    """The README's ``compare --dataset digits`` then ``--dataset mnist1d`` no longer
    share (and resume) ``runs/ies``."""
    from ies_fast.app.train import compare, sweep

    outs = []
    monkeypatch.setattr(compare if command == "compare" else sweep, "run",
                        lambda args, base, **kw: outs.append(base.out) or [])
    for dataset in ("digits", "mnist1d"):
        assert main([command, "--dataset", dataset, "--epochs", "1"]) == 0
    assert outs == [f"runs/{command}-digits", f"runs/{command}-mnist1d"]
    assert not any(os.path.exists(o) for o in outs), "nothing made by parsing"


# ---- argument errors leave nothing behind ------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["--delta", "-1"], "--delta"),
    (["--dataset", "cifar10", "--model", "mlp"], "--data-dir"),
    (["--dataset", "imagenet"], "--data-dir"),
    (["--epochs", "0"], "--epochs"),
])
def test_argument_errors_leave_no_run_folder(tmp_path, capsys, argv, needle):
    out = tmp_path / "new" / "run"
    base = ["train", "--no-progress", "--no-plot", "--out", str(out)]
    one_line_error(capsys, [*base, *argv], needle)
    assert not (tmp_path / "new").exists()


# ---- --out that is a file or lies under one (issue 31) ------------------------------------
@pytest.mark.parametrize("command", ["train", "compare", "sweep"])
@pytest.mark.parametrize("under", [False, True])
def test_out_naming_a_file_or_under_a_file(tmp_path, capsys, command, under):
    (tmp_path / "f").write_text("mine")
    out = tmp_path / "f" / "runs" if under else tmp_path / "f"
    extra = {"train": ["--no-plot"], "compare": ["--selectors", "none", "--seeds", "0", "--plot", ""],
             "sweep": ["--deltas", "0.1", "--prune-ratios", "--random-ratios", "--seeds", "0", "--plot", ""]}[command]
    one_line_error(capsys, [command, *TINY, *extra, "--out", str(out)], "--out", "file")
    assert (tmp_path / "f").read_text() == "mine"
