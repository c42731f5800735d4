"""ies_fast.app.train.datasets: CIFAR pickles round-trip (CHW planes -> NHWC) from fixtures
in the real layout, vector datasets are standardised, synthetic images are deterministic,
balanced and learnable, image folders are ordered like torchvision's ImageFolder, and
every failure says what is wrong."""
from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from ies_fast.app.train.datasets import (CIFAR10_MEAN, CIFAR100_STD, DATASETS, IMAGENET_MEAN, TrainData, load_dataset,
                                     scan_image_folder)
from _support.train_fixtures import write_cifar10, write_cifar100, write_image_folder


def raw_batches(folder: str, names, label_key: bytes):
    """Pixels and labels straight from the pickles, decoded independently of the loader."""
    xs, ys = [], []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            d = pickle.load(f, encoding="bytes")
        xs.append(np.asarray(d[b"data"]))
        ys += list(d[label_key])
    return np.concatenate(xs), np.asarray(ys)


def check_pixels(images: torch.Tensor, raw: np.ndarray) -> None:
    """``images[n, h, w, c]`` must be raw row n at c * 1024 + h * 32 + w (the release's channel planes)."""
    assert images.dtype == torch.uint8 and images.is_contiguous() and images.shape == (len(raw), 32, 32, 3)
    rng = np.random.RandomState(1)
    for _ in range(200):  # spot checks of the documented index formula ...
        n, h, w, c = rng.randint(len(raw)), rng.randint(32), rng.randint(32), rng.randint(3)
        assert images[n, h, w, c].item() == raw[n, c * 1024 + h * 32 + w]
    # ... and all of it: red plane first, then green, then blue
    planes = images.permute(0, 3, 1, 2).reshape(len(raw), 3072).numpy()
    np.testing.assert_array_equal(planes, raw)


def test_cifar10_round_trip(tmp_path):
    root = write_cifar10(tmp_path, n_train_per_batch=7, n_test=5, seed=3)
    folder = os.path.join(root, "cifar-10-batches-py")
    data = load_dataset("cifar10", root)
    assert isinstance(data, TrainData)
    assert (data.name, data.kind, data.num_classes, data.input_shape) == ("cifar10", "image", 10, (3, 32, 32))
    assert data.num_train == 35 and data.mean == CIFAR10_MEAN and data.std == (62.9932, 62.0887, 66.7048)
    raw_x, raw_y = raw_batches(folder, [f"data_batch_{i}" for i in range(1, 6)], b"labels")
    check_pixels(data.train_x, raw_x)
    assert data.train_y.dtype == torch.int64 and data.train_y.tolist() == raw_y.tolist()
    raw_x, raw_y = raw_batches(folder, ["test_batch"], b"labels")
    check_pixels(data.test_x, raw_x)
    assert data.test_y.tolist() == raw_y.tolist()
    # the extracted folder itself is accepted too
    same = load_dataset("cifar10", folder)
    assert torch.equal(same.train_x, data.train_x) and torch.equal(same.test_y, data.test_y)


def test_cifar100_round_trip(tmp_path):
    root = write_cifar100(tmp_path, n_train=9, n_test=4, seed=5)
    folder = os.path.join(root, "cifar-100-python")
    for where in (root, folder):
        data = load_dataset("cifar100", where)
        assert (data.name, data.kind, data.num_classes, data.num_train) == ("cifar100", "image", 100, 9)
        assert data.std == CIFAR100_STD and data.mean == (129.304, 124.070, 112.434)
        raw_x, raw_y = raw_batches(folder, ["train"], b"fine_labels")
        check_pixels(data.train_x, raw_x)
        assert data.train_y.tolist() == raw_y.tolist()
        raw_x, raw_y = raw_batches(folder, ["test"], b"fine_labels")
        check_pixels(data.test_x, raw_x)
        assert data.test_y.tolist() == raw_y.tolist()


def test_cifar_missing(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar10", missing)
    msg = str(e.value)
    assert repr(missing) in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    assert os.path.join(missing, "cifar-10-batches-py") in msg and "data_batch_1" in msg and "test_batch" in msg
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100 .*cifar-100-python.tar.gz.*cifar-100-python"):
        load_dataset("cifar100", missing)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_dataset("cifar10", None)
    # one batch missing is the same clear message
    root = write_cifar10(tmp_path / "partial")
    os.remove(os.path.join(root, "cifar-10-batches-py", "data_batch_3"))
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found under"):
        load_dataset("cifar10", root)


def test_cifar_corrupt(tmp_path):
    root = write_cifar10(tmp_path)
    path = os.path.join(root, "cifar-10-batches-py", "data_batch_2")
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="data_batch_2"):
        load_dataset("cifar10", root)
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_2 is not a CIFAR batch"):
        load_dataset("cifar10", root)


def test_digits():
    data = load_dataset("digits")
    assert (data.kind, data.num_classes, data.input_shape, data.num_train) == ("vector", 10, (64,), 1438)
    assert data.train_x.dtype == torch.float32 and data.train_x.shape == (1438, 64) and data.test_x.shape == (359, 64)
    assert data.mean is None and data.std is None
    assert data.train_x.mean(0).abs().max() < 1e-4
    assert set(data.train_y.tolist()) == set(range(10))


def test_digits_are_sklearns_without_importing_it():
    """The digits loader reads scikit-learn's bundled file itself (importing
    sklearn.datasets costs about 1 CPU s a run): the same arrays as ``load_digits()``,
    and a fresh process that loads them through the CLI's path imports neither
    sklearn nor scipy."""
    from sklearn.datasets import load_digits

    from ies_fast.app.demo import digits_arrays

    pixels, labels = digits_arrays()
    ref = load_digits()
    assert pixels.dtype == ref.data.dtype and np.array_equal(pixels, ref.data)
    assert labels.dtype == ref.target.dtype and np.array_equal(labels, ref.target)
    code = ("import sys, ies_fast.app.cli\n"
            "from ies_fast.app.train.datasets import load_dataset\n"
            "assert load_dataset('digits').num_train == 1438\n"
            "print(sorted({'sklearn', 'scipy'} & set(sys.modules)))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_mnist1d():
    pytest.importorskip("mnist1d")
    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    data = load_dataset("mnist1d")
    assert (random.random(), np.random.rand()) == before  # the generator's reseeding does not leak
    assert (data.kind, data.num_classes, data.input_shape) == ("vector", 10, (40,))
    assert data.train_x.shape == (4000, 40) and data.test_x.shape == (1000, 40)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert abs(data.train_x.mean().item()) < 1e-4 and abs(data.train_x.std().item() - 1) < 1e-3
    assert abs(data.test_x.mean().item()) < 0.2 and set(data.test_y.tolist()) == set(range(10))
    assert torch.equal(load_dataset("mnist1d").train_x, data.train_x)  # generated, not random per call


def test_synthetic_shapes_and_determinism():
    a = load_dataset("synthetic", seed=1, synthetic_size=103, synthetic_classes=5, image_size=12)
    assert (a.kind, a.num_classes, a.input_shape, a.num_train) == ("image", 5, (3, 12, 12), 103)
    assert a.train_x.shape == (103, 12, 12, 3) and a.train_x.dtype == torch.uint8 and a.train_x.is_contiguous()
    assert a.test_x.shape == (20, 12, 12, 3) and a.test_y.shape == (20,) and a.train_y.dtype == torch.int64
    counts = torch.bincount(a.train_y, minlength=5)
    assert counts.max() - counts.min() <= 1
    assert a.train_y[:10].tolist() != sorted(a.train_y[:10].tolist())  # shuffled
    b = load_dataset("synthetic", seed=1, synthetic_size=103, synthetic_classes=5, image_size=12)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y) and torch.equal(a.test_x, b.test_x)
    assert a.mean == b.mean
    c = load_dataset("synthetic", seed=2, synthetic_size=103, synthetic_classes=5, image_size=12)
    assert not torch.equal(a.train_x, c.train_x)
    # mean/std are the train set's, per channel in 0..255 units
    pixels = a.train_x.reshape(-1, 3).double()
    assert torch.allclose(torch.tensor(a.mean, dtype=torch.float64), pixels.mean(0), atol=1e-6)
    assert torch.allclose(torch.tensor(a.std, dtype=torch.float64), pixels.std(0, unbiased=False), atol=1e-6)
    assert load_dataset("synthetic", synthetic_size=1).test_x.shape == (1, 32, 32, 3)


def test_synthetic_learnable_not_trivial():
    data = load_dataset("synthetic", seed=0, synthetic_size=3000, synthetic_classes=10, image_size=16)
    x = data.train_x.reshape(data.num_train, -1).float()
    means = torch.stack([x[data.train_y == k].mean(0) for k in range(10)])
    pred = torch.cdist(data.test_x.reshape(len(data.test_y), -1).float(), means).argmin(1)
    acc = (pred == data.test_y).float().mean().item()
    assert 0.5 < acc < 0.98, acc  # chance is 0.1: learnable, but not perfectly at once


def test_image_folder(tmp_path):
    root = write_image_folder(tmp_path, classes=3, per_class=4, size=20)
    # files a folder scan must skip or keep, and a nested folder ImageFolder walks into
    cls0 = os.path.join(root, "train", "n00000000")
    open(os.path.join(cls0, "notes.txt"), "w").close()
    os.makedirs(os.path.join(cls0, "sub"))
    from PIL import Image

    Image.new("RGB", (8, 8)).save(os.path.join(cls0, "sub", "A.png"))
    Image.new("RGB", (8, 8)).save(os.path.join(cls0, "B.jpg"))
    data = load_dataset("imagenet", root, image_size=24)
    assert (data.kind, data.num_classes, data.input_shape) == ("files", 3, (3, 24, 24))
    assert data.train_x is None and data.test_x is None and data.mean == IMAGENET_MEAN
    assert data.num_train == 14 and len(data.train_files) == 14 and len(data.test_files) == 12
    assert data.train_y.dtype == torch.int64 and data.train_y.tolist() == [0] * 6 + [1] * 4 + [2] * 4
    assert not any(f.endswith(".txt") for f in data.train_files)
    assert data.train_files[0].endswith("B.jpg") and data.train_files[5].endswith(os.path.join("sub", "A.png"))
    files, labels, classes = scan_image_folder(os.path.join(root, "val"))
    assert files == data.test_files and labels == data.test_y.tolist()
    assert classes == ["n00000000", "n00000001", "n00000002"]
    try:  # the same order as torchvision's ImageFolder, where torchvision works
        from torchvision.datasets import ImageFolder
    except Exception:  # noqa: BLE001 - missing, or built for another torch
        return
    reference = ImageFolder(os.path.join(root, "train"))
    assert [p for p, _ in reference.samples] == data.train_files
    assert [y for _, y in reference.samples] == data.train_y.tolist()


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("imagenet", str(tmp_path))
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "train") in msg and "<class>/*.JPEG" in msg and "val" in msg
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_dataset("imagenet", None)
    root = write_image_folder(tmp_path / "mismatch", classes=2, per_class=1, size=8)
    os.rename(os.path.join(root, "val", "n00000001"), os.path.join(root, "val", "n00000009"))
    with pytest.raises(ValueError, match="same class folders"):
        load_dataset("imagenet", root)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"dataset must be one of digits, mnist1d, fashion-mnist, mnist, cifar10, cifar100, "
                                         r"imagenet, folder, synthetic, got 'emnist'"):
        load_dataset("emnist")
    assert DATASETS == ("digits", "mnist1d", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagenet", "folder",
                        "synthetic")
    for kw, arg in [(dict(synthetic_size=0), "synthetic_size"), (dict(synthetic_classes=1), "synthetic_classes"),
                    (dict(image_size=0), "image_size")]:
        with pytest.raises(ValueError, match=arg):
            load_dataset("synthetic", **kw)
    with pytest.raises(TypeError, match="synthetic_size"):  # a wrong type
        load_dataset("synthetic", synthetic_size=2.5)
