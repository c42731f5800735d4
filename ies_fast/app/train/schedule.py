"""Learning-rate schedules as functions of training *progress in epochs*.

IES shrinks epochs: with kept fraction k an epoch has k times fewer optimizer
steps. A torch scheduler stepped per batch would then decay k times too slowly
(its clock counts steps), and one stepped per epoch cannot express per-step
shapes. Here the rate is set after every step from
``progress = epoch + (steps done this epoch) / (steps this epoch)``, so each
epoch moves the schedule by exactly one epoch, however many samples it kept.
Per-epoch shapes (``exp``, ``multistep``) change only at epoch boundaries and so
equal torch's ``ExponentialLR`` / ``MultiStepLR`` stepped once per epoch.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ... import checks as check

KINDS = ("exp", "multistep", "linear", "cosine", "constant")


class EpochSchedule:
    """Sets every param group's ``lr`` to ``base_lr * factor(progress)``.

    * ``exp``: ``gamma ** floor(progress)`` (the paper's SGD(E), gamma 0.96)
    * ``multistep``: ``0.1 ** (milestones passed)``, milestones as fractions of ``epochs``
    * ``linear``: from 1 to ``final_factor`` over ``epochs`` (the paper's SGD(L))
    * ``cosine``: half a cosine from 1 to 0 over ``epochs``
    * ``constant``: 1
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, epochs: int, *, gamma: float = 0.96,
                 milestones: Sequence[float] = (0.5, 0.75), final_factor: float = 0.01):
        check.check_choice("kind", kind, KINDS)
        check.check_int("epochs", epochs, min=1)
        self.optimizer = optimizer
        self.kind = kind
        self.epochs = epochs
        self.gamma = float(gamma)
        self.milestones = [m * epochs for m in milestones]
        self.final_factor = float(final_factor)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.progress = 0.0

    def factor(self, progress: float) -> float:
        t = min(max(progress, 0.0), float(self.epochs))
        if self.kind == "exp":
            return self.gamma ** math.floor(t)
        if self.kind == "multistep":
            return 0.1 ** sum(t >= m for m in self.milestones)
        if self.kind == "linear":
            return 1.0 + (self.final_factor - 1.0) * t / self.epochs
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t / self.epochs))
        return 1.0

    def set_progress(self, progress: float) -> None:
        """Move to ``progress`` epochs and write the rate into the optimizer."""
        self.progress = float(progress)
        f = self.factor(self.progress)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def get_last_lr(self) -> list:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"kind": self.kind, "epochs": self.epochs, "progress": self.progress, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` of the same kind and epochs. The whole state is
        checked first (progress in ``[0, epochs]``, one finite ``base_lr >= 0`` per
        param group): a bad one raises ``ValueError`` naming the key and changes nothing."""
        self.apply_state(self.check_state(state))

    def check_state(self, state) -> dict:
        """Validate ``state`` whole (nothing changes); returns what :meth:`apply_state` applies."""
        if not isinstance(state, dict):
            raise ValueError(f"schedule state must be a dict from EpochSchedule.state_dict(), got {type(state).__name__}")
        if state.get("kind") != self.kind or state.get("epochs") != self.epochs:
            raise ValueError(f"schedule state is for kind={state.get('kind')!r}, epochs={state.get('epochs')!r}; "
                             f"this run has kind={self.kind!r}, epochs={self.epochs}")
        progress = check.number(state, "progress", where="schedule state")
        if progress > self.epochs:
            raise ValueError(f"schedule state['progress']={progress} is beyond epochs={self.epochs}")
        base_lrs = state.get("base_lrs")
        if not isinstance(base_lrs, list) or len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(f"schedule state['base_lrs'] must be a list of {len(self.optimizer.param_groups)} "
                             f"learning rates (one per param group), got {base_lrs!r}")
        base_lrs = [check.number(dict(enumerate(base_lrs)), i, where="schedule state['base_lrs']")
                    for i in range(len(base_lrs))]
        return {"progress": progress, "base_lrs": base_lrs}

    def apply_state(self, values: dict) -> None:
        """Apply what :meth:`check_state` returned (cannot fail)."""
        self.base_lrs = values["base_lrs"]
        self.set_progress(values["progress"])
