"""Where a batch keeps its samples' dataset indices (shared by the integrations)."""
from __future__ import annotations

from collections.abc import Mapping

import torch

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
