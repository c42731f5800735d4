"""``IESDataset``: IES in a plain training loop in about three lines (in the spirit
of InfoBatch's wrapper).

The wrapper owns an :class:`ies_fast.IES` selector and a :class:`KeptSampler`;
items carry their index. Each time the sampler starts an epoch it first closes
the previous one — the forward-only scoring pass over the removed samples with
the wrapped model, then ``selector.step()`` — so the loop only records losses::

    train_set = IESDataset(train_set, model, delta=1e-3)                       # 1
    loader = DataLoader(train_set, batch_size=64, sampler=train_set.sampler)    # 2
    for x, y, index in loader:
        loss = train_set.update(F.cross_entropy(model(x), y, reduction="none"), index)   # 3

This is the hand-wired loop of docs/integrations.md exactly (same masks, same model for
the same seed; tested): closing epoch ``e`` at the start of epoch ``e + 1`` sees
the same weights as closing it right after its last batch.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader

from ..selector import IES
from .datasets import IndexedDataset, check_length
from .samplers import KeptSampler, ScoringSampler

__all__ = ["IESDataset"]

STATE_VERSION = 1


class _EpochSampler(KeptSampler):
    """A :class:`KeptSampler` that closes the owner's previous epoch before yielding."""

    def __init__(self, owner: "IESDataset", **kwargs):
        super().__init__(owner.selector, **kwargs)
        self._owner = owner

    def __iter__(self) -> Iterator[int]:
        self._owner._begin_epoch()
        return super().__iter__()


class IESDataset(IndexedDataset):
    """``dataset`` with IES attached: ``ds[i]`` is ``(sample, target, i)``.

    * ``sampler``: the kept samples of the current epoch (seeded shuffle
      ``seed + epoch``, DDP-sharded like ``DistributedSampler``); iterating it
      starts an epoch, closing the previous one first (:meth:`end_epoch`).
    * :meth:`update` records a batch's per-sample losses and returns their mean.
    * :meth:`end_epoch` runs the scoring pass and ``step()`` now (call it after the
      last epoch if you read ``selector.stats()``; a no-op when nothing is open).

    ``model`` is forwarded (no grad, ``eval`` mode) on the removed samples, in
    batches of ``score_batch_size``, from ``score_dataset`` (default: ``dataset``;
    pass the evaluation-transform twin when training augments) with
    ``score_fn(output, target) -> [B]`` (default cross-entropy). The IES arguments
    are :class:`ies_fast.IES`'s; or pass a ready ``selector``. Only ``dataset``
    travels to DataLoader worker processes.
    """

    def __init__(self, dataset, model: torch.nn.Module, *, delta: float = 1e-3, order: int = 2, window: int = 3,
                 score_every: int = 1, device=None, selector: Optional[IES] = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, score_batch_size: int = 256,
                 score_fn: Optional[Callable] = None, score_dataset=None):
        super().__init__(dataset)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(score_batch_size, bool) or not isinstance(score_batch_size, int) or score_batch_size < 1:
            raise ValueError(f"score_batch_size must be a positive int, got {score_batch_size!r}")
        if selector is None:
            if device is None:
                device = next((p.device for p in model.parameters()), torch.device("cpu"))
            selector = IES(len(dataset), delta=delta, order=order, window=window, device=device,
                           score_every=score_every)
        check_length(dataset, selector)
        if score_dataset is not None:
            check_length(score_dataset, selector)
        self.selector = selector
        self.model = model
        self.score_fn = score_fn
        self.score_batch_size = score_batch_size
        self._score_set = IndexedDataset(score_dataset if score_dataset is not None else dataset)
        self.sampler = _EpochSampler(self, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self._open = False  # an epoch has started and was not closed yet

    # ---- the loop's calls -----------------------------------------------------------
    def update(self, per_sample_loss: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Record ``per_sample_loss`` (``[B]``, one per row of the batch whose dataset
        indices are ``index``) and return its mean, the loss to backpropagate."""
        if not isinstance(per_sample_loss, torch.Tensor) or per_sample_loss.dim() != 1:
            raise ValueError("per_sample_loss must be a 1-D tensor [B] (use reduction='none')")
        self.selector.observe(per_sample_loss.detach(), index)
        return per_sample_loss.mean()

    def end_epoch(self) -> int:
        """Close the open epoch: score the removed samples, then ``selector.step()``.
        Returns the number of samples scored (0 when no epoch is open)."""
        if not self._open:
            return 0
        loader = DataLoader(self._score_set, batch_size=self.score_batch_size, sampler=ScoringSampler(self.selector))
        scored = self.selector.score(self.model, loader, score_fn=self.score_fn)
        self.selector.step()
        self._open = False
        return scored

    def _begin_epoch(self) -> None:
        self.end_epoch()
        self._open = True

    # ---- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Selector and sampler state, and whether an epoch is open (tensors and numbers
        only: saves with ``torch.save``, loads with ``weights_only=True``)."""
        return {"version": STATE_VERSION, "selector": self.selector.state_dict(),
                "sampler": self.sampler.state_dict(), "open": self._open}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"state must be a dict from IESDataset.state_dict() (version {STATE_VERSION})")
        if not isinstance(state.get("open"), bool):
            raise ValueError("state['open'] must be a bool")
        sampler = state.get("sampler")
        if not isinstance(sampler, dict) or not isinstance(sampler.get("seed"), int) or not (
                sampler.get("epoch") is None or isinstance(sampler.get("epoch"), int)):
            raise ValueError("state['sampler'] must be a dict from KeptSampler.state_dict() (int 'seed', 'epoch')")
        self.selector.load_state_dict(state["selector"])  # validates the whole selector state first
        self.sampler.load_state_dict(state["sampler"])
        self._open = state["open"]

    def __getstate__(self) -> dict:
        # DataLoader workers need the items only, never the model or the selector
        return {"dataset": self.dataset}

    def __setstate__(self, state: dict) -> None:
        self.dataset = state["dataset"]

    def __repr__(self) -> str:
        return f"IESDataset({self.dataset!r}, {self.selector!r})"
