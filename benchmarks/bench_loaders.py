"""Time one epoch of the data path alone (no model) at kept fractions 1.0 / 0.5 / 0.2:
a torch ``DataLoader`` driven by ``ies_fast.data.KeptBatchSampler`` and the DALI
array pipeline (``ies_fast.data.dali.array_loader``), both doing the CIFAR
training augmentation (pad-4 random crop, flip, normalise) on synthetic
CIFAR-shaped uint8 data, only for the kept samples.

    PYTHONPATH=. python benchmarks/bench_loaders.py [--samples 8192] [--batch-size 256] [--repeats 3] [--json out.json]

Torch paths: ``torch-per-sample`` (a map-style dataset transforming one sample
at a time, how most torch pipelines look) and ``torch-batched`` (the same
transform on the whole batch through ``__getitems__``). Reports the median of
``--repeats`` epochs after one warm-up epoch. ``dali-imagenet`` times the
ImageNet-folder pipeline (read, decode, RandomResizedCrop, flip, normalise) over
a generated folder of small random JPEGs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import ies_fast
from ies_fast.data import IndexedDataset, KeptBatchSampler

MEAN = torch.tensor((125.307, 122.961, 113.8575)).view(3, 1, 1)
STD = torch.tensor((62.9932, 62.0887, 66.7048)).view(3, 1, 1)


class CifarLike(Dataset):
    """uint8 NHWC images with the CIFAR training augmentation done in torch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, padding: int = 4):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)  # N C H W view
        self.labels = torch.from_numpy(labels)
        self.padding = padding

    def __len__(self):
        return len(self.labels)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W] uint8
        B, _, H, W = x.shape
        p = self.padding
        x = torch.nn.functional.pad(x, (p, p, p, p))
        dy, dx = torch.randint(0, 2 * p + 1, (2, B)).tolist()
        x = torch.stack([x[k, :, dy[k]:dy[k] + H, dx[k]:dx[k] + W] for k in range(B)])
        flip = torch.rand(B) < 0.5
        x = torch.where(flip.view(B, 1, 1, 1), x.flip(-1), x)
        return (x.float() - MEAN) / STD

    def __getitem__(self, i):
        return self._augment(self.images[i:i + 1])[0], self.labels[i]


class CifarLikeBatched(CifarLike):
    """Same transform, one call per batch (``DataLoader`` uses ``__getitems__``)."""

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices)
        return self._augment(self.images.index_select(0, idx)), self.labels.index_select(0, idx), idx


def _identity(batch):
    return batch


def selector_at(num_samples: int, fraction: float, seed: int = 0):
    sel = ies_fast.IES(num_samples, backend="torch")
    g = torch.Generator().manual_seed(seed)
    removed = torch.randperm(num_samples, generator=g)[: num_samples - round(fraction * num_samples)]
    sel.mastered[removed] = True
    sel._invalidate()
    return sel


def torch_epoch_fn(images, labels, sel, batch_size, batched: bool):
    bs = KeptBatchSampler(sel, batch_size)
    if batched:  # the dataset returns the whole (x, y, index) batch itself
        loader = DataLoader(CifarLikeBatched(images, labels), batch_sampler=bs, collate_fn=_identity)
    else:
        loader = DataLoader(IndexedDataset(CifarLike(images, labels), sel), batch_sampler=bs, num_workers=0)

    def run():
        n = 0
        for x, y, idx in loader:
            n += idx.numel()
        return n

    return run


def dali_epoch_fn(images, labels, sel, batch_size, threads):
    from ies_fast.data.dali import array_loader

    it = array_loader(images, labels, sel, batch_size, num_threads=threads)

    def run():
        n = 0
        for x, y, idx in it:
            n += idx.numel()
        return n

    return run


def jpeg_folder(root: str, num_samples: int, side: int = 64, classes: int = 10) -> str:
    """An ImageNet-layout folder of ``num_samples`` random ``side``x``side`` JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(num_samples):
        d = os.path.join(root, f"n{i % classes:08d}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(os.path.join(d, f"{i:07d}.JPEG"))
    return root


def dali_imagenet_epoch_fn(root, sel, batch_size, threads, size):
    from ies_fast.data.dali import imagenet_loader

    it = imagenet_loader(root, sel, batch_size, size=size, num_threads=threads)

    def run():
        n = 0
        for x, y, idx in it:
            n += idx.numel()
        return n

    return run


def time_epochs(run, expected: int, repeats: int) -> float:
    assert run() == expected  # warm-up, and every kept sample once
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = run()
        times.append(time.perf_counter() - t0)
        assert n == expected
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.2])
    ap.add_argument("--paths", nargs="+", default=["torch-per-sample", "torch-batched", "dali", "dali-imagenet"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="DALI CPU threads")
    ap.add_argument("--json", default=None)
    ap.add_argument("--jpeg-samples", type=int, default=2048, help="size of the generated JPEG folder (dali-imagenet)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.samples, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.samples).astype(np.int64)
    rows = []
    tmp = tempfile.TemporaryDirectory()
    print(f"{'path':18s} {'kept':>5s} {'samples':>8s} {'epoch s':>9s} {'vs 1.0':>7s}")
    for path in args.paths:
        base = None
        if path == "dali-imagenet":
            root = jpeg_folder(os.path.join(tmp.name, "train"), args.jpeg_samples)
        for f in args.fractions:
            sel = selector_at(args.jpeg_samples if path == "dali-imagenet" else args.samples, f)
            n = int(sel.kept_indices().numel())
            if path == "dali-imagenet":
                try:
                    run = dali_imagenet_epoch_fn(root, sel, args.batch_size, args.threads, size=56)
                except ImportError as e:
                    print(f"dali-imagenet: skipped ({e})")
                    break
            elif path == "dali":
                try:
                    run = dali_epoch_fn(images, labels, sel, args.batch_size, args.threads)
                except ImportError as e:
                    print(f"dali: skipped ({e})")
                    break
            else:
                run = torch_epoch_fn(images, labels, sel, args.batch_size, batched=path == "torch-batched")
            t = time_epochs(run, n, args.repeats)
            base = base or t
            rows.append({"path": path, "kept_fraction": f, "samples": n, "epoch_s": t})
            print(f"{path:18s} {f:5.2f} {n:8d} {t:9.3f} {t / base:7.2f}")
    tmp.cleanup()
    meta = {"jpeg_samples": args.jpeg_samples, "jpeg": "64x64 random RGB, crop 56","machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "num_samples": args.samples, "batch_size": args.batch_size,
            "repeats": args.repeats}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
