"""Dataset-level early stopping: patience over one or several validation metrics
(e.g. one per exit of a multi-exit model), and IES Algorithm 1's own end: every
sample mastered."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from . import checks as check

MODES = ("min", "max")
AGGREGATES = ("all", "any")


def _value(name: str, v) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"metric {name!r} must be a scalar, got a tensor of shape {tuple(v.shape)}")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"metric {name!r} must be a number, got {type(v).__name__}")
    return float(v)


class PatienceStopper:
    """Stop when the monitored metrics stop improving.

    * A metric *improves* at a check when it beats its best so far by more than
      ``min_delta`` (``mode="min"``: ``value < best - min_delta``; ``"max"``:
      ``value > best + min_delta``). Its first finite value always improves; a tie
      or a non-finite value never does.
    * ``aggregate="all"``: stop when *no* metric improved in the last ``patience``
      checks; ``"any"``: stop as soon as *some* metric went ``patience`` checks
      without improving.
    * The first ``start_from`` checks are ignored entirely (warm-up).
    * ``restore_best=True``: at every check where at least one metric improved and
      a ``model`` is passed, a copy of ``model.state_dict()`` is kept (cloned on its
      device); :meth:`best_state` returns it.

    ``step(metrics)`` returns ``True`` when training should stop.
    """

    VERSION = 1

    def __init__(
        self,
        monitor: Union[str, list, tuple],
        mode: str = "min",
        patience: int = 10,
        min_delta: float = 0.0,
        aggregate: str = "all",
        start_from: int = 0,
        restore_best: bool = False,
    ):
        names = [monitor] if isinstance(monitor, str) else list(monitor) if isinstance(monitor, (list, tuple)) else None
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ValueError(f"monitor must be a metric name or a list of distinct names, got {monitor!r}")
        check.check_choice("mode", mode, MODES)
        check.check_int("patience", patience, min=1)
        check.check_float("min_delta", min_delta, min=0)
        check.check_choice("aggregate", aggregate, AGGREGATES)
        check.check_int("start_from", start_from, min=0)
        self.monitor = names
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.aggregate = aggregate
        self.start_from = start_from
        self.restore_best = bool(restore_best)
        self.reset()

    def reset(self) -> None:
        self.checks = 0
        self.best: dict = {n: None for n in self.monitor}
        self.wait: dict = {n: 0 for n in self.monitor}
        self.best_check: Optional[int] = None
        self.stopped = False
        self._best_state: Optional[dict] = None

    def _improves(self, value: float, best: Optional[float]) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta

    def step(self, metrics: dict, model: Optional[torch.nn.Module] = None) -> bool:
        """Record one check (typically one validation per epoch); ``True`` = stop.
        ``metrics`` must hold every monitored name (extra keys are ignored)."""
        if not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict of name -> number, got {type(metrics).__name__}")
        missing = [n for n in self.monitor if n not in metrics]
        if missing:
            raise KeyError(f"metrics lacks the monitored name(s) {missing}; got {sorted(metrics)}")
        values = {n: _value(n, metrics[n]) for n in self.monitor}
        self.checks += 1
        if self.checks <= self.start_from:
            return False
        improved_any = False
        for n, v in values.items():
            if self._improves(v, self.best[n]):
                self.best[n] = v
                self.wait[n] = 0
                improved_any = True
            else:
                self.wait[n] += 1
        if improved_any:
            self.best_check = self.checks
            if self.restore_best and model is not None:
                self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        stalled = [self.wait[n] >= self.patience for n in self.monitor]
        self.stopped = all(stalled) if self.aggregate == "all" else any(stalled)
        return self.stopped

    def best_state(self) -> Optional[dict]:
        """The model state saved at the last improving check (``restore_best=True``
        and a ``model`` given to :meth:`step`), else ``None``. Load it with
        ``model.load_state_dict(stopper.best_state())``."""
        return self._best_state

    def state_dict(self) -> dict:
        return {
            "kind": "PatienceStopper",
            "version": self.VERSION,
            "monitor": list(self.monitor),
            "mode": self.mode,
            "checks": self.checks,
            "best": dict(self.best),
            "wait": dict(self.wait),
            "best_check": self.best_check,
            "stopped": self.stopped,
            "best_state": self._best_state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`. ``monitor`` and ``mode`` must match this
        stopper's; ``patience``, ``min_delta``, ``aggregate``, ``start_from`` and
        ``restore_best`` stay as constructed. The whole state is checked first: a bad
        one raises ``ValueError`` naming the key and changes nothing."""
        check.header(state, "PatienceStopper", self.VERSION)
        check.matches(state, "monitor", list(self.monitor))
        check.matches(state, "mode", self.mode)
        checks = check.integer(state, "checks", high=check.MAX_EPOCH)
        best_check = check.integer(state, "best_check", low=1, optional=True)
        if best_check is not None and best_check > checks:
            raise ValueError(f"state_dict['best_check']={best_check} is beyond state_dict['checks']={checks}")
        stopped = check.boolean(state, "stopped")
        best, wait = state.get("best"), state.get("wait")
        for key, value in (("best", best), ("wait", wait)):
            if not isinstance(value, dict) or sorted(value) != sorted(self.monitor):
                raise ValueError(f"state_dict[{key!r}] must be a dict with one entry per monitored metric {self.monitor}")
        for name in self.monitor:
            if best[name] is not None:
                check.number(best, name, low=-math.inf, where="state_dict['best']")
            if check.integer(wait, name, where="state_dict['wait']") > checks:
                raise ValueError(f"state_dict['wait'][{name!r}]={wait[name]} is beyond state_dict['checks']={checks}")
        best_state = state.get("best_state")
        if best_state is not None and not (isinstance(best_state, dict) and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in best_state.items())):
            raise ValueError("state_dict['best_state'] must be None or a model state_dict (names -> tensors)")
        self.checks, self.best_check, self.stopped = checks, best_check, stopped
        self.best = {n: None if best[n] is None else float(best[n]) for n in self.monitor}
        self.wait = {n: int(wait[n]) for n in self.monitor}
        self._best_state = best_state

    def __repr__(self) -> str:
        return (
            f"PatienceStopper(monitor={self.monitor}, mode={self.mode!r}, patience={self.patience}, "
            f"min_delta={self.min_delta}, aggregate={self.aggregate!r}, start_from={self.start_from})"
        )


def all_mastered(selector) -> bool:
    """IES Algorithm 1's end of training: every sample is mastered. Uses the
    selector's ``mastered_mask()`` (IES) or else its ``removed_mask()``. Reads one
    value from the device: call once per epoch, after ``step()``."""
    mask = selector.mastered_mask() if hasattr(selector, "mastered_mask") else selector.removed_mask()
    return bool(mask.all())
