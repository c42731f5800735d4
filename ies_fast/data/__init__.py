"""Data paths that read only the samples a selector keeps.

* torch: :class:`KeptSampler` / :class:`KeptBatchSampler` (training),
  :class:`ScoringSampler` (the forward-only scoring pass), :class:`IndexedDataset`
  (items carry their index), :func:`kept_loader` / :func:`scoring_loader`.
* image folders: :mod:`.image_files` (the ``ImageFolder`` scan, the one counted
  file read, per-``(seed, epoch, index)`` crop draws) and :mod:`.image_dataset`
  (Pillow decoding and torchvision's recipes in ``DataLoader`` workers).
* DALI: ``ies_fast.data.dali`` (imported on first use; needs ``nvidia-dali-cuda130``
  or ``nvidia-dali-cuda120``).
"""
from __future__ import annotations

import importlib

from .datasets import IndexedDataset, check_length
from .loaders import kept_loader, scoring_loader
from .samplers import KeptBatchSampler, KeptSampler, ScoringSampler, shard

__all__ = ["IndexedDataset", "KeptSampler", "KeptBatchSampler", "ScoringSampler", "check_length", "kept_loader",
           "scoring_loader", "shard", "dali"]


def __getattr__(name):
    if name == "dali":  # lazy: importing DALI is slow and optional
        return importlib.import_module(".dali", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
