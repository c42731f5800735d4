"""``--dataset folder`` on a small real-JPEG folder (tools/make_image_folder.py: 10
classes x 8 Fashion-MNIST images at 16 px, or random IDX images where Fashion-MNIST
is not installed) through both loaders: IES, InfoBatch and random removal train;
an interrupted run resumed equals the uninterrupted one; only the kept files and
those due for scoring are read (a counting source); bad folders end in one line."""
import builtins
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

from _support.cli_helpers import one_line_error  # noqa: E402
from _support.train_fixtures import has_dali  # noqa: E402
from test_train_idx import write_idx_folder  # noqa: E402

import ies_fast  # noqa: E402
from ies_fast.app.train import datasets as ds  # noqa: E402
from ies_fast.app.train.batches import make_batches  # noqa: E402
from ies_fast.app.train.config import TrainConfig, resolve  # noqa: E402
from ies_fast.app.train.loop import train  # noqa: E402
from ies_fast.app.train.logs import read_rows  # noqa: E402
from ies_fast.data import image_files  # noqa: E402

Image = pytest.importorskip("PIL.Image")

LOADERS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not has_dali(), reason="needs nvidia-dali"))]
SIZE = 16


def _tool(name: str = "make_image_folder"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A real-JPEG ImageFolder tree: 80 train and 80 val images, 16 px."""
    base = tmp_path_factory.mktemp("folder")
    source = ds.FASHION_MNIST_DIR
    if not os.path.isdir(source):  # a fresh CI box: random 28x28 IDX images instead
        source = str(base / "idx")
        write_idx_folder(source, n_train=400, n_test=400, gz=False)
    _tool().make_image_folder(str(base / "jpeg"), source=source, size=SIZE, limit=80)
    return str(base / "jpeg")


def copy_of(folder, tmp_path) -> str:
    return shutil.copytree(folder, tmp_path / "data")


def run(tmp_path, data_dir, name="run", **kw) -> dict:
    base = dict(dataset="folder", data_dir=data_dir, image_size=SIZE, epochs=3, batch_size=16, eval_batch_size=64,
                workers=0, progress=False, plot=False, device="cpu", out=str(tmp_path / name), delta=10.0,
                window=1, order=1, score_policy="every")
    return train(TrainConfig(**{**base, **kw}))


def test_make_image_folder_writes_the_idx_images_as_jpegs(tmp_path):
    tool = _tool()
    written = write_idx_folder(tmp_path / "idx", n_train=60, n_test=30, gz=True, seed=3)
    report = tool.make_image_folder(str(tmp_path / "out"), source=str(tmp_path / "idx"), size=SIZE, limit=20)
    for split, (x, y) in (("train", written["train"]), ("val", written["test"])):
        keep = tool.balanced_first(y, 20)
        assert report[split]["images"] == keep.size and keep.size <= 20
        classes = sorted(os.listdir(tmp_path / "out" / split))
        assert classes == list(tool.CLASSES)  # sorted order is the label order
        for i in keep[:5].tolist():
            path = tmp_path / "out" / split / tool.CLASSES[int(y[i])] / f"{i:05d}.JPEG"
            with Image.open(path) as img:
                assert img.format == "JPEG" and img.mode == "RGB" and img.size == (SIZE, SIZE)
                got = np.asarray(img).astype(float)
            ref = np.asarray(Image.fromarray(x[i]).resize((SIZE, SIZE), Image.BILINEAR)).astype(float)
            assert np.abs(got[..., 0] - ref).mean() < 25  # JPEG at quality 90 of random noise: close, not equal
    with pytest.raises(ValueError, match="quality"):
        tool.make_image_folder(str(tmp_path / "bad"), source=str(tmp_path / "idx"), quality=0)


def test_folder_to_idx_decodes_the_folder_back_in_idx_order(tmp_path):
    from ies_fast.app.train.idx import read_idx_split

    written = write_idx_folder(tmp_path / "idx", n_train=60, n_test=30, gz=True, seed=4)
    _tool().make_image_folder(str(tmp_path / "jpeg"), source=str(tmp_path / "idx"), limit=20)  # 28 px
    counts = _tool("folder_to_idx").folder_to_idx(str(tmp_path / "jpeg"), str(tmp_path / "back"))
    for split, source in (("train", "train"), ("test", "val")):
        x, y = written[split]
        keep = _tool().balanced_first(y, 20)
        images, labels = read_idx_split(str(tmp_path / "back"), split)
        assert counts[source] == keep.size and np.array_equal(labels, y[keep])
        assert np.abs(images.astype(float) - x[keep].astype(float)).mean() < 25  # JPEG of random noise: close
    _tool().make_image_folder(str(tmp_path / "jpeg16"), source=str(tmp_path / "idx"), size=SIZE, limit=20)
    with pytest.raises(ValueError, match="28-px"):
        _tool("folder_to_idx").folder_to_idx(str(tmp_path / "jpeg16"), str(tmp_path / "back16"))


def test_folder_recipe_depends_on_the_size():
    small = resolve(TrainConfig(dataset="folder", data_dir="x", image_size=32))
    large = resolve(TrainConfig(dataset="folder", data_dir="x", image_size=96))
    assert (small.model, large.model, small.epochs, small.delta) == ("resnet8", "resnet18", 15, 0.1)
    assert resolve(TrainConfig(dataset="folder", data_dir="x")).image_size == 64
    assert resolve(TrainConfig(dataset="imagenet", data_dir="x")).model == "resnet101"  # the paper's, unchanged
    with pytest.raises(ValueError, match="--data-dir"):
        resolve(TrainConfig(dataset="folder"))


def read_files(rows):
    """Per epoch: files the log says were read, and kept + newly scored samples."""
    scored = np.diff([0] + [r["scored"] for r in rows])
    return [r["files_read"] for r in rows], [r["kept"] + s for r, s in zip(rows, scored)]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("selector", ["ies", "infobatch", "random"])
def test_folder_trains_with_each_selector(tmp_path, folder, loader, selector):
    summary = run(tmp_path, folder, loader=loader, selector=selector)
    rows = summary["history"]
    assert len(rows) == 3 and all(0 <= r["test_acc"] <= 1 for r in rows)
    assert any(r["kept"] < r["num_samples"] for r in rows)  # each selector removed samples
    got, want = read_files(rows)
    assert got == want and min(got) > 0
    if selector == "ies":  # nothing removed in epoch 1: every training file once
        sizes = sum(os.path.getsize(f) for f in Path(folder, "train").rglob("*.JPEG"))
        assert rows[0]["kept"] == 80 and rows[0]["bytes_read"] == sizes
    header = open(os.path.join(summary["out"], "log.csv")).readline().strip().split(",")
    assert {"files_read", "bytes_read", "files_skipped"} <= set(header)


@pytest.mark.parametrize("loader", LOADERS)
def test_ies_removes_and_reads_only_kept_and_scored_files(tmp_path, folder, loader):
    rows = run(tmp_path, folder, loader=loader, epochs=4)["history"]
    got, want = read_files(rows)
    assert got == want
    assert any(r["kept"] < r["num_samples"] for r in rows) and any(r["scored"] > 0 for r in rows)


@pytest.mark.parametrize("loader", LOADERS)
def test_large_sizes_take_the_imagenet_augmentation(tmp_path, folder, loader):
    """Above 64 px: RandomResizedCrop + flip, evaluation at the shorter side 8/7 and a
    centre crop; --model resnet8 keeps it free of torchvision."""
    summary = run(tmp_path, folder, loader=loader, image_size=72, model="resnet8", epochs=2)
    rows = summary["history"]
    assert read_files(rows)[0] == read_files(rows)[1] and all(np.isfinite(r["train_loss"]) for r in rows)
    data = ds.load_dataset("folder", folder, image_size=72)
    assert data.file_augment == "resized_crop" and data.input_shape == (3, 72, 72)


@pytest.mark.parametrize("loader", LOADERS)
def test_resume_equals_the_uninterrupted_run(tmp_path, folder, loader):
    kw = dict(loader=loader, epochs=3, workers=2 if loader == "torch" else 0)
    whole = run(tmp_path, folder, "whole", **kw)["history"]
    run(tmp_path, folder, "split", stop_after=1, **kw)
    split = run(tmp_path, folder, "split", resume=True, **kw)["history"]
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "kept", "scored", "files_read", "bytes_read")
    assert repr([[r[k] for k in keys] for r in split]) == repr([[r[k] for k in keys] for r in whole])  # nan too
    assert any(r["kept"] < r["num_samples"] for r in whole)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, folder):
    """A real SIGKILL mid-run (the torch loader with 2 worker processes), then --resume
    (DALI: the interrupted-run test above; a subprocess run costs seconds of imports)."""
    loader = "torch"
    def cli_run(out, *extra):
        return [sys.executable, "-m", "ies_fast.app.cli", "train", "--dataset", "folder", "--data-dir", folder,
                "--image-size", str(SIZE), "--epochs", "5", "--batch-size", "16", "--delta", "10", "--window", "1",
                "--order", "1", "--score-policy", "every", "--loader", loader, "--workers", "2", "--device", "cpu",
                "--no-progress", "--no-plot", "--out", str(out), *extra]

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # the uninterrupted run goes on beside the one to be killed (their imports overlap)
    uninterrupted = subprocess.Popen(cli_run(whole), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc = subprocess.Popen(cli_run(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log, deadline = killed / "log.jsonl", time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and len(read_rows(log)) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 2 <= len(read_rows(log)) < 5
        resumed = subprocess.run(cli_run(killed, "--resume"), env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        _, err = uninterrupted.communicate(timeout=300)
        assert uninterrupted.returncode == 0, err[-3000:]
    finally:
        uninterrupted.kill()
    strip = lambda rows: repr([{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows])
    assert strip(read_rows(log)) == strip(read_rows(whole / "log.jsonl"))


class Counting:
    """A counting source: records every path the loaders read through image_files."""

    def __init__(self, monkeypatch):
        self.paths = []
        real = image_files.read_image_bytes

        def counted(path, *a, **k):
            self.paths.append(path)
            return real(path, *a, **k)

        monkeypatch.setattr(image_files, "read_image_bytes", counted)

    def take(self):
        out, self.paths = self.paths, []
        return out


def batches_for(folder, loader, n_mastered_seed=0):
    config = resolve(TrainConfig(dataset="folder", data_dir=folder, image_size=SIZE, batch_size=16,
                                 eval_batch_size=32, workers=0, loader=loader, device="cpu"))
    data = ds.load_dataset("folder", folder, image_size=SIZE)
    sel = ies_fast.IES(data.num_train, backend="torch", score_every=2)
    return data, sel, make_batches(config, data, sel, torch.device("cpu"), 1, 0)


def set_mastered(sel, mask):
    sel.mastered.copy_(torch.as_tensor(mask))
    sel._invalidate()


@pytest.mark.parametrize("loader", LOADERS)
def test_an_epoch_reads_exactly_its_kept_files_and_those_due(tmp_path, folder, loader, monkeypatch):
    data = copy_of(folder, tmp_path)
    counting = Counting(monkeypatch)
    train_data, sel, batches = batches_for(str(data), loader)
    mask = np.random.default_rng(1).random(train_data.num_train) < 0.6
    set_mastered(sel, mask)
    files = np.array(train_data.train_files)
    batches.set_epoch(0)
    seen = torch.cat([i for _, _, i in batches.train()]).tolist()
    assert sorted(seen) == np.flatnonzero(~mask).tolist()
    assert sorted(counting.take()) == sorted(files[~mask].tolist())  # each kept file once, nothing else
    counts = batches.read_counts()
    assert counts["files_read"] == (~mask).sum()
    assert counts["bytes_read"] == sum(os.path.getsize(f) for f in files[~mask])
    assert sel.needs_scoring()  # epoch 0 scores (score_every=2): every removed file once
    list(batches.score())
    assert sorted(counting.take()) == sorted(files[mask].tolist())
    sel.step()
    set_mastered(sel, mask)
    gone = files[mask][0]
    os.remove(gone)  # a removed sample's file deleted mid-run ...
    batches.set_epoch(1)
    list(batches.train())
    assert not sel.needs_scoring()  # ... is not touched in epoch 1 (not due: the loop skips scoring)
    assert gone not in counting.take()
    sel.step()
    set_mastered(sel, mask)
    assert sel.needs_scoring()  # epoch 2: due, and its absence is named
    with pytest.raises(image_files.BadImageFile, match=os.path.basename(gone)):
        list(batches.score())


# ---- bad folders ---------------------------------------------------------------------------
def first_train_file(data, k=0):
    return sorted(Path(data, "train").rglob("*.JPEG"))[k]


def make_empty_class(data):
    os.makedirs(Path(data, "train", "99-empty"))
    os.makedirs(Path(data, "val", "99-empty"))
    return "empty class folder"


def make_non_image(data):
    first_train_file(data).write_text("not a picture")
    return "not an image file"


def make_truncated(data):
    path = first_train_file(data)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path.name


def make_zero_bytes(data):
    first_train_file(data).write_bytes(b"")
    return "empty image file"


def make_file_link_loop(data):
    path = first_train_file(data)
    path.unlink()
    os.symlink(path.name, path)  # a link to itself
    return path.name


def make_folder_link_loop(data):
    cls = first_train_file(data).parent
    os.symlink("..", cls / "up")
    return "symlink loop"


def make_class_mismatch(data):
    shutil.rmtree(Path(data, "val", "9-ankle-boot"))
    return "same class folders"


BAD = {"empty class": make_empty_class, "non-image": make_non_image, "truncated jpeg": make_truncated,
       "zero bytes": make_zero_bytes, "file symlink loop": make_file_link_loop,
       "folder symlink loop": make_folder_link_loop, "class mismatch": make_class_mismatch}


def cli(tmp_path, data, loader, *extra):
    return ["train", "--dataset", "folder", "--data-dir", str(data), "--image-size", str(SIZE), "--epochs", "1",
            "--batch-size", "16", "--workers", "0", "--loader", loader, "--device", "cpu", "--no-progress",
            "--no-plot", "--out", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("bad", list(BAD))
def test_bad_folder_is_one_line_naming_it(tmp_path, folder, capsys, loader, bad):
    data = copy_of(folder, tmp_path)
    needle = BAD[bad](data)
    one_line_error(capsys, cli(tmp_path, data, loader), needle)


@pytest.mark.parametrize("loader", LOADERS)
def test_unreadable_file(tmp_path, folder, capsys, monkeypatch, loader):
    """Mode 000: tests run as root, who reads anything, so a patched ``open`` refuses
    the file the way the kernel refuses other users."""
    data = copy_of(folder, tmp_path)
    path = str(first_train_file(data))
    os.chmod(path, 0)
    real_open = builtins.open

    def refusing(file, *a, **k):
        if os.fspath(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *a, **k)

    if os.geteuid() == 0:
        monkeypatch.setattr(image_files, "open", refusing, raising=False)
    one_line_error(capsys, cli(tmp_path, data, loader), "cannot read image file", "Permission denied",
                   os.path.basename(path))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("bad", ["non-image", "zero bytes", "file symlink loop"])
def test_bad_files_are_skipped_and_counted(tmp_path, folder, capsys, loader, bad):
    from ies_fast.app.cli import main

    data = copy_of(folder, tmp_path)
    BAD[bad](data)
    assert main(cli(tmp_path, data, loader, "--on-bad-image", "skip")) == 0
    err = capsys.readouterr().err
    assert "skipped 1 bad image file(s)" in err and first_train_file(data).name in err
    row = json.loads(open(tmp_path / "out" / "log.jsonl").readline())
    assert row["files_skipped"] == 1 and row["files_read"] == 80


# ---- the two loaders agree, and the crops follow torchvision's recipe ----------------------
@pytest.mark.skipif(not has_dali(), reason="needs nvidia-dali")
def test_dali_and_torch_loaders_give_the_same_training_pixels(folder):
    """Same (seed, epoch, index) draws: the DALI pipeline's padded crops and flips are
    the torch loader's (up to the two JPEG decoders' rounding)."""
    out = {}
    for loader in ("torch", "dali"):
        data, sel, batches = batches_for(folder, loader)
        set_mastered(sel, np.arange(data.num_train) % 3 == 0)
        batches.set_epoch(2)
        x, _, index = (torch.cat(t) for t in zip(*batches.train()))
        out[loader] = x[index.argsort()]
    diff = (out["torch"] - out["dali"]).abs()
    assert out["torch"].shape == (53, 3, SIZE, SIZE)
    assert diff.mean() < 0.05 and diff.max() < 0.5, (diff.mean(), diff.max())  # normalised units (~1/58 per level)
    shifted = torch.roll(out["dali"], 1, dims=-1)
    assert (out["torch"] - shifted).abs().mean() > 5 * diff.mean()  # a one-pixel shift would show


def test_resized_crop_box_follows_torchvision():
    from ies_fast.data.image_files import resized_crop_box

    rng = np.random.default_rng(0)
    areas, aspects = [], []
    for _ in range(2000):
        w, h = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        left, top, right, bottom = resized_crop_box(w, h, rng.random(10), rng.random(10), rng.random((10, 2)))
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        areas.append((right - left) * (bottom - top) / (w * h))
        aspects.append((right - left) / (bottom - top))
    areas, aspects = np.array(areas), np.array(aspects)
    assert 0.06 < areas.min() < 0.15 and areas.max() > 0.9
    square = [resized_crop_box(200, 200, rng.random(10), rng.random(10), rng.random((10, 2))) for _ in range(2000)]
    square_areas = np.array([(r - l) * (b - t) for l, t, r, b in square]) / 200**2
    # on a square image a try fits unless scale * ratio (or scale / ratio) > 1: nearly uniform in [0.08, 1]
    assert 0.45 < np.median(square_areas) < 0.6 and square_areas.min() < 0.1
    inside = (aspects > 0.7) & (aspects < 1.4)
    assert inside.mean() > 0.95
    # no try fits: torchvision's fallback, the centre crop of the clamped aspect ratio
    assert resized_crop_box(100, 10, np.ones(10), np.ones(10), np.zeros((10, 2))) == (43, 0, 56, 10)


def test_epoch_draws_are_a_uniform_function_of_seed_epoch_index():
    from ies_fast.data.image_files import EpochDraws

    d = EpochDraws(seed=3)
    index = np.arange(20000)
    u = d.uniforms(5, index, 4)
    assert u.shape == (20000, 4) and (u >= 0).all() and (u < 1).all()
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert counts.min() > 0.95 * counts.mean() and counts.max() < 1.05 * counts.mean()
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03 and abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.03
    pick = np.array([17, 4, 19999, 4])
    np.testing.assert_array_equal(d.uniforms(5, pick, 2), u[pick, :2])  # per sample, whatever else is drawn
    for other in (d.uniforms(6, index, 4), EpochDraws(seed=4).uniforms(5, index, 4)):
        assert (other != u).mean() > 0.999
    offsets, flip = d.pad_crop(5, index, 2)
    assert set(np.unique(offsets)) == {0, 1, 2, 3, 4} and 0.48 < flip.mean() < 0.52


def test_torch_loader_without_pillow_says_so(tmp_path, folder, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    one_line_error(capsys, cli(tmp_path, folder, "torch"), "pip install pillow")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_workers_do_not_keep_the_run_lock(tmp_path):
    """DataLoader workers are forked children: once the run dies, they must not hold
    its folder's flock (which lives while any process holds the file open)."""
    import fcntl

    from ies_fast.app.train.run_lock import RunLock

    lock = RunLock(str(tmp_path)).acquire()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # a worker that outlives its parent's lock (os.fork ran the at-fork hooks)
        os.write(ready_w, b"1")
        time.sleep(5)
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        os.close(lock._fd)  # the run dies (its fd closes); the child lives on
        lock._fd = None
        fd = os.open(lock.path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child still held it
        os.close(fd)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready_r)
        os.close(ready_w)
