"""The .npy cache of parsed CSVs is untrusted like a run folder (issue 31): a planted
link, a FIFO, a foreign well-formed .npy or a header claiming terabytes at a cache
entry is rebuilt from the CSV with one line; nothing is written outside the cache,
nothing blocks, no foreign data is returned."""
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_train_idx import write_csv  # noqa: E402

from ies_fast.app.train.data_cache import cached_pixel_csv, entry_paths  # noqa: E402


@pytest.fixture(autouse=True)
def _alarm(no_hang):
    """Every test here under conftest's alarm: a blocking read fails it."""


@pytest.fixture
def csv(tmp_path):
    """``(csv path, images, labels, cache folder, the entry's paths)`` of a 6-row CSV."""
    rng = np.random.default_rng(7)
    x, y = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6)
    write_csv(tmp_path / "d.csv", x, y)
    cache = tmp_path / "cache"
    cache.mkdir()
    return str(tmp_path / "d.csv"), x, y, str(cache), entry_paths(str(tmp_path / "d.csv"), str(cache), 28)


def _npy(path, array):
    with open(path, "wb") as f:
        np.lib.format.write_array(f, array, allow_pickle=False)


def _rebuilt(capsys, got, x, y, paths):
    np.testing.assert_array_equal(got[0], x)
    np.testing.assert_array_equal(got[1], y)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rebuilt" in err[0], err
    for p in paths.values():
        assert os.path.isfile(p) and not os.path.islink(p), p


def test_planted_links_are_never_written_through(tmp_path, csv, capsys):
    path, x, y, cache, paths = csv
    victim = tmp_path / "victim"
    victim.write_text("mine")
    for p in paths.values():  # the entry's names and the old fixed temporary names
        os.symlink(victim, p)
        os.symlink(victim, f"{p}.{os.getpid()}.tmp.npy")
    _rebuilt(capsys, cached_pixel_csv(path, cache), x, y, paths)
    assert victim.read_text() == "mine"


@pytest.mark.parametrize("sidecar", [False, True])
def test_foreign_npy_is_not_used(tmp_path, csv, capsys, sidecar):
    path, x, y, cache, paths = csv
    if sidecar:  # a real entry's sidecar, then the arrays replaced
        cached_pixel_csv(path, cache)
        capsys.readouterr()
    _npy(paths["images"], np.zeros((6, 28, 28), np.uint8))
    _npy(paths["labels"], np.full(6, 7, np.int64))
    _rebuilt(capsys, cached_pixel_csv(path, cache), x, y, paths)


def test_fifo_at_an_entry_does_not_block(tmp_path, csv, capsys):
    path, x, y, cache, paths = csv
    os.mkfifo(paths["images"])
    _rebuilt(capsys, cached_pixel_csv(path, cache), x, y, paths)


def test_header_claiming_terabytes_is_refused_unread(tmp_path, csv, capsys):
    """Even with a sidecar whose digest matches the file, the header's shape must fit the file."""
    path, x, y, cache, paths = csv
    header = {"descr": "|u1", "fortran_order": False, "shape": (12 * 2**40 // 784, 28, 28)}
    with open(paths["images"], "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
    _npy(paths["labels"], y.astype(np.int64))
    entry = {}
    for name in ("images", "labels"):
        data = Path(paths[name]).read_bytes()
        entry[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    Path(paths["entry"]).write_text(json.dumps(entry))
    _rebuilt(capsys, cached_pixel_csv(path, cache), x, y, paths)


def test_train_mnist_with_a_planted_cache(tmp_path, csv, capsys, monkeypatch):
    """``ies-fast train --dataset mnist``: a FIFO and a foreign .npy in the cache are
    rebuilt (one line each), and the run trains on the CSV's data."""
    from ies_fast.app.cli import main
    from ies_fast.app.train import datasets as ds

    path, x, y, cache, paths = csv
    monkeypatch.setattr(ds, "mnist_csv_files", lambda: (path, path))
    monkeypatch.setattr(ds, "CACHE_DIR", cache)
    os.mkfifo(paths["images"])
    _npy(paths["labels"], np.full(6, 7, np.int64))
    code = main(["train", "--dataset", "mnist", "--model", "mlp", "--epochs", "1", "--batch-size", "8",
                 "--no-progress", "--no-plot", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert sum("rebuilt" in line for line in err.splitlines()) == 1, err
    data = ds.load_dataset("mnist")
    np.testing.assert_array_equal(data.train_y.numpy(), y)


def test_a_folder_at_an_entry_is_said_and_left(tmp_path, csv, capsys):
    """A folder where a cache file goes cannot be replaced: the CSV's data is used,
    and the one line says the entry was not rewritten."""
    path, x, y, cache, paths = csv
    os.mkdir(paths["images"])
    got = cached_pixel_csv(path, cache)
    np.testing.assert_array_equal(got[0], x)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be rewritten" in err[0] and "folder" in err[0], err
