"""IES as a PyTorch Lightning callback.

::

    ies = IESCallback(len(train_set), delta=1e-3)
    trainer = lightning.Trainer(callbacks=[ies], ...)
    trainer.fit(model, DataLoader(IndexedDataset(train_set), batch_size=64, shuffle=True))

The module's ``training_step`` gets batches ``(x, y, index)`` and either returns
``{"loss": losses.mean(), "per_sample_loss": losses}``, or returns
``ies.update(losses, index)`` (records them and returns the selector's weighted
mean: needed for a selector that reweights the loss, such as InfoBatch), or records
the losses itself with ``ies_fast.cross_entropy(logits, y, index, selector=ies.selector)``.

Each training epoch the callback puts a :class:`ies_fast.data.KeptSampler` into
the training ``DataLoader``'s batch sampler (whether Lightning reuses the loader or
rebuilds it), so only kept samples are read; at the epoch's end it runs the
forward-only scoring pass over the removed samples, ``selector.step()``, and logs
``ies/kept_fraction`` and ``ies/backward_saved_fraction``. Its state goes into
Lightning checkpoints. Under the DDP strategy every rank scores its share of the
removed samples and ``step()`` merges the ranks, so all hold the same mask.

With ``shard_state=True`` the callback builds a
:class:`ies_fast.selectors.sharded.ShardedIES` in :meth:`IESCallback.setup`, once the
strategy has built the process group (each rank holds the state of its samples
``i % world == rank``), and its checkpoint state is the whole state gathered from every
rank (:meth:`ShardedIES.full_state_dict`), so the checkpoint rank 0 writes resumes on
any number of processes.

Per-step LR schedulers (``interval: "step"``) are stepped by epoch progress (see
:meth:`IESCallback.scheduled_steps`): a schedule sized from
``trainer.estimated_stepping_batches`` in ``configure_optimizers`` ends where it
would without IES although IES epochs have fewer optimizer steps.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Callable, Optional

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

from ..checks import check_bool, check_int, integer
from ..data import IndexedDataset, KeptSampler, ScoringSampler, check_length
from ..data.datasets import batch_index
from ..data.samplers import INT64_MAX, INT64_MIN, check_seed
from ..progress import batch_count, planned_steps, position, progress
from ..selectors import make_selector
from ..selectors.base import Selector
from ..selectors.ies import IES, WRAPPER_DEFAULTS
from ..selectors.sharded import check_shardable, process_group_shape, whole_state_dict

__all__ = ["IESCallback"]

STATE_VERSION = 1


def _shuffles(sampler) -> bool:
    """Whether the sampler Lightning (or the user) built draws a random order."""
    if isinstance(sampler, KeptSampler):
        return sampler.shuffle
    return isinstance(sampler, RandomSampler) or (isinstance(sampler, DistributedSampler) and sampler.shuffle)


class IESCallback(Callback):
    """Instance-dependent Early Stopping for ``lightning.Trainer``.

    The selector is ``callback.selector`` (with ``shard_state=True``: ``None`` until
    :meth:`setup`). One that reweights the loss, such as
    InfoBatch, needs ``training_step`` to return :meth:`update`'s loss; the
    returned-dict way of recording is refused for it.

    Limits: one training ``DataLoader`` with a ``torch.utils.data.BatchSampler``
    (any ``batch_size``/``shuffle`` loader has one); ``limit_train_batches`` and
    ``val_check_interval`` as a fraction apply to the epoch's kept batches.

    Per-step LR schedulers (``interval="step"``, ``frequency=1``) are stepped
    extra times so that after each optimizer step they stand at
    :meth:`scheduled_steps`: the run's progress mapped onto the plan
    (``max_epochs`` full epochs, or ``max_steps``), as
    ``trainer.estimated_stepping_batches`` computed it before the first epoch.
    Read that property in ``configure_optimizers`` (as Lightning's docs do); later
    in the run it reports ``max_epochs`` times the current epoch's kept batches,
    because the callback sizes each epoch to its kept batches.
    :attr:`planned_steps` holds the plan.

    Args:
        num_samples: the training set's length (required unless ``selector`` is given).
        delta: passed to the :class:`ies_fast.IES` built here, as are ``order`` to
            ``threshold`` (all ignored with ``selector``; see IES for their meaning).
        order: for the IES.
        window: for the IES.
        score_every: for the IES.
        score_policy: for the IES, but ``"backoff"`` by default, not ``"every"``
            (:data:`ies_fast.selectors.ies.WRAPPER_DEFAULTS`: docs/results.md measured it
            best); with ``shard_state=True``, ``"every"`` (the one it supports).
        score_max_interval: for the IES.
        min_kept: for the IES (the collapse guard's floor).
        threshold: for the IES.
        selector: a ready :class:`ies_fast.Selector` (IES, InfoBatch, ...) for the
            training set, used instead of building an IES.
        shard_state: build a :class:`ies_fast.selectors.sharded.ShardedIES` (per-sample
            state sharded by sample across the ranks) in :meth:`setup`, when the
            strategy's process group exists; needs ``score_policy="every"`` and
            ``threshold="absolute"``, and no ``selector``.
        seed: the kept samples' shuffle seed (``seed + epoch``), an int64; also seeds
            the built IES's replayed samples. It is saved in checkpoints.
        loss_key: the key of the per-sample losses in ``training_step``'s returned dict.
        score_batch_size: the scoring pass's batch size, an int ``>= 1`` (default: the
            training loader's).
        score_fn: ``score_fn(output, y) -> [B]`` per-sample losses for the scoring pass,
            which forwards ``pl_module(x)`` (default: per-sample cross-entropy).
        log: log ``ies/kept_fraction`` and ``ies/backward_saved_fraction`` at each
            training epoch's end (``pl_module.log_dict``, synced across ranks).

    Raises:
        TypeError: ``selector`` is not a Selector, ``seed`` or ``score_batch_size`` is
            not an int, or an IES argument has the wrong type.
        ValueError: neither ``num_samples`` nor ``selector`` is given, ``seed`` is
            outside int64, ``score_batch_size < 1``, a bad IES argument value
            (:class:`ies_fast.IES`; with ``shard_state=True`` those are checked in
            :meth:`setup`), or ``shard_state=True`` with a ``selector``, another
            ``score_policy`` or ``threshold``.
    """

    def __init__(self, num_samples: Optional[int] = None, *, delta: float = 1e-3, order: int = 2, window: int = 3,
                 score_every: int = 1, score_policy: Optional[str] = None,
                 score_max_interval: int = 8, min_kept=0, threshold: str = "absolute",
                 selector: Optional[Selector] = None, seed: int = 0,
                 loss_key: str = "per_sample_loss", score_batch_size: Optional[int] = None,
                 score_fn: Optional[Callable] = None, log: bool = True, shard_state: bool = False):
        if selector is not None and not isinstance(selector, Selector):
            raise TypeError(f"selector must be an ies_fast Selector (IES, InfoBatch, ...), got {type(selector).__name__}")
        check_bool("shard_state", shard_state)
        if shard_state and selector is not None:
            raise ValueError("shard_state=True builds a ShardedIES once the process group exists: leave selector "
                             "out (a ShardedIES built under the process group may be passed as selector instead)")
        self._sharded: Optional[tuple[int, dict]] = None  # (num_samples, IES arguments) until setup() builds it
        if selector is None:
            if num_samples is None:
                raise ValueError("num_samples is required (the training set's length) unless a selector is given")
            if score_policy is None:
                score_policy = "every" if shard_state else WRAPPER_DEFAULTS["score_policy"]
            options = dict(delta=delta, order=order, window=window, score_every=score_every, score_policy=score_policy,
                           score_max_interval=score_max_interval, min_kept=min_kept, threshold=threshold, seed=seed)
            if shard_state:
                check_shardable(score_policy=score_policy, threshold=threshold)
                self._sharded = (num_samples, options)
            else:
                selector = IES(num_samples, **options)
        seed = check_seed(seed)
        if score_batch_size is not None:
            check_int("score_batch_size", score_batch_size, min=1)
        self.selector = selector
        self.seed = seed
        self.loss_key = loss_key
        self.score_batch_size = score_batch_size
        self.score_fn = score_fn
        self.log = log
        self._open = False  # an epoch was trained and not closed (scored + stepped) yet
        self._loader: Optional[DataLoader] = None
        # the plan, from the loader as Lightning built it: (optimizer steps per full epoch, max_epochs, max_steps)
        self._plan: Optional[tuple[int, int, int]] = None
        self._warned_frequency = False

    # ---- placement ------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        """Build the ShardedIES (``shard_state=True``; the process group exists now),
        and move the selector to the strategy's root device."""
        if self._sharded is not None:
            self._build_sharded(trainer)
        self.selector.to(trainer.strategy.root_device)

    def _build_sharded(self, trainer) -> None:
        """The ShardedIES over the default process group, which must hold every one of
        the trainer's processes (``ValueError`` naming ``shard_state`` otherwise)."""
        rank, world = process_group_shape()
        if world != trainer.world_size:
            raise ValueError(f"IESCallback(shard_state=True) shards over the default process group, which has {world} "
                             f"processes, but the trainer has {trainer.world_size}: use a strategy that starts one "
                             "process group over all of them (ddp, fsdp, ...) or shard_state=False")
        if self.selector is not None:  # built by an earlier setup (fit, then validate)
            if (self.selector.rank, self.selector.world) != (rank, world):
                raise ValueError(f"IESCallback(shard_state=True): the selector was built as rank {self.selector.rank} "
                                 f"of {self.selector.world}, the process group is now rank {rank} of {world}: "
                                 "build a new IESCallback (resume from the checkpoint)")
            return
        num_samples, options = self._sharded
        self.selector = make_selector("ies", num_samples, shard_state=True, device=trainer.strategy.root_device,
                                      **options)

    # ---- the epoch ---------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        """Resumed from a checkpoint written inside an epoch (``every_n_train_steps``,
        ``val_check_interval`` < 1): Lightning calls no ``on_train_epoch_start`` for
        the epoch it resumes, so put the epoch's kept sampler back here, at the first
        batch not trained yet (the same kept order: ``seed + epoch``)."""
        fit_loop = trainer.fit_loop
        if not fit_loop.restarted_mid_epoch:
            return
        epoch_loop = fit_loop.epoch_loop
        progress = epoch_loop.batch_progress
        if epoch_loop.restarted_on_train_batch_end and progress.is_last_batch:
            # written at the epoch's last batch: Lightning goes on with the next epoch (without its
            # on_train_epoch_start) and would count the old epoch's batches as done in it
            progress.increment_completed()
            progress.reset_on_run()
            epoch_loop.scheduler_progress.reset_on_run()
            epoch_loop.automatic_optimization.optim_progress.reset_on_run()
            epoch_loop.val_loop.batch_progress.total.reset()
            epoch_loop.reset_restart_stage()
            self.on_train_epoch_start(trainer, pl_module)
            return
        done = progress.current.completed + int(epoch_loop.restarted_on_train_batch_end)
        self._loader = self._install(trainer, skip_batches=done)
        self._open = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Close an epoch a checkpoint left open, then put this epoch's kept sampler
        into the training loader (``TypeError``/``ValueError`` for a loader it cannot use)."""
        if self._open:  # resumed from a checkpoint written before this callback closed its epoch
            self._close(trainer, pl_module)
        self._loader = self._install(trainer)
        self._open = True

    def update(self, per_sample_loss, index):
        """Record a batch's per-sample losses and return the loss for ``training_step``
        to return (the way to record for a selector that reweights the loss).

        Args:
            per_sample_loss: the batch's float ``[B]`` losses (``reduction="none"``), with their graph.
            index: the batch's integer ``[B]`` dataset indices.

        Returns:
            0-d tensor: :meth:`ies_fast.Selector.training_loss` of the batch (the plain
            mean for IES; InfoBatch weights the rows).

        Raises:
            TypeError: the losses are not a floating tensor, or ``index`` not an integer tensor.
            ValueError: a shape other than ``[B]``, or an index out of range
                (:meth:`ies_fast.IES.observe`).
        """
        self.selector.observe(per_sample_loss.detach(), index)
        return self.selector.training_loss(per_sample_loss, index)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """Record the losses ``training_step`` returned under ``loss_key`` (``ValueError``
        for a selector that reweights), then step per-step LR schedules on by progress."""
        if isinstance(outputs, Mapping) and self.loss_key in outputs:
            if self.selector.REWEIGHTS:
                raise ValueError(
                    f"IESCallback: {type(self.selector).__name__} reweights the loss, which the {self.loss_key!r} "
                    "returned by training_step cannot apply (the loss was already backpropagated): return "
                    "ies.update(per_sample_losses, index) from training_step instead")
            self.selector.observe(outputs[self.loss_key].detach(), batch_index(batch))
        self._follow_schedules(trainer, pl_module, batch_idx)

    # ---- per-step LR schedules ---------------------------------------------------------
    @property
    def planned_steps(self) -> Optional[int]:
        """Optimizer steps the run was planned for without IES (what
        ``trainer.estimated_stepping_batches`` said before the first epoch); ``None``
        before the first epoch or when the run has no end."""
        return None if self._plan is None else planned_steps(*self._plan)

    def scheduled_steps(self, global_step: int, epoch: int, steps_done: int, steps_in_epoch: int) -> Optional[int]:
        """Where a per-step schedule sized for :attr:`planned_steps` should stand
        (:func:`ies_fast.progress.position`).

        Args:
            global_step: optimizer steps taken in the run.
            epoch: the current epoch (epochs closed before it).
            steps_done: optimizer steps taken in ``epoch``.
            steps_in_epoch: optimizer steps ``epoch`` has (its kept batches).

        Returns:
            ``round(planned * fraction)``, the fraction being how far the run is to
            whichever of ``max_epochs`` (epoch progress) and ``max_steps`` (optimizer
            steps) ends it (without IES: ``global_step``); ``None`` while
            :attr:`planned_steps` is ``None``.
        """
        if self.planned_steps is None:
            return None
        per_epoch, max_epochs, max_steps = self._plan
        return position(progress(epoch, steps_done, steps_in_epoch), per_epoch, max_epochs=max_epochs,
                        max_steps=max_steps, global_step=global_step)

    def _follow_schedules(self, trainer, pl_module, batch_idx: int) -> None:
        """After Lightning stepped the per-step schedulers once for this optimizer step,
        step them on to :meth:`scheduled_steps` (no device read: host counters only)."""
        if not pl_module.automatic_optimization:
            return
        configs = [c for c in trainer.lr_scheduler_configs if c.interval == "step" and not c.reduce_on_plateau]
        if not configs:
            return
        if any(c.frequency != 1 for c in configs) and not self._warned_frequency:
            self._warned_frequency = True
            warnings.warn("IESCallback steps per-step LR schedulers by epoch progress only with frequency=1; "
                          "schedulers with another frequency run by optimizer steps and end early under IES",
                          stacklevel=2)
        accumulate, batches = trainer.accumulate_grad_batches, trainer.num_training_batches
        done = batch_idx + 1
        if done % accumulate and done < batches:
            return  # no optimizer step this batch: Lightning did not step the schedulers either
        steps_in_epoch, steps_done = batch_count(batches, accumulate), batch_count(done, accumulate)
        step, epoch = trainer.global_step, trainer.current_epoch
        now = self.scheduled_steps(step, epoch, steps_done, steps_in_epoch)
        before = self.scheduled_steps(step - 1, epoch, steps_done - 1, steps_in_epoch)
        if now is None:
            return
        for config in configs:
            if config.frequency == 1:
                for _ in range(now - before - 1):
                    pl_module.lr_scheduler_step(config.scheduler, None)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Score the removed samples, ``selector.step()``, log the fractions
        (``RuntimeError`` when no per-sample loss was recorded this epoch)."""
        if self._open:
            self._close(trainer, pl_module)

    def _install(self, trainer, skip_batches: int = 0) -> DataLoader:
        """Put a KeptSampler for this epoch into the training loader (again if
        Lightning rebuilt it) and size the epoch in the trainer's loops;
        ``skip_batches``: the epoch's batches trained before a mid-epoch checkpoint."""
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
            # the loader as Lightning built it, over the full data set: the plan
            full = _parse_num_batches(RunningStage.TRAINING, len(batches), trainer.limit_train_batches)
            max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
            self._plan = (batch_count(full, trainer.accumulate_grad_batches), max_epochs, trainer.max_steps)
            sampler = KeptSampler(self.selector, shuffle=_shuffles(sampler), seed=self.seed)
            batches.sampler = sampler  # read when the epoch's iterator starts
        sampler.set_epoch(trainer.current_epoch)
        if skip_batches:
            sampler.resume_at(skip_batches * batches.batch_size)
        self._size_epoch(trainer, len(batches))
        return loader

    @staticmethod
    def _size_epoch(trainer, kept_batches: int) -> None:
        """Tell the fit loop this epoch has ``kept_batches`` (``limit_train_batches``
        applied to them); Lightning sized the epoch from the full loader when it built
        it (epoch end, validation, progress bar use it)."""
        fit_loop = trainer.fit_loop
        num_batches = _parse_num_batches(RunningStage.TRAINING, kept_batches, trainer.limit_train_batches)
        combined = getattr(fit_loop, "_combined_loader", None)
        if combined is not None:
            combined.limits = [num_batches]  # the iterator stops here (was: the limit of the full loader)
        fit_loop.max_batches = num_batches
        interval = trainer.val_check_interval
        if isinstance(interval, float) and getattr(trainer, "val_check_batch", None) not in (None, float("inf")):
            trainer.val_check_batch = max(1, int(num_batches * interval))
        fetcher = getattr(fit_loop, "_data_fetcher", None)
        if fetcher is not None and fetcher.fetched == 0:
            # the run's first epoch (or a resumed one): Lightning made the iterator (and sized it,
            # and workers may have prefetched) before the sampler was swapped; later epochs make theirs after
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
        if stats.get("observed", 1) == 0:  # the selectors that count observations (IES)
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
        """The selector's whole state, whether an epoch is open, and ``seed``. With a
        ShardedIES it is gathered from every rank (collective: Lightning calls it on
        every rank when it saves a checkpoint)."""
        return {"version": STATE_VERSION, "selector": whole_state_dict(self.selector), "open": self._open,
                "seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict`: all of it is checked before anything is applied
        (a bad state raises ``ValueError`` naming the key and changes nothing)."""
        if not isinstance(state_dict, dict) or state_dict.get("version") != STATE_VERSION:
            raise ValueError(f"IESCallback state must come from IESCallback.state_dict() (version {STATE_VERSION})")
        if not isinstance(state_dict.get("open"), bool):
            raise ValueError(f"IESCallback state['open'] must be a bool, got {state_dict.get('open')!r}")
        seed = integer(state_dict, "seed", low=INT64_MIN, high=INT64_MAX, where="IESCallback state")
        self.selector.load_state_dict(state_dict["selector"])  # checks the selector state whole, then applies it
        self._open = state_dict["open"]
        self.seed = seed

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Refuse to resume training from a checkpoint without this callback's state:
        it would silently start the selector over (validate/test may load any)."""
        if trainer.state.fn != TrainerFn.FITTING:
            return
        states = checkpoint.get("callbacks") or {}
        if self.state_key not in states and self._legacy_state_key not in states:
            raise ValueError(
                f"IESCallback: the checkpoint has no {self.state_key!r} callback state (it was written without "
                "IESCallback), so resuming would silently start IES over. To start IES on these weights, load "
                "them into the module (LightningModule.load_from_checkpoint) and call fit() without ckpt_path")
