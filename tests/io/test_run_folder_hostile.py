"""A run folder is untrusted input (issue 23): FIFOs, folders, huge or deeply nested
JSON and a sparse terabyte checkpoint in it are refused in one line, never read
whole, never waited on. Every test runs under an alarm, so a blocking open fails
the test instead of hanging it."""
import json
import os
import time
from pathlib import Path

import pytest
import torch


from ies_fast.io.checkpoint import MAGIC, CheckpointError, _LEN, load_checkpoint, save_checkpoint  # noqa: E402
from ies_fast.app.train import compare as cmp  # noqa: E402
from ies_fast.app.train.config import TrainConfig, resolve  # noqa: E402


@pytest.fixture(autouse=True)
def _alarm(no_hang):
    """Every test here under conftest's alarm: a blocking open fails the test instead of hanging it."""


def _finished_point(tmp_path):
    """A finished run's JSON files as ``ies-fast train`` leaves them, and its config."""
    config = TrainConfig(dataset="digits", epochs=3, out=str(tmp_path), progress=False, plot=False)
    out = tmp_path / "ies-seed0"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(resolve(config).to_dict()))
    summary = {"epochs_run": 3, "stopped_early": False, "test_acc": 0.93, "backward_saved_fraction": 0.4,
               "wall_time_s": 1.5}
    (out / "summary.json").write_text(json.dumps(summary))
    assert cmp.read_finished_run(str(out), config) is not None
    return config, out


HOSTILE_JSON = {
    "huge_int": lambda p: p.write_text('{"epochs_run": 3, "test_acc": ' + "1" + "0" * 400 + "}"),
    "deep": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
    "deep_in_a_field": lambda p: p.write_text('{"epochs_run": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    "huge_file": lambda p: p.write_text('{"pad": "' + "x" * (17 * 2**20) + '"}'),
}


@pytest.mark.parametrize("name", ["summary.json", "config.json"])
@pytest.mark.parametrize("content", sorted(HOSTILE_JSON))
def test_hostile_json_is_a_point_to_run_again_not_a_crash(tmp_path, capsys, name, content):
    config, out = _finished_point(tmp_path)
    HOSTILE_JSON[content](out / name)
    assert cmp.read_finished_run(str(out), config) is None
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and name in err and "started again" in err, err


@pytest.mark.parametrize("name", ["summary.json", "config.json"])
@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink"])
def test_a_non_file_where_a_json_file_goes_is_refused_unopened(tmp_path, name, kind):
    config, out = _finished_point(tmp_path)
    target = out / name
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    else:
        outside = tmp_path / "outside.json"
        outside.write_text(json.dumps({"epochs_run": 3}))
        target.symlink_to(outside)
    with pytest.raises(Exception, match=rf"{name} is a .* where a file is expected: refused"):
        cmp.run_in_subfolder(config, "ies-seed0")


@pytest.mark.parametrize("name", ["checkpoint.pt", "checkpoint.pt.prev", "run.lock", "log.jsonl"])
def test_a_fifo_in_a_point_folder_skips_the_point_before_anything_blocks(tmp_path, name):
    config, out = _finished_point(tmp_path)
    (out / "summary.json").unlink()  # unfinished: it would be resumed
    os.mkfifo(out / name)
    with pytest.raises(Exception, match=rf"{name} is a FIFO where a file is expected: refused"):
        cmp.run_in_subfolder(config, "ies-seed0")


def test_fifo_checkpoint_is_refused_without_blocking(tmp_path):
    path = tmp_path / "checkpoint.pt"
    os.mkfifo(path)
    with pytest.raises(CheckpointError, match="FIFO"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="FIFO"):
        load_checkpoint(path, fallback=True)


def test_fifo_temp_file_does_not_block_a_load_or_save(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"a": torch.arange(3)}, path)
    os.mkfifo(tmp_path / "checkpoint.pt.abc123.tmp")  # the name of a killed save's temporary file
    assert load_checkpoint(path)["a"].tolist() == [0, 1, 2]
    save_checkpoint({"a": torch.arange(4)}, path)
    assert load_checkpoint(path)["a"].tolist() == [0, 1, 2, 3]


def test_checkpoint_directory_is_refused(tmp_path):
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def _sparse(path: Path, header: bytes, size: int) -> None:
    with open(path, "wb") as f:
        f.write(MAGIC + _LEN.pack(len(header)) + header)
        f.truncate(size)


@pytest.mark.parametrize("claim", ["garbage", "terabyte_payload"])
def test_sparse_terabyte_checkpoint_is_refused_from_its_header_unread(tmp_path, claim):
    """A 1 TiB sparse file with our magic: refused from the header and the file's
    size in well under a second (reading it would take hours or a MemoryError)."""
    path = tmp_path / "checkpoint.pt"
    size = 2**40
    start = len(MAGIC) + _LEN.size
    if claim == "garbage":
        header = b"x" * 100
    else:  # a well-formed header whose length matches the file's: refused by the memory bound
        for n in range(120, 200):
            header = json.dumps({"format": "ies_fast.checkpoint/2", "payload_bytes": size - start - n,
                                 "sha256": "0" * 64}).encode()
            if len(header) == n:
                break
        assert len(header) == n
    try:
        _sparse(path, header, size)
    except OSError:
        pytest.skip("this file system cannot hold a sparse 1 TiB file")
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="header|memory"):
        load_checkpoint(path)
    assert time.perf_counter() - t0 < 2.0


def test_run_rows_reader_refuses_a_fifo(tmp_path):
    from ies_fast.app.train.logs import read_rows

    os.mkfifo(tmp_path / "log.jsonl")
    with pytest.raises(Exception, match="log.jsonl is a FIFO where a file is expected: refused"):
        read_rows(str(tmp_path / "log.jsonl"))


@pytest.mark.parametrize("key", ["wall_time_s", "cpu_time_s"])
@pytest.mark.parametrize("value", ["1e308", "NaN", "Infinity", "-1.5", "1e7"])
def test_a_summary_time_out_of_range_runs_the_point_again(tmp_path, key, value):
    """Times are finite and 0 <= t < 1e7 s (issue 31): 1e308 overflowed the table's
    sd, NaN and Infinity crashed it, a negative one printed a negative speed-up."""
    config, out = _finished_point(tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    text = json.dumps({**summary, key: 0.0})
    (out / "summary.json").write_text(text.replace(f'"{key}": 0.0', f'"{key}": {value}'))
    assert cmp.read_finished_run(str(out), config) is None


def test_security_doc_names_only_paths_that_exist():
    """docs/security.md points readers at modules and tests: each must exist (issue 31)."""
    import re

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "security.md").read_text()
    named = set(re.findall(r"`((?:ies_fast|tests|tools|docs)/[^`\s]+)`", text))
    assert sorted(p for p in named if not (root / p).exists()) == []
    assert len(named) >= 6, named
