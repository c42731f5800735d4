"""The forward-only scoring pass: losses of the samples left out of training (no
grad), recorded in the selector so their instability keeps being measured.

Model mode: ``eval`` by default. The official IES code scores mastered samples with
``model.eval()``; it is also the only mode without side effects under ``no_grad``
(train-mode BatchNorm would fold batches of only-mastered samples into its running
statistics, and dropout would add noise to the very differences that decide
mastery). ``mode="train"`` is available for models without such layers. The
model's previous mode is restored afterwards, also on error.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from ..losses.cross_entropy_loss import cross_entropy

__all__ = ["score", "per_sample_cross_entropy"]

MODES = ("eval", "train")


def _unpack(batch):
    if isinstance(batch, Mapping):
        try:
            return batch["data"], batch["label"], batch["index"]
        except KeyError:
            raise ValueError(f"a dict batch must have keys 'data', 'label', 'index', got {sorted(batch)}") from None
    if isinstance(batch, (tuple, list)) and len(batch) == 1 and isinstance(batch[0], Mapping):
        return _unpack(batch[0])  # DALIGenericIterator: one dict per pipeline
    if isinstance(batch, (tuple, list)) and len(batch) == 3:
        return batch
    raise ValueError("the loader must yield (x, y, index) batches (wrap the dataset in ies_fast.data.IndexedDataset)")


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def score(selector, model: torch.nn.Module, loader, *, device=None, autocast_dtype: Optional[torch.dtype] = None,
          non_blocking: bool = True, score_fn: Optional[Callable] = None, mode: str = "eval",
          force: bool = False) -> int:
    """Forward ``loader``'s batches ``(x, y, index)`` without grad and record each
    sample's loss in ``selector`` as a scoring observation. Returns the number of
    samples scored (0 when ``selector.needs_scoring()`` is False this epoch, e.g.
    under ``score_every``, unless ``force``).

    ``score_fn(output, y) -> [B]`` (or ``[B, exits]``) per-sample losses replaces the
    default cross-entropy (``ies_fast.cross_entropy``, the fused kernel where
    available). ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward under
    autocast as training does. A ``DistributedDataParallel`` model is unwrapped
    (scoring needs no collectives, so ranks may score different counts). No host
    synchronisation per batch."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not force and not selector.needs_scoring():
        return 0
    model = getattr(model, "module", model) if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    device = torch.device(device) if device is not None else _model_device(model)
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    was_training = model.training
    model.train(mode == "train")
    scored = 0
    try:
        with torch.no_grad():  # inference_mode measured no cheaper (benchmarks/bench_scoring_pass.py)
            for batch in loader:
                x, y, index = _unpack(batch)
                x = x.to(device, non_blocking=non_blocking)
                y = y.to(device, non_blocking=non_blocking)
                n = index.shape[0]
                if n == 0:
                    continue
                with amp:
                    out = model(x)
                if score_fn is None:
                    cross_entropy(out, y, index, selector=selector, reduction="none", scoring=True)
                else:
                    losses = score_fn(out, y)
                    if not isinstance(losses, torch.Tensor) or losses.shape[:1] != (n,):
                        raise ValueError(f"score_fn must return per-sample losses of shape [{n}] (or [{n}, exits])")
                    selector.observe(losses.float(), index, scoring=True)
                scored += n
    finally:
        model.train(was_training)
    return scored


def per_sample_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``score_fn`` equivalent of the default: fp32 per-sample cross-entropy."""
    return F.cross_entropy(output.float(), target, reduction="none")
