"""No symlink planted in a run folder leads to a write outside it (issue 23): at the
names ``train`` writes (its files, their old temporary names, ``run.lock``,
``curves.png``, ``samples.parquet``, the checkpoint's), at a ``sweep``/``compare`` point's folder and
their ``--json``/``--plot`` files, and at ``bench``'s outputs. A link where a file
goes is refused in one line (exit 2), before the run; a link at any other name is
left alone. The file the link points to is never changed."""
import os
from pathlib import Path

import pytest


from _support.cli_helpers import one_line_error  # noqa: E402
from ies_fast.app.cli import main  # noqa: E402

TINY = ["--dataset", "synthetic", "--synthetic-size", "64", "--image-size", "4", "--model", "mlp",
        "--batch-size", "32", "--epochs", "1", "--no-progress"]
PRECIOUS = "precious: not the run's to write\n"

#: names train writes through a temporary file: links at the old fixed temporary names are never followed
TEMP_NAMES = ["summary.json.tmp", "config.json.tmp", "log.jsonl.tmp", "log.csv.tmp", "samples.parquet.tmp"]
#: names where train expects its own regular file: a link there is refused before the run
FILE_NAMES = ["run.lock", "curves.png", "summary.json", "config.json", "log.jsonl", "log.csv", "checkpoint.pt.prev",
              "samples.parquet", "samples.csv"]


def _plant(folder: Path, name: str, outside: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    outside.write_text(PRECIOUS)
    (folder / name).symlink_to(outside)
    return outside


@pytest.mark.parametrize("name", TEMP_NAMES)
def test_train_never_writes_through_a_link_at_a_temporary_name(tmp_path, capsys, name):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    outside = _plant(out, name, tmp_path / "outside.txt")
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert outside.read_text() == PRECIOUS
    assert (out / "summary.json").is_file() and not (out / "summary.json").is_symlink()


@pytest.mark.parametrize("name", FILE_NAMES)
def test_train_refuses_a_link_where_its_file_goes(tmp_path, capsys, name):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    outside = _plant(out, name, tmp_path / "outside.txt")
    one_line_error(capsys, ["train", *TINY, "--out", str(out)], "checkpoint" if name.endswith(".prev") else name)
    assert outside.read_text() == PRECIOUS
    assert not (out / "log.jsonl").exists() or name == "log.jsonl", "refused before any epoch"


def _sweep(out: Path, *extra) -> list:
    return ["sweep", *TINY, "--deltas", "0.1", "--prune-ratios", "--random-ratios", "--seeds", "0",
            "--out", str(out), *extra]


def test_sweep_skips_a_point_whose_folder_is_a_link(tmp_path, capsys):
    out = tmp_path / "sweep"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "ies-delta0.1-seed0").symlink_to(elsewhere, target_is_directory=True)
    assert main(_sweep(out, "--plot", "")) == 0
    said = capsys.readouterr().out
    assert "IES δ=0.1 seed 0 skipped" in said and "ies-delta0.1-seed0" in said
    assert os.listdir(elsewhere) == []
    assert (out / "none-seed0" / "summary.json").is_file()


@pytest.mark.parametrize("name", TEMP_NAMES + FILE_NAMES)
def test_sweep_never_writes_through_a_link_in_a_point_folder(tmp_path, capsys, name):
    out = tmp_path / "sweep"
    outside = _plant(out / "ies-delta0.1-seed0", name, tmp_path / "outside.txt")
    assert main(_sweep(out, "--plot", "")) == 0
    assert outside.read_text() == PRECIOUS
    if name in FILE_NAMES:
        assert "IES δ=0.1 seed 0 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["sweep", "compare"])
@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_sweep_and_compare_refuse_a_linked_output_before_any_run(tmp_path, capsys, command, option):
    out = tmp_path / "out"
    outside = _plant(tmp_path, "linked.out", tmp_path / "outside.txt")
    argv = (_sweep(out, option, str(tmp_path / "linked.out")) if command == "sweep" else
            ["compare", *TINY, "--selectors", "none", "--seeds", "0", "--out", str(out), option,
             str(tmp_path / "linked.out")])
    one_line_error(capsys, argv, option, "symlink")
    assert outside.read_text() == PRECIOUS
    assert not (out / "none-seed0").exists(), "refused before any run"


@pytest.mark.parametrize("name", ["bench.json", "bench.md"])
def test_bench_refuses_a_linked_output_before_any_work(tmp_path, capsys, name, monkeypatch):
    from ies_fast.app import bench

    def no_work(*args, **kwargs):
        raise AssertionError("a benchmark ran before --out was checked")

    monkeypatch.setattr(bench, "measured_copy_gbps", no_work)
    monkeypatch.setattr(bench, "run_phase", no_work)
    outside = _plant(tmp_path / "b", name, tmp_path / "outside.txt")
    one_line_error(capsys, ["bench", "--size", "small", "--out", str(tmp_path / "b")], name, "symlink")
    assert outside.read_text() == PRECIOUS


def test_hf_selector_state_is_never_written_through_a_link_nor_read_from_a_fifo(tmp_path):
    """The Hugging Face integration writes ``ies_selector.pt`` into each checkpoint folder."""
    import signal

    import ies_fast
    pytest.importorskip("transformers")
    from ies_fast.integrations import _hf_checkpoint as hf

    sel = ies_fast.IES(8)
    state = {"version": hf.STATE_VERSION, "selector": sel.state_dict(), "epochs_closed": 0,
             "steps_in_epoch": 0, "global_step": 0}
    folder = tmp_path / "checkpoint-1"
    outside = _plant(folder, hf.STATE_FILE, tmp_path / "outside.txt")
    with pytest.raises(Exception, match="is a symlink where a file is expected: refused"):
        hf.write_state(str(folder), state)
    assert outside.read_text() == PRECIOUS
    with pytest.raises(hf.IncompleteCheckpoint, match="symbolic link: refused"):
        hf.read_state(str(folder))
    (folder / hf.STATE_FILE).unlink()
    os.mkfifo(folder / hf.STATE_FILE)

    class Hung(BaseException):  # not an OSError: nothing swallows it
        pass

    def hung(signum, frame):
        raise Hung("blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(hf.IncompleteCheckpoint, match="is not a regular file"):
            hf.read_state(str(folder))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    (folder / hf.STATE_FILE).unlink()
    hf.write_state(str(folder), state)
    assert hf.read_state(str(folder))["epochs_closed"] == 0

def test_demo_plot_is_never_written_through_a_link(tmp_path):
    pytest.importorskip("matplotlib")
    import types

    from ies_fast.app import demo

    run = types.SimpleNamespace(acc_curve=[0.5, 0.7, 0.8], removed_curve=[0, 3, 5], num_train=10)
    outside = _plant(tmp_path, "ies_demo.png", tmp_path / "outside.txt")
    with pytest.raises(Exception, match="is a symlink where a file is expected: refused"):
        demo.plot([run], [run], str(tmp_path / "ies_demo.png"))
    assert outside.read_text() == PRECIOUS
    (tmp_path / "ies_demo.png").unlink()
    demo.plot([run], [run], str(tmp_path / "ies_demo.png"))
    assert (tmp_path / "ies_demo.png").stat().st_size > 1000


def test_a_write_without_fsync_still_never_goes_through_a_link(tmp_path, monkeypatch):
    """``write_bytes(durable=False)`` (a run's per-epoch logs) skips only the two fsyncs:
    a link at the name is still refused and its target untouched; the default fsyncs
    the file and the folder."""
    from ies_fast.io import run_folder

    synced = []
    monkeypatch.setattr(run_folder.os, "fsync", lambda fd: synced.append(fd))
    run_folder.write_bytes(tmp_path / "a.txt", b"durable")
    assert len(synced) == 2 and (tmp_path / "a.txt").read_bytes() == b"durable"
    run_folder.write_text(tmp_path / "a.txt", "quick", durable=False)
    assert len(synced) == 2 and (tmp_path / "a.txt").read_text() == "quick"
    outside = _plant(tmp_path, "b.txt", tmp_path / "outside.txt")
    with pytest.raises(run_folder.RunFolderError, match="b.txt"):
        run_folder.write_bytes(tmp_path / "b.txt", b"x", durable=False)
    assert outside.read_text() == PRECIOUS and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt",
                                                                                             "outside.txt"]
