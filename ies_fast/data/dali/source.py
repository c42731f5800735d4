"""External-source callbacks: each epoch they serve the batches of an index list
taken from a sampler over the selector (kept samples, removed samples, or all)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..samplers import KeptSampler, ScoringSampler

#: what a pipeline visits per epoch
MODES = ("train", "scoring", "val")


def make_sampler(selector, mode: str, num_samples: int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None, drop_last: bool = False):
    """``train``: the kept samples, shuffled (:class:`KeptSampler`); ``scoring``: the
    removed ones, ascending (:class:`ScoringSampler`); ``val``: every sample in order
    (``selector`` may be None)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "val" and selector is None:
        return None
    if selector is None:
        raise ValueError(f"mode={mode!r} needs a selector")
    if selector.num_samples != num_samples:
        raise ValueError(f"the data has {num_samples} samples but the selector tracks num_samples={selector.num_samples}")
    if mode == "train":
        return KeptSampler(selector, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank, drop_last=drop_last)
    return ScoringSampler(selector, all_samples=mode == "val", num_replicas=num_replicas, rank=rank)


class KeptSource:
    """Callable for ``fn.external_source(batch=True, batch_info=True)``.

    :meth:`start_epoch` fixes the epoch's index order (read from the sampler once);
    each call then returns the next batch — at most ``batch_size`` samples, the last
    one partial — and raises ``StopIteration`` when the order is used up, which
    ends the DALI epoch. Subclasses implement :meth:`fetch`."""

    def __init__(self, num_samples: int, batch_size: int, selector=None, sampler=None):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.selector = selector
        self.sampler = sampler
        self.order = np.zeros(0, dtype=np.int64)
        self.cursor = 0
        self.recent: list = []  # indices of the last batches handed out (for error messages)

    def epoch_order(self) -> np.ndarray:
        if self.sampler is None:
            return np.arange(self.num_samples, dtype=np.int64)
        idx = self.sampler.epoch_indices() if isinstance(self.sampler, KeptSampler) else self.sampler.indices()
        return np.ascontiguousarray(idx.numpy(), dtype=np.int64)  # DALI takes dense arrays only

    def start_epoch(self) -> int:
        """Read this epoch's index list; returns its length."""
        order = self.epoch_order()
        if order.size and (order.min() < 0 or order.max() >= self.num_samples):
            raise ValueError(f"index list out of range [0, {self.num_samples}): the selector was built for other data")
        self.order, self.cursor, self.recent = order, 0, []
        return int(order.size)

    def __call__(self, info=None):
        while self.cursor < self.order.size:
            take = self.order[self.cursor:self.cursor + self.batch_size]
            self.cursor += take.size
            self.recent = (self.recent + [take])[-4:]
            out = self.fetch(take)
            if out is not None:  # None: every sample of this slice was skipped
                return out
        raise StopIteration

    def fetch(self, index: np.ndarray):
        """The external-source outputs for samples ``index`` (ending with the index)."""
        raise NotImplementedError


class ArraySource(KeptSource):
    """Serves ``(images[index], labels[index], index)`` from in-memory arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, selector=None, sampler=None):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
            raise ValueError(f"images must be uint8 NHWC with 1 or 3 channels, got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
        super().__init__(images.shape[0], batch_size, selector, sampler)
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)

    def fetch(self, index):
        return self.images[index], self.labels[index], index
