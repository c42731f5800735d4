"""IES in Hugging Face's ``transformers.Trainer``.

::

    trainer = IESTrainer(model=model, args=args, train_dataset=train_set, ies={"delta": 1e-3})
    trainer.train()                                  # or train(resume_from_checkpoint=True)

:class:`IESTrainer` is a ``Trainer`` that

* adds each training example's dataset index to its features (key ``ies_index``,
  removed again before the model sees the batch);
* trains each epoch on the kept examples only (a :class:`ies_fast.data.KeptSampler`);
* records every example's loss in ``compute_loss`` from the model's logits: for
  ``[B, T, V]`` logits the causal-LM loss (shifted labels, ``-100`` ignored)
  averaged over the example's tokens, for ``[B, C]`` logits the cross-entropy;
  the training loss itself is the model's, unchanged;
* at each epoch's end scores the removed examples (forward only, eval mode, in
  ``per_device_eval_batch_size`` batches) and calls ``selector.step()``;
* writes the selector into every checkpoint folder (``ies_selector.pt``: tensors
  and numbers, read back with ``torch.load(weights_only=True)``) and restores it,
  with the position inside the shrunken epoch, on ``train(resume_from_checkpoint=...)``.

The number of optimizer steps (and with it the LR schedule) is sized from the full
data set, as without IES; epochs with fewer kept examples end early, so the
schedule does not reach its end. ``gradient_accumulation_steps`` must be 1: the
Trainer sizes accumulation groups by the full epoch length.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch.utils.data import Dataset, Subset
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data import KeptSampler
from ..losses.cross_entropy_loss import causal_lm_cross_entropy, cross_entropy
from ..selectors.ies import IES

__all__ = ["IESTrainer", "IndexedExamples", "INDEX_KEY", "STATE_FILE"]

INDEX_KEY = "ies_index"
STATE_FILE = "ies_selector.pt"
STATE_VERSION = 1


class IndexedExamples(Dataset):
    """``dataset`` whose dict examples gain their index under ``ies_index``."""

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
        return {**item, INDEX_KEY: i}


def record_losses(selector, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, *,
                  scoring: bool = False) -> None:
    """Record each example's loss: mean token loss of a causal LM (``[B, T, V]``
    logits, labels shifted) or the cross-entropy of ``[B, C]`` logits."""
    with torch.no_grad():
        if logits.dim() == 3:
            causal_lm_cross_entropy(logits.detach(), labels, index, selector, reduction="sample", scoring=scoring)
        elif logits.dim() == 2:
            cross_entropy(logits.detach(), labels, index, selector, reduction="none", scoring=scoring)
        else:
            raise ValueError(f"IESTrainer records losses from [B, T, V] or [B, C] logits, got {tuple(logits.shape)}")


class _EpochEvents(TrainerCallback):
    """Forwards the Trainer's epoch, step and save events to its IESTrainer."""

    def __init__(self, trainer: "IESTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer._steps_in_epoch, self.trainer._resumed_steps = self.trainer._resumed_steps, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._steps_in_epoch += 1

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.close_epoch()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            self.trainer.save_selector(folder)


class IESTrainer(Trainer):
    """``transformers.Trainer`` with Instance-dependent Early Stopping.

    ``ies``: an :class:`ies_fast.IES` built for ``len(train_dataset)``, or a dict of
    its keyword arguments (``delta``, ``order``, ``window``, ``score_every``);
    every other argument is ``Trainer``'s. The selector is ``trainer.selector``.
    """

    def __init__(self, *args, ies=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.train_dataset is None:
            raise ValueError("IESTrainer needs a train_dataset")
        if self.args.gradient_accumulation_steps != 1:  # the last group of a shrunken epoch would never step
            raise ValueError("IESTrainer needs gradient_accumulation_steps=1 (the Trainer groups accumulation "
                             f"by the full epoch's length), got {self.args.gradient_accumulation_steps}")
        self.train_dataset = IndexedExamples(self.train_dataset)
        if isinstance(ies, IES):
            if ies.num_samples != len(self.train_dataset):
                raise ValueError(f"ies tracks num_samples={ies.num_samples} but train_dataset has {len(self.train_dataset)}")
            selector = ies
        elif ies is None or isinstance(ies, dict):
            selector = IES(len(self.train_dataset), **(ies or {}))
        else:
            raise TypeError(f"ies must be an ies_fast.IES or a dict of its arguments, got {type(ies).__name__}")
        self.selector = selector.to(self.args.device)
        self._steps_in_epoch = 0  # optimizer steps taken in the current epoch
        self._resumed_steps = 0  # ... of which already taken before the checkpoint resumed from
        self._epochs_closed = 0
        self._ies_logs: dict = {}
        self.add_callback(_EpochEvents(self))

    # ---- data ---------------------------------------------------------------------
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if INDEX_KEY not in self._signature_columns:  # keep the index through remove_unused_columns
            self._signature_columns.append(INDEX_KEY)

    def _get_train_sampler(self, train_dataset=None):
        # one process or accelerate's batch sharding: the kept list is not sharded here
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return KeptSampler(self.selector, shuffle=True, seed=seed, num_replicas=1, rank=0)

    # ---- losses ---------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        index = inputs.pop(INDEX_KEY, None)
        labels = inputs.get("labels")
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if index is not None and model.training:
            if labels is None:
                raise ValueError("IESTrainer needs 'labels' in the training batches to record each example's loss")
            record_losses(self.selector, outputs["logits"], labels, index)
        return (loss, outputs) if return_outputs else loss

    def close_epoch(self) -> int:
        """Score the removed examples (no grad, eval mode), then ``selector.step()``.
        Returns the number of examples scored on this process."""
        scored = 0
        if self.selector.needs_scoring():
            removed = self.selector.scoring_mask().nonzero().squeeze(1).tolist()  # once per epoch
            if removed:
                scored = self._score(Subset(self.train_dataset, removed))
        self.selector.step()
        self._epochs_closed += 1
        stats = self.selector.stats()  # one read per epoch
        self._ies_logs = {"ies/kept_fraction": stats["kept"] / stats["num_samples"],
                          "ies/backward_saved_fraction": stats["backward_saved_fraction"]}
        return scored

    def log(self, logs: dict, *args, **kwargs) -> None:
        """The Trainer's log rows, with the last epoch's kept and saved fractions."""
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
                    index = batch.pop(INDEX_KEY)
                    outputs = model(**batch)
                    record_losses(self.selector, outputs["logits"], batch["labels"], index, scoring=True)
                    scored += index.numel()
        finally:
            model.train(was_training)
        return scored

    # ---- checkpoints ----------------------------------------------------------------
    def selector_state(self) -> dict:
        return {"version": STATE_VERSION, "selector": self.selector.state_dict(),
                "epochs_closed": self._epochs_closed, "steps_in_epoch": self._steps_in_epoch}

    def save_selector(self, folder: str) -> None:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
        state = self.selector_state()
        state["selector"] = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state["selector"].items()}
        torch.save(state, os.path.join(folder, STATE_FILE))

    def load_selector(self, folder: str) -> dict:
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: the checkpoint was not written by IESTrainer")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"{path} is not an IESTrainer selector state (version {STATE_VERSION})")
        for key in ("epochs_closed", "steps_in_epoch"):
            if isinstance(state.get(key), bool) or not isinstance(state.get(key), int) or state[key] < 0:
                raise ValueError(f"{path}: {key!r} must be an int >= 0")
        self.selector.load_state_dict(state["selector"])  # validated whole before anything is applied
        self._epochs_closed = state["epochs_closed"]
        self._resumed_steps = state["steps_in_epoch"]
        return state

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial):
        # The Trainer derives the resumed epoch from global_step / steps per epoch, which
        # is wrong once epochs shrink; the selector state holds the true position. Loaded
        # here, after the Trainer sized the run from the full data set (as the first run).
        epochs, steps = super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs,
                                                     resume_from_checkpoint, trial)
        if resume_from_checkpoint is None:
            return epochs, steps
        state = self.load_selector(resume_from_checkpoint)
        steps = 0 if self.args.ignore_data_skip else state["steps_in_epoch"] * self.args.gradient_accumulation_steps
        return state["epochs_closed"], steps
