"""A stand-in for :class:`TrainConfig` with the fields ``sweep`` and the front read,
for tests that drive them with a fake trainer."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    dataset: str = "digits"
    seed: int = 0
    selector: str = "ies"
    delta: float = 1e-3
    anneal: float = 0.0
    prune_ratio: float = 0.5
    random_ratio: float = 0.3
    out: str = "runs"
