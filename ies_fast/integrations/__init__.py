"""IES inside the trainers people use. Each submodule imports its framework on
first use only (``import ies_fast`` never imports them):

* ``ies_fast.integrations.lightning``: :class:`IESCallback` for PyTorch Lightning
  (``pip install ies_fast[lightning]``);
* ``ies_fast.integrations.huggingface``: :class:`IESTrainer` for Hugging Face
  ``transformers.Trainer`` (``pip install ies_fast[hf]``).

For a plain loop see :class:`ies_fast.IESDataset`.
"""
from __future__ import annotations

import importlib

__all__ = ["lightning", "huggingface"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
