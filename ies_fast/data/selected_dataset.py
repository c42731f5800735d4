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

Epochs shrink, so a per-step LR schedule sized from the full data set would stop
early: :meth:`IESDataset.schedule` steps it by epoch progress instead (see
:class:`ProgressScheduler`); :attr:`IESDataset.progress` is the epoch progress.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from ..checks import check_int
from ..progress import batch_count, position, progress
from ..selectors.base import Selector
from ..selectors.ies import IES, WRAPPER_DEFAULTS
from .datasets import INDEX_KEY, IndexedDataset, check_length
from .samplers import KeptSampler, ScoringSampler

__all__ = ["IESDataset", "ProgressScheduler"]

STATE_VERSION = 1


def _check_dict_item(item, input_key: str, target_key: str, where: str) -> None:
    """A dict item needs the scoring pass's input and target keys and no ``"index"`` key."""
    if INDEX_KEY in item:
        raise ValueError(f"{where}: a dict item already has the key {INDEX_KEY!r}, where IESDataset puts the index")
    missing = [k for k in (input_key, target_key) if k not in item]
    if missing:
        raise ValueError(f"{where}: a dict item has no key {missing[0]!r} (input_key={input_key!r}, "
                         f"target_key={target_key!r} name the model input and target for the scoring pass); "
                         f"its keys are {sorted(item)}")


class _ScoringItems(Dataset):
    """The scoring pass's view: ``(input, target, i)`` for dict items, as IndexedDataset otherwise."""

    def __init__(self, dataset, input_key: str, target_key: str):
        self.dataset, self.input_key, self.target_key = dataset, input_key, target_key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if isinstance(item, Mapping):
            return item[self.input_key], item[self.target_key], index
        return IndexedDataset._with_index(item, index)


class ProgressScheduler:
    """Steps a per-step LR ``scheduler`` by epoch progress, so that a schedule sized
    for the full data set (``len(loader)`` optimizer steps per epoch without IES)
    ends where it would without IES although IES epochs have fewer batches.

    :meth:`step` (call it where the loop called ``scheduler.step()``, after each
    ``optimizer.step()``; one optimizer step per batch) steps ``scheduler`` until it
    has taken :meth:`target` steps: :func:`ies_fast.progress.position` at the
    progress ``e + b / K`` (epoch ``e``, ``b`` of its ``K`` kept batches done), i.e.
    ``e * P + round(b * P / K)``, ``P`` being a full epoch's batches. Without IES
    (``K = P``) it steps once per batch, as it would unwrapped. Any scheduler works
    (it is only ever stepped forward, one ``step()`` at a time). Build it after
    restoring a checkpoint: it starts from the restored dataset's epoch, and
    :meth:`step` refuses to follow a dataset restored after it was built (the jump
    would step the scheduler once per planned step in between)."""

    def __init__(self, scheduler, dataset: "IESDataset", loader: DataLoader):
        if not callable(getattr(scheduler, "step", None)):
            raise TypeError(f"scheduler must have a step() method, got {type(scheduler).__name__}")
        if not isinstance(loader, DataLoader) or loader.batch_size is None or loader.sampler is not dataset.sampler:
            raise ValueError("loader must be the training DataLoader(dataset, batch_size=..., sampler=dataset.sampler)")
        sampler = dataset.sampler
        per_rank = batch_count(len(dataset), sampler.num_replicas, sampler.drop_last)
        self.scheduler, self.dataset, self.loader = scheduler, dataset, loader
        self.steps_per_epoch = max(1, batch_count(per_rank, loader.batch_size, loader.drop_last))
        self._restores = dataset._restores
        self.steps = self.target()

    def target(self) -> int:
        """The steps the schedule should have taken by now."""
        ds = self.dataset
        done = ds._batches if ds._open else 0
        return position(progress(int(ds.selector.epoch), done, len(self.loader)), self.steps_per_epoch)

    def step(self) -> None:
        if self.dataset._restores != self._restores:
            raise RuntimeError("the dataset was restored (load_state_dict) after this schedule was built: "
                               "build the schedule (ds.schedule(...)) after restoring the checkpoint")
        target = self.target()
        while self.steps < target:
            self.scheduler.step()
            self.steps += 1

    def get_last_lr(self):
        return self.scheduler.get_last_lr()


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
    * :meth:`update` records a batch's per-sample losses and returns the loss to
      backpropagate: their mean, weighted by the selector's ``loss_weights``
      (InfoBatch up-weights kept low-loss samples; IES does not).
    * :meth:`end_epoch` runs the scoring pass and ``step()`` now (call it after the
      last epoch if you read ``selector.stats()``; a no-op when nothing is open).

    ``model`` is forwarded (no grad, ``eval`` mode) on the removed samples, in
    batches of ``score_batch_size``, from ``score_dataset`` (default: ``dataset``;
    pass the evaluation-transform twin when training augments) with
    ``score_fn(output, target) -> [B]`` (default cross-entropy). The IES arguments
    (``delta``, ``order``, ``window``, ``score_every``, ``score_policy``,
    ``score_max_interval``, ``min_kept``: the floor, ``threshold``) are
    :class:`ies_fast.IES`'s, except that ``score_policy`` defaults to ``"backoff"``
    (the measured winner, docs/results.md); or pass a ready ``selector`` (any
    :class:`ies_fast.Selector`). Only ``dataset``
    travels to DataLoader worker processes.

    Dict items: ``ds[i]`` is the item with ``"index": i`` added (batches are dicts;
    pass ``batch["index"]`` to :meth:`update`); the scoring pass forwards
    ``model(batch[input_key])`` and scores it against ``batch[target_key]``. The
    first item is checked at construction.

    An epoch in which nothing was recorded (no :meth:`update`, nor losses recorded
    into ``selector`` otherwise) raises ``RuntimeError`` when it is closed.
    """

    def __init__(self, dataset, model: torch.nn.Module, *, delta: float = 1e-3, order: int = 2, window: int = 3,
                 score_every: int = 1, score_policy: str = WRAPPER_DEFAULTS["score_policy"],
                 score_max_interval: int = 8, min_kept=0, threshold: str = "absolute", device=None,
                 selector: Optional[Selector] = None, shuffle: bool = True, seed: int = 0, drop_last: bool = False, score_batch_size: int = 256,
                 score_fn: Optional[Callable] = None, score_dataset=None, input_key: str = "input",
                 target_key: str = "target"):
        super().__init__(dataset)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_int("score_batch_size", score_batch_size, min=1)
        if selector is not None and not isinstance(selector, Selector):
            raise TypeError(f"selector must be an ies_fast Selector (IES, InfoBatch, ...), got {type(selector).__name__}")
        if selector is None:
            if device is None:
                device = next((p.device for p in model.parameters()), torch.device("cpu"))
            selector = IES(len(dataset), delta=delta, order=order, window=window, device=device,
                           score_every=score_every, score_policy=score_policy,
                           score_max_interval=score_max_interval, min_kept=min_kept, threshold=threshold, seed=seed)
        check_length(dataset, selector)
        if score_dataset is not None:
            check_length(score_dataset, selector)
        for name, source in (("dataset", dataset), ("score_dataset", score_dataset)):
            if source is not None and len(source) and isinstance(source[0], Mapping):
                _check_dict_item(source[0], input_key, target_key, name)
        self.selector = selector
        self.model = model
        self.score_fn = score_fn
        self.score_batch_size = score_batch_size
        self._score_set = _ScoringItems(score_dataset if score_dataset is not None else dataset, input_key, target_key)
        self.sampler = _EpochSampler(self, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self._open = False  # an epoch has started and was not closed yet
        self._seen = self._batches = 0  # rows and batches given to update() in the open epoch (host counts)
        self._restores = 0  # load_state_dict calls (a ProgressScheduler built before one refuses to step)

    @staticmethod
    def _with_index(item, index: int):
        if isinstance(item, Mapping):
            if INDEX_KEY in item:
                raise ValueError(f"a dict item already has the key {INDEX_KEY!r}, where IESDataset puts the index")
            return {**item, INDEX_KEY: index}
        return IndexedDataset._with_index(item, index)

    # ---- the loop's calls -----------------------------------------------------------
    def update(self, per_sample_loss: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Record ``per_sample_loss`` (``[B]``, one per row of the batch whose dataset
        indices are ``index``) and return the loss to backpropagate: its mean, each row
        weighted by the selector's ``loss_weights`` (:meth:`Selector.training_loss`)."""
        if not isinstance(per_sample_loss, torch.Tensor) or per_sample_loss.dim() != 1:
            raise ValueError("per_sample_loss must be a 1-D tensor [B] (use reduction='none')")
        self.selector.observe(per_sample_loss.detach(), index)
        self._seen += per_sample_loss.shape[0]
        self._batches += 1
        return self.selector.training_loss(per_sample_loss, index)

    # ---- progress (for per-step schedules) ----------------------------------------------
    @property
    def progress(self) -> float:
        """Epochs done, with the open epoch's fraction: ``e + rows recorded / rows in
        epoch e`` (3.25 = a quarter into the fourth epoch). It ends at the number of
        epochs run however much IES shrank them: a schedule written as a function of
        progress ends where it would without IES (:meth:`schedule` does this for a
        ``torch.optim.lr_scheduler`` sized in steps)."""
        return float(progress(int(self.selector.epoch), self._seen if self._open else 0, len(self.sampler)))

    def schedule(self, scheduler, loader: DataLoader) -> ProgressScheduler:
        """``scheduler``, sized for the full data set (``len(loader)`` steps per epoch
        without IES), stepped by epoch progress: call the returned object's ``step()``
        instead of ``scheduler.step()``. ``loader`` is the training loader over this
        dataset and its sampler."""
        return ProgressScheduler(scheduler, self, loader)

    def end_epoch(self) -> int:
        """Close the open epoch: score the removed samples, then ``selector.step()``.
        Returns the number of samples scored (0 when no epoch is open). Raises
        ``RuntimeError`` (and leaves the epoch open) when the epoch had kept samples
        but no loss was recorded for any of them."""
        if not self._open:
            return 0
        if self._seen == 0 and len(self.sampler) and not self._recorded_otherwise():
            raise RuntimeError(
                "IESDataset: no per-sample loss was recorded this epoch: call "
                "loss = ds.update(per_sample_losses, index) for every batch (reduction='none')")
        loader = DataLoader(self._score_set, batch_size=self.score_batch_size, sampler=ScoringSampler(self.selector))
        scored = self.selector.score(self.model, loader, score_fn=self.score_fn)
        self.selector.step()
        self._open = False
        self._seen = self._batches = 0
        return scored

    def _recorded_otherwise(self) -> bool:
        """Whether losses reached the selector without update() (one device read per epoch)."""
        observed = getattr(self.selector, "_observed_this_epoch", None)
        return observed is None or bool(observed().any())

    def _begin_epoch(self) -> None:
        self.end_epoch()
        self._open = True
        self._seen = self._batches = 0

    # ---- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Selector and sampler state, and whether an epoch is open (tensors and numbers
        only: saves with ``torch.save``, loads with ``weights_only=True``)."""
        return {"version": STATE_VERSION, "selector": self.selector.state_dict(),
                "sampler": self.sampler.state_dict(), "open": self._open}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"state must be a dict from IESDataset.state_dict() (version {STATE_VERSION})")
        """Restore a :meth:`state_dict`. The whole state is checked before anything is
        applied: a bad one raises ``ValueError`` naming the key and changes nothing."""
        if not isinstance(state.get("open"), bool):
            raise ValueError("state['open'] must be a bool")
        if not isinstance(state.get("sampler"), dict):
            raise ValueError("state['sampler'] must be a dict from KeptSampler.state_dict()")
        sampler = self.sampler.check_state(state["sampler"], where="state['sampler']")
        self.selector.load_state_dict(state["selector"])  # checks the selector state whole, then applies it
        self.sampler.apply_state(sampler)  # cannot fail: checked above
        self._open = state["open"]
        self._seen = self._batches = 0
        self._restores += 1

    def __getstate__(self) -> dict:
        # DataLoader workers need the items only, never the model or the selector
        return {"dataset": self.dataset}

    def __setstate__(self, state: dict) -> None:
        self.dataset = state["dataset"]

    def __repr__(self) -> str:
        return f"IESDataset({self.dataset!r}, {self.selector!r})"
