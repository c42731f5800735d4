"""IES as a PyTorch Lightning callback.

::

    ies = IESCallback(len(train_set), delta=1e-3)
    trainer = lightning.Trainer(callbacks=[ies], ...)
    trainer.fit(model, DataLoader(IndexedDataset(train_set), batch_size=64, shuffle=True))

The module's ``training_step`` gets batches ``(x, y, index)`` and either returns
``{"loss": losses.mean(), "per_sample_loss": losses}`` or records the losses
itself with ``ies_fast.cross_entropy(logits, y, index, selector=ies.selector)``.

Each training epoch the callback puts a :class:`ies_fast.data.KeptSampler` into
the training ``DataLoader``'s batch sampler (whether Lightning reuses the loader or
rebuilds it), so only kept samples are read; at the epoch's end it runs the
forward-only scoring pass over the removed samples, ``selector.step()``, and logs
``ies/kept_fraction`` and ``ies/backward_saved_fraction``. Its state goes into
Lightning checkpoints. Under the DDP strategy every rank scores its share of the
removed samples and ``step()`` merges the ranks, so all hold the same mask.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Optional

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

from ..data import IndexedDataset, KeptSampler, ScoringSampler, check_length
from ..selectors.ies import IES
from ._batches import batch_index

__all__ = ["IESCallback"]

STATE_VERSION = 1


def _shuffles(sampler) -> bool:
    """Whether the sampler Lightning (or the user) built draws a random order."""
    if isinstance(sampler, KeptSampler):
        return sampler.shuffle
    return isinstance(sampler, RandomSampler) or (isinstance(sampler, DistributedSampler) and sampler.shuffle)


class IESCallback(Callback):
    """Instance-dependent Early Stopping for ``lightning.Trainer``.

    ``num_samples`` is the training set's length; ``delta``, ``order``, ``window``,
    ``score_every`` are :class:`ies_fast.IES`'s (or pass a ready ``selector``).
    ``seed`` seeds the kept samples' shuffle (``seed + epoch``).
    ``loss_key`` names the per-sample losses in ``training_step``'s returned dict.
    The scoring pass forwards ``pl_module(x)`` in batches of ``score_batch_size``
    (default: the training batch size) and takes ``score_fn(output, y) -> [B]``
    (default cross-entropy).

    Limits: one training ``DataLoader`` with a ``torch.utils.data.BatchSampler``
    (any ``batch_size``/``shuffle`` loader has one); ``limit_train_batches`` and
    ``val_check_interval`` as a fraction apply to the epoch's kept batches.
    """

    def __init__(self, num_samples: Optional[int] = None, *, delta: float = 1e-3, order: int = 2, window: int = 3,
                 score_every: int = 1, selector: Optional[IES] = None, seed: int = 0,
                 loss_key: str = "per_sample_loss", score_batch_size: Optional[int] = None,
                 score_fn: Optional[Callable] = None, log: bool = True):
        if selector is None:
            if num_samples is None:
                raise ValueError("num_samples is required (the training set's length) unless a selector is given")
            selector = IES(num_samples, delta=delta, order=order, window=window, score_every=score_every)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if score_batch_size is not None and (isinstance(score_batch_size, bool) or not isinstance(score_batch_size, int)
                                             or score_batch_size < 1):
            raise ValueError(f"score_batch_size must be a positive int, got {score_batch_size!r}")
        self.selector = selector
        self.seed = seed
        self.loss_key = loss_key
        self.score_batch_size = score_batch_size
        self.score_fn = score_fn
        self.log = log
        self._open = False  # an epoch was trained and not closed (scored + stepped) yet
        self._loader: Optional[DataLoader] = None

    # ---- placement ------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        self.selector.to(trainer.strategy.root_device)

    # ---- the epoch ---------------------------------------------------------------------
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._open:  # resumed from a checkpoint written before this callback closed its epoch
            self._close(trainer, pl_module)
        self._loader = self._install(trainer)
        self._open = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if isinstance(outputs, Mapping) and self.loss_key in outputs:
            self.selector.observe(outputs[self.loss_key].detach(), batch_index(batch))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._open:
            self._close(trainer, pl_module)

    def _install(self, trainer) -> DataLoader:
        """Put a KeptSampler for this epoch into the training loader (again if
        Lightning rebuilt it) and size the epoch in the trainer's loops."""
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader) or not isinstance(loader.batch_sampler, BatchSampler):
            raise TypeError("IESCallback needs one training torch DataLoader with a batch_size (a BatchSampler), "
                            f"got {type(loader).__name__}")
        if not isinstance(loader.dataset, IndexedDataset):  # else a batch's last tensor (targets) would pass for indices
            raise TypeError("IESCallback: wrap the training set in ies_fast.data.IndexedDataset so batches carry "
                            f"(x, y, index), got {type(loader.dataset).__name__}")
        check_length(loader.dataset, self.selector)
        batches = loader.batch_sampler
        sampler = batches.sampler
        if not (isinstance(sampler, KeptSampler) and sampler.selector is self.selector):
            sampler = KeptSampler(self.selector, shuffle=_shuffles(sampler), seed=self.seed)
            batches.sampler = sampler  # read when the epoch's iterator starts
        sampler.set_epoch(trainer.current_epoch)
        self._size_epoch(trainer, len(batches))
        return loader

    @staticmethod
    def _size_epoch(trainer, num_batches: int) -> None:
        """Tell the fit loop this epoch has ``num_batches`` (Lightning sized it when
        it built the loader: end-of-epoch validation and the progress bar use it)."""
        fit_loop = trainer.fit_loop
        fit_loop.max_batches = num_batches
        interval = trainer.val_check_interval
        if isinstance(interval, float) and getattr(trainer, "val_check_batch", None) not in (None, float("inf")):
            trainer.val_check_batch = max(1, int(num_batches * interval))
        fetcher = getattr(fit_loop, "_data_fetcher", None)
        if fetcher is not None and fetcher.fetched == 0:
            # the run's first epoch: Lightning made the iterator (and sized it, and workers may
            # have prefetched) before the sampler was swapped; later epochs make theirs after
            iter(fetcher)

    def _close(self, trainer, pl_module) -> None:
        """Score the removed samples, step the selector, log the fractions."""
        loader = self._loader if self._loader is not None else trainer.train_dataloader
        scoring = DataLoader(
            loader.dataset, batch_size=self.score_batch_size or loader.batch_size or 256,
            sampler=ScoringSampler(self.selector), collate_fn=loader.collate_fn,
        )
        self.selector.score(pl_module, scoring, score_fn=self.score_fn)
        self.selector.step()
        self._open = False
        stats = self.selector.stats()  # one read per epoch
        if stats["observed"] == 0:
            raise RuntimeError(
                f"IESCallback: no per-sample loss was recorded this epoch: return {{'loss': ..., "
                f"'{self.loss_key}': per_sample_losses}} from training_step, or call "
                "ies_fast.cross_entropy(logits, y, index, selector=callback.selector)")
        if self.log and trainer.training:
            pl_module.log_dict({
                "ies/kept_fraction": stats["kept"] / stats["num_samples"],
                "ies/backward_saved_fraction": stats["backward_saved_fraction"],
            }, on_step=False, on_epoch=True, sync_dist=True)  # equal on every rank; synced so monitors agree

    # ---- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "selector": self.selector.state_dict(), "open": self._open,
                "seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or state_dict.get("version") != STATE_VERSION:
            raise ValueError(f"IESCallback state must come from IESCallback.state_dict() (version {STATE_VERSION})")
        if not isinstance(state_dict.get("open"), bool) or not isinstance(state_dict.get("seed"), int):
            raise ValueError("IESCallback state needs a bool 'open' and an int 'seed'")
        self.selector.load_state_dict(state_dict["selector"])  # validated whole before anything is applied
        self._open = state_dict["open"]
        self.seed = state_dict["seed"]
