"""IES in Hugging Face's ``transformers.Trainer``.

::

    trainer = IESTrainer(model=model, args=args, train_dataset=train_set, ies={"delta": 1e-3})
    trainer.train()                                  # or train(resume_from_checkpoint=True)

:class:`IESTrainer` is a ``Trainer`` that

* adds each training example's dataset index to its features (key ``"index"``,
  removed again before the model sees the batch);
* trains each epoch on the kept examples only (a :class:`ies_fast.data.KeptSampler`:
  shuffled, or in dataset order with ``train_sampling_strategy="sequential"``);
* records every example's loss in ``compute_loss`` from the model's logits: for
  ``[B, T, V]`` logits the causal-LM loss (shifted labels, ``-100`` ignored)
  averaged over the example's tokens, for ``[B, C]`` logits the cross-entropy;
  the training loss itself is the model's, unchanged, unless the selector
  reweights (InfoBatch): then it is the mean of those per-example losses times
  the selector's ``loss_weights`` (:meth:`ies_fast.Selector.training_loss`);
* at each epoch's end scores the removed examples (forward only, eval mode, in
  ``per_device_eval_batch_size`` batches) and calls ``selector.step()``;
* runs the LR schedule by progress: with ``num_train_epochs``, the schedule the
  Trainer built (``lr_scheduler_type``, warm-up) is evaluated at ``(epoch + kept
  steps done / kept steps in the epoch) x full steps per epoch``, so it ends where
  it would without IES although epochs shrink; with ``max_steps=N`` it runs exactly
  N optimizer steps (as many epochs as that takes) on the usual step-count schedule;
  ``state.epoch`` is that progress (epochs done, fractions of the kept epoch);
* writes the selector into every checkpoint folder (``ies_selector.pt``, atomically,
  before ``trainer_state.json``) and restores it, with the position inside the
  shrunken epoch, on ``train(resume_from_checkpoint=...)``; ``True`` picks the
  newest *complete* checkpoint (one a killed run left half-written is skipped).

``ies={..., "shard_state": True}`` builds a :class:`ies_fast.selectors.sharded.ShardedIES`
(each rank holds the state of its samples ``i % world == rank``) once the Trainer has
set up its processes (the end of ``Trainer.__init__``, where accelerate has built the
process group); the checkpoint file holds the whole state, gathered from every rank
(:meth:`ShardedIES.full_state_dict`), so it resumes on any number of processes.

``gradient_accumulation_steps`` must be 1 (the Trainer groups accumulation by the
full epoch's length) and ``train_sampling_strategy`` "random" or "sequential" (the
kept sampler replaces the others).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import sys

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import Dataset, Subset
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging as hf_logging

from ..data import KeptSampler
from ..data.datasets import INDEX_KEY, batch_index
from .. import progress as _progress
from ..checks import check_bool
from ..losses.cross_entropy_loss import causal_lm_cross_entropy, cross_entropy
from ..selectors import make_selector
from ..selectors.base import Selector
from ..selectors.ies import IES, WRAPPER_DEFAULTS
from ..selectors.sharded import check_shardable, process_group_shape, whole_state_dict
from ._hf_checkpoint import (STATE_FILE, STATE_VERSION, IncompleteCheckpoint, check_complete, discard_markers,
                             newest_complete_checkpoint, read_state, write_state)

__all__ = ["IESTrainer", "IndexedExamples", "ProgressLR", "INDEX_KEY", "STATE_FILE"]

SAMPLING = ("random", "sequential")  # the train_sampling_strategy values the kept sampler honours


class IndexedExamples(Dataset):
    """``dataset`` whose dict examples gain their index under :data:`INDEX_KEY`
    (``"index"``; an example that already has that key is refused)."""

    def __init__(self, dataset):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"train_dataset must be map-style with a length, got {type(dataset).__name__}")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        if not isinstance(item, dict):
            raise TypeError(f"train_dataset examples must be dicts of features, got {type(item).__name__}")
        if INDEX_KEY in item:
            raise ValueError(f"train_dataset example {i} already has the key {INDEX_KEY!r}, where IESTrainer "
                             "puts the example's index: rename that feature")
        return {**item, INDEX_KEY: i}


def example_losses(selector, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, *,
                   scoring: bool = False) -> torch.Tensor:
    """Record and return each example's loss ``[B]`` (differentiable when ``logits``
    are): mean token loss of a causal LM (``[B, T, V]`` logits, labels shifted) or the
    cross-entropy of ``[B, C]`` logits."""
    if logits.dim() == 3:
        return causal_lm_cross_entropy(logits, labels, index, selector, reduction="sample", scoring=scoring)
    if logits.dim() == 2:
        return cross_entropy(logits, labels, index, selector, reduction="none", scoring=scoring)
    raise ValueError(f"IESTrainer records losses from [B, T, V] or [B, C] logits, got {tuple(logits.shape)}")


def record_losses(selector, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, *,
                  scoring: bool = False) -> None:
    """Record each example's loss (:func:`example_losses`, without a graph)."""
    with torch.no_grad():
        example_losses(selector, logits.detach(), labels, index, scoring=scoring)


class ProgressLR(LambdaLR):
    """A ``LambdaLR`` whose factors are evaluated at ``position()`` (a float step of
    the schedule as planned without IES) instead of its own step count, so the LR
    follows training progress however many steps an epoch really has. Its state
    holds no callables (``torch.load(weights_only=True)`` reads it back)."""

    def __init__(self, optimizer, lr_lambdas, position):
        self._position = position
        super().__init__(optimizer, list(lr_lambdas))

    def get_lr(self) -> list:
        x = self._position()
        return [base * fn(x) for base, fn in zip(self.base_lrs, self.lr_lambdas)]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("_position", None)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        position = self._position
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "_position"})
        self._position = position


@contextlib.contextmanager
def _shard_bars_off(quiet: bool):
    """Without the "Writing model shards" bars of ``save_pretrained`` while the Trainer
    writes a checkpoint (only when ``disable_tqdm`` asked for no bars)."""
    was = hf_logging.is_progress_bar_enabled()
    if quiet and was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was:
            hf_logging.enable_progress_bar()


class _EpochEvents(TrainerCallback):
    """Forwards the Trainer's epoch, step and save events to its IESTrainer (first in
    the callback list, so later callbacks see the corrected ``state.epoch``)."""

    def __init__(self, trainer: "IESTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._examples_trained = 0

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        t = self.trainer
        t._steps_in_epoch, t._resumed_steps = t._resumed_steps, 0
        t._epoch_batches = max(1, len(train_dataloader)) if train_dataloader is not None else 1

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._steps_in_epoch += 1  # before the scheduler steps: it reads the new progress

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        state.epoch = t.progress()
        if args.max_steps <= 0 and t._schedule_position() >= state.max_steps - 1e-9:
            # the planned epochs are done (global_step < max_steps: the Trainer would not see it)
            control.should_training_stop = True
            if args.save_strategy == "steps":
                control.should_save = True
            if args.eval_strategy == "steps" and state.global_step % state.eval_steps != 0 \
                    and args.eval_delay <= state.global_step:
                control.should_evaluate = True

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.close_epoch()

    def on_save(self, args, state, control, **kwargs):
        if args.save_only_model:  # no _save_rng_state: written here (every process: a sharded state is gathered)
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            self.trainer.save_selector(folder)


class IESTrainer(Trainer):
    """``transformers.Trainer`` with Instance-dependent Early Stopping.

    The selector is ``trainer.selector``. A selector that reweights the loss
    (InfoBatch) gets its weighting: the training loss is then the weighted mean of
    the per-example losses. ``train_dataset`` is wrapped so that its dict examples
    carry their index (:class:`IndexedExamples`).

    Args:
        *args: ``transformers.Trainer``'s positional arguments (``model``, ``args``, ...).
        ies: a fresh selector (epoch 0) built for ``len(train_dataset)``, any
            :class:`ies_fast.Selector` (IES, InfoBatch, RandomRemoval); or a dict of
            :class:`ies_fast.IES`'s keyword arguments (``delta``, ``order``, ``window``,
            ``score_every``, ``score_policy``, ``score_max_interval``, ``min_kept``,
            ``threshold``), those left out taking :data:`ies_fast.selectors.ies.WRAPPER_DEFAULTS`
            (backoff scoring, the measured winner of docs/results.md); ``None``: an IES with
            those defaults. ``"shard_state": True`` in the dict builds a
            :class:`ies_fast.selectors.sharded.ShardedIES` over the Trainer's processes
            (``score_policy="every"`` then, the one it supports).
        **kwargs: ``transformers.Trainer``'s keyword arguments; ``train_dataset`` is
            required (map-style, dict examples with ``labels``).

    Raises:
        TypeError: ``ies`` is neither a Selector, a dict nor ``None``, an IES argument
            has the wrong type, or ``train_dataset`` is not map-style with a length.
        ValueError: no ``train_dataset``; ``gradient_accumulation_steps != 1`` (the
            Trainer groups accumulation by the full epoch's length);
            ``train_sampling_strategy`` other than ``"random"`` or ``"sequential"``;
            a selector for another ``num_samples`` or past epoch 0; a bad IES
            argument value (:class:`ies_fast.IES`); or ``ies["shard_state"]=True`` with
            another ``score_policy`` or ``threshold``, or where the default process group
            does not hold every one of the Trainer's processes.
    """

    def __init__(self, *args, ies=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.train_dataset is None:
            raise ValueError("IESTrainer needs a train_dataset")
        if self.args.gradient_accumulation_steps != 1:  # the last group of a shrunken epoch would never step
            raise ValueError("IESTrainer needs gradient_accumulation_steps=1 (the Trainer groups accumulation "
                             f"by the full epoch's length), got {self.args.gradient_accumulation_steps}")
        strategy = getattr(self.args, "train_sampling_strategy", "random")
        if strategy not in SAMPLING:
            raise ValueError(f"IESTrainer: train_sampling_strategy={strategy!r} is not supported: the kept-sample "
                             f"sampler replaces it; use one of {SAMPLING}")
        self.train_dataset = IndexedExamples(self.train_dataset)
        if isinstance(ies, Selector):
            if ies.num_samples != len(self.train_dataset):
                raise ValueError(f"ies tracks num_samples={ies.num_samples} but train_dataset has {len(self.train_dataset)}")
            if ies.epoch != 0:
                raise ValueError(f"ies must be a fresh selector (epoch 0), got epoch {ies.epoch}: "
                                 "continue a run with train(resume_from_checkpoint=...)")
            selector = ies
        elif ies is None or isinstance(ies, dict):
            selector = self._build_ies(ies or {})
        else:
            raise TypeError(f"ies must be an ies_fast Selector (IES, InfoBatch, ...) or a dict of IES's arguments, "
                            f"got {type(ies).__name__}")
        self.selector = selector.to(self.args.device)
        self._steps_in_epoch = 0  # optimizer steps taken in the current epoch
        self._resumed_steps = 0  # ... of which already taken before the checkpoint resumed from
        self._epoch_batches = 1  # optimizer steps the current epoch has (its kept batches)
        self._epochs_closed = 0
        self._plan_steps_per_epoch = 1  # optimizer steps of a full epoch (the schedule's unit)
        self._examples_trained = 0  # in this train() call, for train_samples_per_second
        self._ies_logs: dict = {}
        self.callback_handler.callbacks.insert(0, _EpochEvents(self))

    def _build_ies(self, options: dict) -> IES:
        """The IES of ``ies``'s arguments; a ShardedIES over the Trainer's processes for
        ``"shard_state": True`` (the process group exists once ``Trainer.__init__`` ran)."""
        shard = check_bool("ies['shard_state']", options.get("shard_state", False))
        if not shard:
            return IES(len(self.train_dataset), **{**WRAPPER_DEFAULTS, **options})
        options = {"score_policy": "every", **options}
        check_shardable(options.get("num_exits", 1), options["score_policy"], options.get("threshold", "absolute"))
        _, world = process_group_shape()
        if world != self.args.world_size:
            raise ValueError(f"ies['shard_state']=True shards over the default process group, which has {world} "
                             f"processes, but the Trainer runs {self.args.world_size}: launch with torchrun or "
                             "accelerate launch (DDP), or leave shard_state out")
        return make_selector("ies", len(self.train_dataset), **options)

    # ---- data ---------------------------------------------------------------------
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if INDEX_KEY not in self._signature_columns:  # keep the index through remove_unused_columns
            self._signature_columns.append(INDEX_KEY)

    def _get_train_sampler(self, train_dataset=None):
        # one process or accelerate's batch sharding: the kept list is not sharded here
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        shuffle = getattr(self.args, "train_sampling_strategy", "random") != "sequential"
        return KeptSampler(self.selector, shuffle=shuffle, seed=seed, num_replicas=1, rank=0)

    # ---- progress and the schedule ---------------------------------------------------
    def progress(self) -> float:
        """Training progress in epochs, however much IES shrank them.

        Returns:
            Closed epochs plus the done fraction of the current one's kept optimizer
            steps (what ``state.epoch`` reports).
        """
        return float(_progress.progress(self._epochs_closed, self._steps_in_epoch, self._epoch_batches))

    def _schedule_position(self) -> float:
        """Where the schedule planned without IES is: progress x full steps per epoch."""
        return self.progress() * self._plan_steps_per_epoch

    def set_initial_training_values(self, args, dataloader):
        """The Trainer's values; keeps a full epoch's steps as the schedule's unit, and
        with ``max_steps`` lets as many shrunken epochs run as that takes."""
        values = list(super().set_initial_training_values(args, dataloader))
        self._plan_steps_per_epoch = values[1]  # num_update_steps_per_epoch, from the full data set
        if args.max_steps > 0:
            values[0] = sys.maxsize  # num_train_epochs: shrunken epochs, as many as max_steps takes
        return tuple(values)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's scheduler; a ``LambdaLR`` one of an epoch-sized run becomes a
        :class:`ProgressLR`, evaluated at the training progress."""
        ours = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        # the Trainer's own LambdaLR schedules (linear, cosine, constant_with_warmup, ...), epoch-sized runs
        if ours and self.args.max_steps <= 0 and type(scheduler) is LambdaLR:
            self.lr_scheduler = ProgressLR(scheduler.optimizer, scheduler.lr_lambdas, self._schedule_position)
        return self.lr_scheduler

    # ---- losses ---------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's loss, each example's loss recorded in training (the selector's
        weighted mean when it reweights); ``ValueError`` without ``labels``."""
        index = batch_index(inputs) if INDEX_KEY in inputs else None
        inputs.pop(INDEX_KEY, None)
        labels = inputs.get("labels")
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if index is not None and model.training:
            if labels is None:
                raise ValueError("IESTrainer needs 'labels' in the training batches to record each example's loss")
            if self.selector.REWEIGHTS:  # the selector's weighting replaces the model's plain mean
                losses = example_losses(self.selector, outputs["logits"], labels, index)
                loss = self.selector.training_loss(losses, index)
            else:
                record_losses(self.selector, outputs["logits"], labels, index)
            self._examples_trained += index.shape[0]
        return (loss, outputs) if return_outputs else loss

    def close_epoch(self) -> int:
        """Score the removed examples (no grad, eval mode, ``per_device_eval_batch_size``
        batches), then ``selector.step()``; called at each epoch's end.

        Returns:
            The number of examples scored on this process.
        """
        scored = 0
        if self.selector.needs_scoring():
            removed = self.selector.scoring_mask().nonzero().squeeze(1).tolist()  # once per epoch
            if removed:
                scored = self._score(Subset(self.train_dataset, removed))
        self.selector.step()
        self._epochs_closed += 1
        self._steps_in_epoch = 0
        stats = self.selector.stats()  # one read per epoch
        self._ies_logs = {"ies/kept_fraction": stats["kept"] / stats["num_samples"],
                          "ies/backward_saved_fraction": stats["backward_saved_fraction"]}
        return scored

    def log(self, logs: dict, *args, **kwargs) -> None:
        """The Trainer's log rows, with the last epoch's kept and saved fractions;
        ``train_samples_per_second`` counts the examples really trained (kept ones)."""
        if "train_runtime" in logs and "train_samples_per_second" in logs and logs["train_runtime"] > 0:
            logs["train_samples_per_second"] = round(
                self._examples_trained * self.args.world_size / logs["train_runtime"], 3)
        super().log({**logs, **self._ies_logs}, *args, **kwargs)

    def _score(self, dataset) -> int:
        model = self.model
        was_training = model.training
        model.eval()
        scored = 0
        try:
            with torch.no_grad():
                for batch in self.get_test_dataloader(dataset):
                    batch = self._prepare_inputs(batch)
                    index = batch_index(batch)
                    del batch[INDEX_KEY]
                    outputs = model(**batch)
                    record_losses(self.selector, outputs["logits"], batch["labels"], index, scoring=True)
                    scored += index.numel()
        finally:
            model.train(was_training)
        return scored

    # ---- checkpoints ----------------------------------------------------------------
    def selector_state(self) -> dict:
        """What :meth:`save_selector` writes.

        Returns:
            A dict of the selector's whole state (a sharded one's gathered from every
            rank: collective, every process calls it) and the position in the run:
            closed epochs, optimizer steps taken in the current epoch, and ``global_step``.
        """
        return {"version": STATE_VERSION, "selector": whole_state_dict(self.selector),
                "epochs_closed": self._epochs_closed, "steps_in_epoch": self._steps_in_epoch,
                "global_step": self.state.global_step}

    def save_selector(self, folder: str) -> None:
        """Write :meth:`selector_state` to ``folder/ies_selector.pt`` atomically
        (temporary file, fsync, rename; tensors moved to the CPU). The Trainer's
        checkpoints call it on every process; the one that saves (``args.should_save``)
        writes. With a sharded selector every process must call it (the state is gathered).

        Args:
            folder: an existing checkpoint folder.

        Raises:
            FileNotFoundError: ``folder`` does not exist.
            RuntimeError: the file's place holds a symlink or anything but a regular file
                (refused, never written through).
        """
        state = self.selector_state()
        if not self.args.should_save:
            return
        state["selector"] = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state["selector"].items()}
        write_state(folder, state)

    def _checked_selector_state(self, folder: str) -> dict:
        """``folder/ies_selector.pt`` validated whole against this trainer (nothing applied)."""
        state = read_state(folder)
        path = os.path.join(folder, STATE_FILE)
        scratch = copy.deepcopy(self.selector)
        try:
            scratch.load_state_dict(state["selector"])
        except (ValueError, TypeError) as exc:
            raise IncompleteCheckpoint(f"{path}: {exc}") from None
        closed, steps, step = state["epochs_closed"], state["steps_in_epoch"], state["global_step"]
        if closed != scratch.epoch:
            raise IncompleteCheckpoint(f"{path}: epochs_closed={closed} disagrees with the selector's epoch "
                                       f"{scratch.epoch}")
        if closed > step:  # every epoch takes at least one optimizer step
            raise IncompleteCheckpoint(f"{path}: epochs_closed={closed} exceeds global_step={step}")
        batches = math.ceil(int(scratch.kept_indices().numel()) / self._train_batch_size)
        if steps > min(batches, step):
            raise IncompleteCheckpoint(f"{path}: steps_in_epoch={steps} exceeds the epoch's {batches} kept batches "
                                       f"or global_step={step}")
        return state

    def load_selector(self, folder: str) -> dict:
        """Restore the selector and the position in the epoch from ``folder``, validated
        whole first (``train(resume_from_checkpoint=...)`` calls it).

        Args:
            folder: a checkpoint folder holding ``ies_selector.pt``.

        Returns:
            The state read (:meth:`selector_state`'s keys).

        Raises:
            FileNotFoundError: ``folder/ies_selector.pt`` is missing.
            ValueError: the file is damaged, a link, not ours, or disagrees with this
                trainer's selector or batch size (an ``IncompleteCheckpoint``); the
                message names the file and nothing is changed.
        """
        state = self._checked_selector_state(folder)
        self.selector.load_state_dict(state["selector"])
        self._epochs_closed = state["epochs_closed"]
        self._resumed_steps = 0 if self.args.ignore_data_skip else state["steps_in_epoch"]
        return state

    def _save_checkpoint(self, model, trial) -> None:
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            discard_markers(folder)  # a folder a killed run left: incomplete until rewritten whole
        with _shard_bars_off(self.args.disable_tqdm):
            super()._save_checkpoint(model, trial)

    def _save_rng_state(self, output_dir: str) -> None:
        # the last file before trainer_state.json (the Trainer's completion marker)
        super()._save_rng_state(output_dir)
        self.save_selector(output_dir)  # every process: a sharded state is gathered

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint=True`` resumes from the newest
        checkpoint of ``output_dir`` written whole (a folder that a killed run left
        half-written is skipped); a path must be a complete checkpoint. A trainer that
        has trained already refuses to train again without a checkpoint (``ValueError``)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = newest_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint found in output directory ({self.args.output_dir})")
        elif resume_from_checkpoint not in (None, False):
            check_complete(os.fspath(resume_from_checkpoint))
        elif self._epochs_closed or self.selector.epoch:
            raise ValueError("this IESTrainer has trained already (its selector is at epoch "
                             f"{self.selector.epoch}); build a new one, or pass resume_from_checkpoint")
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial):
        # The Trainer derives the resumed epoch from global_step / steps per epoch, which
        # is wrong once epochs shrink; the selector state holds the true position. Loaded
        # here, after the Trainer sized the run from the full data set (as the first run).
        epochs, steps = super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs,
                                                     resume_from_checkpoint, trial)
        if resume_from_checkpoint is None:
            return epochs, steps
        self.load_selector(resume_from_checkpoint)
        return self._epochs_closed, self._resumed_steps
