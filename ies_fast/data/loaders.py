"""Convenience ``DataLoader`` builders over the kept (training) or removed (scoring)
samples; the dataset is checked against the selector and wrapped in
:class:`IndexedDataset` so batches are ``(x, y, index)``."""
from __future__ import annotations

from typing import Optional

from torch.utils.data import DataLoader

from .datasets import IndexedDataset, check_length
from .samplers import KeptBatchSampler, ScoringSampler


def _indexed(dataset, selector):
    check_length(dataset, selector)
    return dataset if isinstance(dataset, IndexedDataset) else IndexedDataset(dataset)


def kept_loader(dataset, selector, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                num_replicas: Optional[int] = None, rank: Optional[int] = None, **loader_kwargs) -> DataLoader:
    """A ``DataLoader`` whose epochs visit ``selector``'s kept samples (a
    :class:`KeptBatchSampler`; reach it as ``loader.batch_sampler`` to ``set_epoch``)."""
    bs = KeptBatchSampler(selector, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                          num_replicas=num_replicas, rank=rank)
    return DataLoader(_indexed(dataset, selector), batch_sampler=bs, **loader_kwargs)


def scoring_loader(dataset, selector, batch_size: int, *, all_samples: bool = False,
                   num_replicas: Optional[int] = None, rank: Optional[int] = None, **loader_kwargs) -> DataLoader:
    """A ``DataLoader`` over the samples to score (removed ones, ascending; large
    batches are fine: no grad). Pass the evaluation-transform dataset."""
    sampler = ScoringSampler(selector, all_samples, num_replicas=num_replicas, rank=rank)
    return DataLoader(_indexed(dataset, selector), batch_size=batch_size, sampler=sampler, **loader_kwargs)
