"""A Python-loop IES, shaped like the official code's bookkeeping, for scale.

A dict maps each sample to its list of epoch losses; each epoch's observations go
into a dict; ``step()`` walks every observed sample in Python and computes
``mean |Δ^N|`` over the last ``w`` epochs with numpy. This is the cost the
on-device ring buffer replaces; it is not used by the library.
"""
from __future__ import annotations

import numpy as np


class PythonLoopIES:
    def __init__(self, num_samples: int, delta: float = 1e-3, order: int = 2, window: int = 3):
        self.delta, self.order, self.window = delta, order, window
        self.losses: dict[int, list[float]] = {i: [] for i in range(num_samples)}
        self.epoch_losses: dict[int, float] = {}
        self.mastered: set[int] = set()

    def observe(self, losses, indices) -> None:
        """Per-sample loop, as a training loop with Python bookkeeping does per batch."""
        for loss, i in zip(losses, indices):
            self.epoch_losses[i] = max(self.epoch_losses.get(i, float("-inf")), loss)

    def step(self) -> set[int]:
        need = self.order + self.window
        mastered = set()
        for i, loss in self.epoch_losses.items():
            history = self.losses[i]
            history.append(loss)
            if len(history) > need:
                del history[0]
            if len(history) == need:
                score = np.abs(np.diff(np.asarray(history), n=self.order)).mean()
                if score < self.delta:
                    mastered.add(i)
        self.epoch_losses = {}
        self.mastered = mastered
        return mastered
