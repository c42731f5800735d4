"""Tiny on-disk stand-ins for the real datasets, in their real layouts, for tests.

Each writer returns the parent folder to pass as ``data_dir``/``--data-dir``.
"""
from __future__ import annotations

import os
import pickle

import numpy as np

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _dump(path: str, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _batch(rng, n: int, label_key: bytes, classes: int, title: bytes, coarse: bool = False) -> dict:
    """One batch dict as the CIFAR python release holds it: bytes keys, uint8 [N, 3072]
    channel-planar rows, labels as a Python list."""
    d = {
        b"batch_label": title,
        label_key: rng.randint(0, classes, size=n).tolist(),
        b"data": rng.randint(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%05d.png" % i for i in range(n)],
    }
    if coarse:
        d[b"coarse_labels"] = [y // 5 for y in d[label_key]]
    return d


def write_cifar10(root, n_train_per_batch: int = 20, n_test: int = 20, seed: int = 0) -> str:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` with random pixels."""
    rng = np.random.RandomState(seed)
    folder = os.path.join(str(root), "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for i in range(1, 6):
        _dump(os.path.join(folder, f"data_batch_{i}"),
              _batch(rng, n_train_per_batch, b"labels", 10, b"training batch %d of 5" % i))
    _dump(os.path.join(folder, "test_batch"), _batch(rng, n_test, b"labels", 10, b"testing batch 1 of 1"))
    _dump(os.path.join(folder, "batches.meta"),
          {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": n_train_per_batch, b"num_vis": 3072})
    return str(root)


def write_cifar100(root, n_train: int = 40, n_test: int = 20, seed: int = 0) -> str:
    """``root/cifar-100-python/{train, test, meta}`` with random pixels and fine/coarse labels."""
    rng = np.random.RandomState(seed)
    folder = os.path.join(str(root), "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    _dump(os.path.join(folder, "train"), _batch(rng, n_train, b"fine_labels", 100, b"training batch 1 of 1", True))
    _dump(os.path.join(folder, "test"), _batch(rng, n_test, b"fine_labels", 100, b"testing batch 1 of 1", True))
    _dump(os.path.join(folder, "meta"), {b"fine_label_names": [b"class_%d" % i for i in range(100)],
                                         b"coarse_label_names": [b"super_%d" % i for i in range(20)]})
    return str(root)


def write_image_folder(root, classes: int = 3, per_class: int = 4, size: int = 40, seed: int = 0) -> str:
    """``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``, ``per_class`` images of
    ``size`` x ``size`` per class in each split; each class has its own base colour."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    colours = rng.randint(0, 256, size=(classes, 3))
    for split in ("train", "val"):
        for c in range(classes):
            folder = os.path.join(str(root), split, f"n{c:08d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                noise = rng.randint(-40, 41, size=(size, size, 3))
                pixels = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"n{c:08d}_{split}_{i}.JPEG"), quality=90)
    return str(root)


def has_dali() -> bool:
    """Whether NVIDIA DALI imports (the DALI-loader tests skip otherwise)."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True
