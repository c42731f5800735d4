"""``IndexedDataset``: any map-style dataset, items extended with their index, so the
training loop knows which sample each row of a batch is (the selector needs it);
:data:`INDEX_KEY` and :func:`batch_index`: where a batch carries those indices."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["INDEX_KEY", "IndexedDataset", "batch_index", "check_length"]

#: the key under which a dict item (and so a dict batch) carries its dataset index
#: (IESDataset, IESTrainer and IESCallback all read it here)
INDEX_KEY = "index"


def batch_index(batch, key: str = INDEX_KEY) -> torch.Tensor:
    """The dataset indices of a batch: ``batch[key]`` for a dict batch, the last
    element of a tuple/list batch (``ies_fast.data.IndexedDataset`` appends it)."""
    if isinstance(batch, Mapping):
        if key not in batch:
            raise ValueError(f"a dict batch must carry the samples' dataset indices under {key!r}, got keys {sorted(batch)}")
        index = batch[key]
    elif isinstance(batch, (tuple, list)) and batch:
        index = batch[-1]
    else:
        raise ValueError(f"cannot find the samples' indices in a {type(batch).__name__} batch: "
                         "wrap the training set in ies_fast.data.IndexedDataset")
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.is_floating_point():
        raise ValueError("the batch's index must be a 1-D integer tensor: wrap the training set in "
                         "ies_fast.data.IndexedDataset (items (x, y, index))")
    return index




def check_length(dataset, selector_or_num_samples) -> int:
    """Raise ``ValueError`` unless ``len(dataset)`` equals the selector's ``num_samples``
    (a selector built for another data set would silently mix up samples)."""
    n = getattr(selector_or_num_samples, "num_samples", selector_or_num_samples)
    try:
        length = len(dataset)
    except TypeError:
        raise TypeError(f"dataset must have a length (map-style), got {type(dataset).__name__}") from None
    if length != n:
        raise ValueError(f"dataset has {length} samples but the selector tracks num_samples={n}: build the selector with num_samples=len(dataset)")
    return length


class IndexedDataset(Dataset):
    """Wraps ``dataset`` so that ``ds[i]`` is ``(sample, target, i)``.

    A tuple/list item ``(sample, target)`` becomes ``(sample, target, i)`` (any
    tuple gets ``i`` appended); any other item ``x`` becomes ``(x, i)``. With
    ``selector`` (or ``num_samples``) the length is checked against it.
    Batched fetching (``__getitems__``) is forwarded when the dataset has it."""

    def __init__(self, dataset, selector=None, *, num_samples: Optional[int] = None):
        if not hasattr(dataset, "__getitem__"):
            raise TypeError(f"dataset must be map-style (have __getitem__), got {type(dataset).__name__}")
        self.dataset = dataset
        target = selector if selector is not None else num_samples
        if target is not None:
            check_length(dataset, target)

    def __len__(self) -> int:
        return len(self.dataset)

    @staticmethod
    def _with_index(item, index: int):
        if isinstance(item, (tuple, list)):
            return (*item, index)
        return (item, index)

    def __getitem__(self, index: int):
        return self._with_index(self.dataset[index], index)

    def __getitems__(self, indices: Sequence[int]):
        fetch = getattr(self.dataset, "__getitems__", None)
        items = fetch(indices) if fetch is not None else [self.dataset[i] for i in indices]
        return [self._with_index(item, i) for item, i in zip(items, indices)]

    def __repr__(self) -> str:
        return f"IndexedDataset({self.dataset!r})"
