"""Checks of a training checkpoint before ``--resume`` applies any of it.

A checkpoint's digest only says the file is whole: a file re-saved through
``save_checkpoint`` with nonsense in it verifies. So every field is checked
against the run being resumed (its config, model, optimizer, selector, ...) first:
types, shapes, dtypes, ranges, and an epoch within the run's epochs. The
components with their own ``load_state_dict`` checks (selector, stopper, schedule,
sampler) are checked on copies. A bad field raises :class:`ResumeStateError`
naming it; nothing of the checkpoint has been applied then.
"""
from __future__ import annotations

import copy
import math
import types

import torch

#: what a training checkpoint holds besides ``stopper`` and ``samples`` (which may be None)
REQUIRED = ("config", "epoch", "stopped", "model", "optimizer", "schedule", "selector", "sampler", "rng", "history")


class ResumeStateError(ValueError):
    """A checkpoint's content does not fit the run it would resume."""


def check_top(state) -> dict:
    """``state`` is a dict holding every field of a training checkpoint (and its
    ``config`` a dict); returns it."""
    if not isinstance(state, dict):
        raise ResumeStateError(f"the checkpoint holds a {type(state).__name__}, not a training state")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ResumeStateError(f"the checkpoint has no {', '.join(missing)}")
    if not isinstance(state["config"], dict):
        raise ResumeStateError(f"the checkpoint's config is a {type(state['config']).__name__}, not a dict")
    return state


def _int(value, where: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ResumeStateError(f"the checkpoint's {where} must be an int in [{low}, {high}], got {_short(value)}")
    return value


def _short(value) -> str:
    text = repr(value) if not isinstance(value, torch.Tensor) else f"a {value.dtype} tensor {list(value.shape)}"
    return text if len(text) <= 60 else text[:57] + "..."


def _tensor(value, where: str, shape=None, dtype=None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ResumeStateError(f"the checkpoint's {where} is a {type(value).__name__}, not a tensor")
    if (shape is not None and tuple(value.shape) != tuple(shape)) or (dtype is not None and value.dtype != dtype):
        raise ResumeStateError(f"the checkpoint's {where} is {_short(value)}; this run needs a {dtype or value.dtype} "
                               f"tensor {list(shape if shape is not None else value.shape)}")
    return value


def check_model(state, model: torch.nn.Module) -> None:
    mine = model.state_dict()
    if not isinstance(state, dict):
        raise ResumeStateError(f"the checkpoint's model is a {type(state).__name__}, not a state dict")
    missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine), key=str)
    if missing or extra:
        raise ResumeStateError(f"the checkpoint's model does not fit this run's model (missing {missing[:3]}, "
                               f"unexpected {extra[:3]})")
    for k, v in mine.items():
        _tensor(state[k], f"model[{k!r}]", v.shape, v.dtype)


def _number(value, where: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, torch.Tensor):
        if value.numel() > 1 or not torch.isfinite(value).all():
            raise ResumeStateError(f"the checkpoint's {where} is {_short(value)}, not a finite scalar")
        return
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ResumeStateError(f"the checkpoint's {where} is {_short(value)}, not a finite number")


def check_optimizer(state, optimizer: torch.optim.Optimizer) -> None:
    """Same param groups (sizes), per-parameter state of the parameters' shapes."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) \
            or not isinstance(state.get("param_groups"), list):
        raise ResumeStateError("the checkpoint's optimizer is not an optimizer state (a dict of 'state' and "
                               "'param_groups')")
    groups = optimizer.param_groups
    if len(state["param_groups"]) != len(groups):
        raise ResumeStateError(f"the checkpoint's optimizer has {len(state['param_groups'])} param groups; this run "
                               f"has {len(groups)}")
    shapes = {}
    for i, (theirs, mine) in enumerate(zip(state["param_groups"], groups)):
        where = f"optimizer param_groups[{i}]"
        # the hyperparameter keys may differ between torch versions: torch keeps its defaults for missing ones
        if not isinstance(theirs, dict) or not isinstance(theirs.get("params"), list) \
                or len(theirs["params"]) != len(mine["params"]) or not all(isinstance(k, str) for k in theirs):
            raise ResumeStateError(f"the checkpoint's {where} does not fit this run's optimizer")
        for key, value in theirs.items():
            if key == "params":
                for pid, p in zip(value, mine["params"]):
                    shapes[_int(pid, f"{where}['params']", 0, 2**31)] = p.shape
            elif not isinstance(value, (tuple, list)):
                _number(value, f"{where}[{key!r}]")
    if len(shapes) != sum(len(g["params"]) for g in groups):
        raise ResumeStateError("the checkpoint's optimizer names a parameter twice")
    for pid, per_param in state["state"].items():
        if pid not in shapes or not isinstance(per_param, dict):
            raise ResumeStateError(f"the checkpoint's optimizer state[{_short(pid)}] names no parameter of this run")
        for key, value in per_param.items():
            where = f"optimizer state[{pid}][{key!r}]"
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                _tensor(value, where, shapes[pid])
                if not value.is_floating_point():
                    raise ResumeStateError(f"the checkpoint's {where} is {_short(value)}, not floating point")
            else:
                _number(value, where)


def check_rng(state) -> None:
    """The torch, numpy and Python RNG states in the forms this loop saves them."""
    if not isinstance(state, dict):
        raise ResumeStateError(f"the checkpoint's rng is a {type(state).__name__}, not a dict")
    _tensor(state.get("torch"), "rng['torch']", torch.get_rng_state().shape, torch.uint8)
    if state.get("cuda") is not None:
        _tensor(state["cuda"], "rng['cuda']", dtype=torch.uint8)
    n = state.get("numpy")
    if not isinstance(n, dict) or n.get("name") != "MT19937":
        raise ResumeStateError("the checkpoint's rng['numpy'] is not an MT19937 state")
    key = _tensor(n.get("key"), "rng['numpy']['key']", (624,), torch.int64)
    if key.min() < 0 or key.max() >= 2**32:
        raise ResumeStateError("the checkpoint's rng['numpy']['key'] holds values outside 0..2**32-1")
    _int(n.get("pos"), "rng['numpy']['pos']", 0, 624)
    _int(n.get("has_gauss"), "rng['numpy']['has_gauss']", 0, 1)
    if type(n.get("cached_gaussian")) is not float or not math.isfinite(n["cached_gaussian"]):
        raise ResumeStateError("the checkpoint's rng['numpy']['cached_gaussian'] is not a finite float")
    p = state.get("python")
    ok = (isinstance(p, (tuple, list)) and len(p) == 3 and p[0] == 3 and isinstance(p[1], (tuple, list))
          and len(p[1]) == 625 and all(type(v) is int and 0 <= v < 2**32 for v in p[1]) and p[1][-1] <= 624
          and (p[2] is None or type(p[2]) is float))
    if not ok:
        raise ResumeStateError("the checkpoint's rng['python'] is not a state of Python's random module")


def check_history(history, epoch: int) -> None:
    if not isinstance(history, list) or len(history) != epoch + 1 or not all(isinstance(r, dict) for r in history):
        what = f"a list of {len(history)}" if isinstance(history, list) else f"a {type(history).__name__}"
        raise ResumeStateError(f"the checkpoint's history is {what}; after epoch {epoch + 1} it is a list of "
                               f"{epoch + 1} epoch rows")


def _probe(where: str, check) -> None:
    """Run a component's own ``load_state_dict`` check; its error named as the checkpoint's."""
    try:
        check()
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        raise ResumeStateError(f"the checkpoint's {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None


def check_resume_state(state: dict, trainer) -> None:
    """Every field of the training checkpoint ``state`` against ``trainer`` (built
    from the resumed config, nothing of ``state`` applied yet); see the module doc."""
    check_top(state)
    epochs = trainer.config.epochs
    epoch = _int(state["epoch"], "epoch", 0, epochs - 1)
    if type(state["stopped"]) is not bool:
        raise ResumeStateError(f"the checkpoint's stopped is {_short(state['stopped'])}, not a bool")
    if "world_size" in state:
        _int(state["world_size"], "world_size", 1, 2**20)
    check_model(state["model"], trainer.model)
    check_optimizer(state["optimizer"], trainer.optimizer)
    check_rng(state["rng"])
    check_history(state["history"], epoch)
    schedule = copy.copy(trainer.schedule)  # its checks run against copies of the param groups
    schedule.optimizer = types.SimpleNamespace(param_groups=[dict(g) for g in trainer.optimizer.param_groups])
    _probe("schedule", lambda: schedule.load_state_dict(state["schedule"]))
    _probe("selector", lambda: copy.deepcopy(trainer.selector).load_state_dict(state["selector"]))
    if trainer.stopper is not None and state.get("stopper") is not None:
        _probe("stopper", lambda: copy.deepcopy(trainer.stopper).load_state_dict(state["stopper"]))
    sampler = trainer.batches.sampler
    checked = getattr(sampler, "check_state", None) or getattr(getattr(sampler, "sampler", None), "check_state",
                                                                 copy.deepcopy(sampler).load_state_dict)
    _probe("sampler", lambda: checked(state["sampler"]))
    if state.get("samples") is not None:
        _probe("samples", lambda: copy.deepcopy(trainer.samples).load_state_dict(state["samples"]))
