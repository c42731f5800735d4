"""DALI pipeline over in-memory uint8 NHWC arrays (CIFAR-like): the external
source hands over only the epoch's samples; random crop with zero padding, flip,
normalise, NCHW float output (NHWC with ``channels_last``) plus label and index."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from ...checks import check_int
from .iterator import DALIKeptIterator
from .source import ArraySource, make_sampler

CIFAR_MEAN = (125.307, 122.961, 113.8575)
CIFAR_STD = (62.9932, 62.0887, 66.7048)


def _threads(num_threads: Optional[int]) -> int:
    return num_threads or max(1, min(8, os.cpu_count() or 1))


def array_pipeline(images: np.ndarray, labels: np.ndarray, selector, batch_size: int, *, mode: str = "train",
                   padding: int = 4, flip: bool = True, mean: Sequence[float] = CIFAR_MEAN,
                   std: Sequence[float] = CIFAR_STD, channels_last: bool = False, shuffle: bool = True, seed: int = 0,
                   num_replicas: Optional[int] = None, rank: Optional[int] = None, drop_last: bool = False,
                   device_id: Optional[int] = None, num_threads: Optional[int] = None, prefetch_queue_depth: int = 2):
    """Build (not run) the pipeline. ``mode``: ``train`` (kept samples, shuffled,
    augmented), ``scoring`` (removed samples, ascending, no augmentation) or ``val``
    (all samples; ``selector`` may be None). Training crops ``H x W`` at a uniform
    integer offset in ``[-padding, padding]`` (zero fill) and flips with p=0.5 —
    torchvision's ``RandomCrop(padding=...)`` + ``RandomHorizontalFlip``.
    ``device_id=None`` runs on the CPU; otherwise augmentation runs on that GPU."""
    check_int("batch_size", batch_size, min=1)
    check_int("padding", padding, min=0)
    images = np.asarray(images)
    sampler = make_sampler(selector, mode, len(images), shuffle=shuffle, seed=seed, num_replicas=num_replicas,
                           rank=rank, drop_last=drop_last)
    source = ArraySource(images, labels, batch_size, selector, sampler)
    H, W, C = images.shape[1:]
    if len(mean) != C or len(std) != C:
        raise ValueError(f"mean and std need {C} values (one per channel)")
    train = mode == "train"

    @pipeline_def(batch_size=batch_size, num_threads=_threads(num_threads), device_id=device_id,
                  prefetch_queue_depth=prefetch_queue_depth, seed=seed)
    def pipe():
        x, y, index = fn.external_source(source=source, batch=True, batch_info=True, num_outputs=3,
                                         layout=["HWC", "", ""], dtype=[types.UINT8, types.INT64, types.INT64])
        if device_id is not None:
            x = x.gpu()
        mirror = fn.random.coin_flip() if (train and flip) else 0
        if train and padding:
            start = fn.random.uniform(values=list(range(-padding, padding + 1)), shape=2, dtype=types.INT32)  # integer offsets, uniform
            x = fn.slice(x, start=start, shape=[H, W], axis_names="HW", out_of_bounds_policy="pad")
        x = fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="HWC" if channels_last else "CHW",
                                     mirror=mirror, mean=list(mean), std=list(std))
        return x, y, index

    p = pipe()
    p.build()
    p.ies_source, p.ies_channels_last = source, channels_last
    return p


def array_loader(images, labels, selector, batch_size: int, **kwargs) -> DALIKeptIterator:
    """:func:`array_pipeline` wrapped in a :class:`DALIKeptIterator`."""
    return DALIKeptIterator(array_pipeline(images, labels, selector, batch_size, **kwargs), selector)
