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

    Only ``dataset`` travels to DataLoader worker processes (not the model, nor
    the selector). Dict items: ``ds[i]`` is the item with ``"index": i`` added
    (batches are dicts; pass ``batch["index"]`` to :meth:`update`). An epoch in
    which nothing was recorded (no :meth:`update`, nor losses recorded into
    ``selector`` otherwise) raises ``RuntimeError`` when it is closed.

    Args:
        dataset: the map-style training set with a length; items ``(sample, target)``
            (any tuple gets the index appended) or dicts (the first is checked here).
        model: the ``torch.nn.Module`` trained; the scoring pass forwards it (no grad,
            ``eval`` mode) on the removed samples.
        delta: :class:`ies_fast.IES`'s mastered threshold (ignored with ``selector``,
            as are all the IES arguments below).
        order: IES's difference order.
        window: IES's window of epochs.
        score_every: IES's re-scoring period of removed samples.
        score_policy: IES's; defaults to ``"backoff"`` (:data:`ies_fast.selectors.ies.WRAPPER_DEFAULTS`,
            the measured winner of docs/results.md), where IES itself defaults to ``"every"``.
        score_max_interval: IES's longest ``"backoff"`` interval.
        min_kept: IES's collapse-guard floor (a count or a fraction).
        threshold: IES's ``"absolute"`` or ``"relative"``.
        device: where the IES built here keeps its state (default: the device of
            ``model``'s first parameter, CPU when it has none).
        selector: a ready :class:`ies_fast.Selector` (IES, InfoBatch, ...) for
            ``len(dataset)`` samples, used instead of building an IES.
        shuffle: shuffle the kept samples each epoch (seed ``seed + epoch``; ``False``:
            ascending order).
        seed: the shuffle's base seed; also seeds the built IES's replayed samples.
        drop_last: under DDP, trim the ranks' shards to equal length instead of padding
            them (:class:`ies_fast.data.KeptSampler`).
        score_batch_size: the scoring pass's batch size, an int ``>= 1``.
        score_fn: ``score_fn(output, target) -> [B]`` per-sample losses for the scoring
            pass (default: per-sample cross-entropy).
        score_dataset: what the scoring pass reads, of ``len(dataset)`` (default:
            ``dataset``); pass the evaluation-transform twin when training augments.
        input_key: the dict items' model input for the scoring pass
            (``model(batch[input_key])``).
        target_key: the dict items' target the scoring pass scores against.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``, ``selector`` is not a
            Selector, ``score_batch_size`` is not an int, ``dataset`` is not map-style
            with a length, or an IES argument has the wrong type.
        ValueError: ``score_batch_size < 1``; ``dataset`` or ``score_dataset`` is not
            of the selector's ``num_samples``; a dict item lacks ``input_key`` or
            ``target_key``, or already has an ``"index"`` key; or a bad IES argument
            value (:class:`ies_fast.IES`).
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
        """Record a batch's per-sample losses and return the loss to backpropagate.

        Args:
            per_sample_loss: float ``[B]``, one loss per row (``reduction="none"``),
                with its graph.
            index: integer ``[B]``, the rows' dataset indices (the batch's last item).

        Returns:
            0-d tensor: the mean of ``per_sample_loss``, each row weighted by the
            selector's ``loss_weights`` (:meth:`ies_fast.Selector.training_loss`; the
            plain mean for IES).

        Raises:
            ValueError: ``per_sample_loss`` is not a 1-D tensor, or ``index`` does not
                fit it (:meth:`ies_fast.IES.observe`).
            TypeError: ``index`` is not an integer tensor, or the losses are not floating point.
        """
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
        """A per-step LR schedule stepped by epoch progress, so that it ends where it
        would without IES although IES epochs have fewer batches. Build it after
        restoring a checkpoint.

        Args:
            scheduler: any object with ``step()`` (a ``torch.optim.lr_scheduler``), sized
                for the full data set: ``len(loader)`` steps per epoch without IES.
            loader: the training ``DataLoader(self, batch_size=..., sampler=self.sampler)``.

        Returns:
            A :class:`ProgressScheduler`: call its ``step()`` where the loop called
            ``scheduler.step()``.

        Raises:
            TypeError: ``scheduler`` has no ``step()`` method.
            ValueError: ``loader`` is not a batched ``DataLoader`` over this dataset's sampler.
        """
        return ProgressScheduler(scheduler, self, loader)

    def end_epoch(self) -> int:
        """Close the open epoch: score the removed samples, then ``selector.step()``.

        Iterating :attr:`sampler` calls it for the previous epoch; call it yourself
        after the last epoch before reading ``selector.stats()``.

        Returns:
            The number of samples scored (0 when no epoch is open).

        Raises:
            RuntimeError: the epoch had kept samples but no loss was recorded for any of
                them (the epoch stays open).
            ValueError: ``score_fn`` returned something other than ``[B]`` losses.
        """
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
        """The wrapper's checkpoint state.

        Returns:
            A dict of the selector's and the sampler's state and whether an epoch is
            open (tensors and numbers only: saves with ``torch.save``, loads with
            ``weights_only=True``).
        """
        return {"version": STATE_VERSION, "selector": self.selector.state_dict(),
                "sampler": self.sampler.state_dict(), "open": self._open}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`, checked whole before anything is applied. A
        :class:`ProgressScheduler` built before this refuses to step: build it after.

        Args:
            state: a dict from :meth:`IESDataset.state_dict`.

        Raises:
            ValueError: ``state`` is not such a dict (another version), or a bad
                ``open``, sampler or selector state; the message names the key and
                nothing is changed.
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"state must be a dict from IESDataset.state_dict() (version {STATE_VERSION})")
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
