"""Data paths for the epoch benchmark: CIFAR-shaped synthetic data read through a
torch ``DataLoader`` or a DALI pipeline, each visiting only a given index list.

The torch path uses ``ies_fast.data.KeptSampler`` when that module is present
(and accepts ``KeptSampler(selector, seed=...)``), else a plain shuffled
index-list sampler; the DALI path is a minimal CPU pipeline (``device_id=None``)
fed by ``fn.external_source`` with the epoch's index list. Both normalise
uint8 HWC images to float CHW; neither augments (the same work on both paths).
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

MEAN = (125.3, 123.0, 113.9)
STD = (63.0, 62.1, 66.7)


def synthetic_cifar(num_samples: int, num_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``[N, 32, 32, 3]`` (HWC, as CIFAR is stored) and int64 labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num_samples, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=num_samples).astype(np.int64)
    return images, labels


class SyntheticCifar(Dataset):
    """Map-style dataset returning ``(image CHW float, label, index)``; ``__getitems__``
    serves a whole batch with one gather instead of a per-sample Python loop."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(labels)
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(STD).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = (self.images.index_select(0, idx).float() - self.mean) / self.std
        return x, self.labels.index_select(0, idx), idx

    def __getitem__(self, i):
        x, y, idx = self.__getitems__([i])
        return x[0], y[0], idx[0]


class IndexListSampler(Sampler):
    """Yields a fresh seeded shuffle of ``indices`` each epoch (the fallback until
    ``ies_fast.data.KeptSampler`` is available)."""

    def __init__(self, indices: torch.Tensor, seed: int = 0):
        self.indices = indices.cpu()
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.indices.numel()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices[torch.randperm(self.indices.numel(), generator=self.generator)].tolist())


def _batch(items):
    return items  # __getitems__ already returns the stacked batch


def kept_sampler(selector, seed: int = 0) -> tuple[Sampler, str]:
    """``(sampler over the selector's kept samples, which implementation)``."""
    try:
        from ies_fast.data import KeptSampler

        return KeptSampler(selector, seed=seed), "ies_fast.data.KeptSampler"
    except (ImportError, TypeError):
        return IndexListSampler(selector.kept_indices(), seed), "index-list sampler (fallback)"


class TorchLoader:
    """DataLoader over :class:`SyntheticCifar`, batches moved to ``device``."""

    name = "torch"

    def __init__(self, images, labels, batch_size: int, device: torch.device):
        self.dataset = SyntheticCifar(images, labels)
        self.batch_size, self.device = batch_size, device
        self.impl: Optional[str] = None

    def epoch(self, sampler: Sampler):
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=_batch,
                            num_workers=0, pin_memory=self.device.type == "cuda")
        for x, y, idx in loader:
            yield (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True),
                   idx.to(self.device, non_blocking=True))


class DaliLoader:
    """A CPU DALI pipeline fed with an index list per epoch through
    ``fn.external_source``; only the listed samples are read and normalised."""

    name = "dali"

    def __init__(self, images, labels, batch_size: int, device: torch.device, num_threads: int = 0):
        num_threads = num_threads or min(8, os.cpu_count() or 2)
        from nvidia.dali import fn, pipeline_def, types

        self.images, self.labels = images, labels
        self.batch_size, self.device = batch_size, device
        self._batches: list[np.ndarray] = []

        def source(info):
            if info.iteration >= len(self._batches):
                raise StopIteration
            b = self._batches[info.iteration]
            return self.images[b], self.labels[b], b

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=None, prefetch_queue_depth=1)
        def pipe():
            x, y, i = fn.external_source(source=source, batch=True, batch_info=True, num_outputs=3,
                                         layout=["HWC", "", ""])
            x = fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW", mean=list(MEAN), std=list(STD))
            return x, y, i

        self.pipe = pipe()
        self.pipe.build()

    def epoch(self, sampler: Sampler):
        order = np.fromiter(iter(sampler), dtype=np.int64)
        self._batches = [order[j:j + self.batch_size] for j in range(0, order.size, self.batch_size)]
        while True:
            try:
                x, y, i = self.pipe.run()
            except StopIteration:
                self.pipe.reset()
                return
            yield tuple(torch.from_numpy(np.array(t.as_tensor())).to(self.device, non_blocking=True) for t in (x, y, i))


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:
        return False
    return True
