"""Input checks, written once: arguments, ``load_state_dict`` states, and whether
per-sample state fits in memory.

One rule for arguments: a wrong type raises ``TypeError`` (``bool`` is not an int,
``8.0`` is not an int), a wrong value raises ``ValueError``; both name the
argument. :func:`check_int`, :func:`check_float`, :func:`check_fraction` and
:func:`check_choice` return the value, normalised.

States: every stateful class validates a whole state with the state checks below
(:func:`header`, :func:`integer`, :func:`tensor`, ...) first and only then applies
it, so a bad state raises ``ValueError`` naming the key and changes nothing (a
state is one value: whatever is wrong inside it, the state is a wrong value).
Each takes the state dict and a key and returns the value, normalised; ``where``
prefixes the key in messages (``"state_dict"``, ``"state_dict['exits']"``, ...).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch


# ---- arguments ------------------------------------------------------------------------
def _span(min, max) -> str:
    if min is not None and max is not None:
        return f" in [{min}, {max}]"
    if max is not None:
        return f" <= {max}"
    return f" >= {min}" if min is not None else ""


def check_int(name: str, value, *, min: Optional[int] = None, max: Optional[int] = None) -> int:
    """``value`` is an int (not a bool) in ``[min, max]`` (either bound optional)."""
    what = "a positive int" if min == 1 and max is None else f"an int{_span(min, max)}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if (min is not None and value < min) or (max is not None and value > max):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_float(name: str, value, *, min: Optional[float] = None, max: Optional[float] = None,
                min_open: bool = False) -> float:
    """``value`` is a finite real number (int or float, not a bool) in ``[min, max]``
    (``(min, max]`` with ``min_open``)."""
    span = f" > {min}" if min_open and max is None else _span(min, max)
    what = f"a finite number{span}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    low_ok = min is None or (value > min if min_open else value >= min)
    if not math.isfinite(value) or not low_ok or (max is not None and value > max):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def check_fraction(name: str, value, low: float = 0.0, high: float = 1.0) -> float:
    """``value`` is a number in ``[low, high]``."""
    return check_float(name, value, min=low, max=high)


def check_choice(name: str, value, choices):
    """``value`` is one of ``choices``."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` is a bool (``TypeError`` naming ``name`` otherwise)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


# ---- memory ---------------------------------------------------------------------------
def memory_bytes() -> int:
    """This machine's physical memory (a file read whole, or per-sample state, must fit in it)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_fits(num_samples: int, bytes_per_sample: int, device: torch.device, what: str) -> None:
    """Raise ``ValueError`` naming ``num_samples`` when ``what``'s per-sample state
    would not fit in ``device``'s memory (rather than an allocator's message)."""
    need = num_samples * bytes_per_sample
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        have = memory_bytes()
    if need > have:
        raise ValueError(f"num_samples={num_samples}: {what} needs at least {need} bytes ({need / 2**30:.1f} GiB) "
                         f"of per-sample state, more than the {have / 2**30:.1f} GiB of {device}")


# ---- states (ValueError, naming the key) ---------------------------------------------------
_MISSING = object()

#: the largest ``epoch`` a state may hold: epochs are added to int32 due epochs
#: (the scoring schedule) and to seeds, and no run has a billion epochs
MAX_EPOCH = 2**30


def _get(state: dict, key: str, where: str):
    value = state.get(key, _MISSING)
    if value is _MISSING:
        raise ValueError(f"{where}[{key!r}] is missing")
    return value


def header(state, kind: str, version: int, where: str = "state_dict") -> dict:
    """``state`` is a dict of ``kind`` at ``version``; returns it."""
    if not isinstance(state, dict):
        raise ValueError(f"{where} must be a dict from {kind}.state_dict(), got {type(state).__name__}")
    if state.get("kind") != kind:
        raise ValueError(f"{where}['kind'] is {state.get('kind')!r}: not a {kind} state")
    if type(state.get("version")) is not int or state.get("version") != version:
        raise ValueError(f"{where}['version'] {state.get('version')!r} is not supported (expected {version})")
    return state


def matches(state: dict, key: str, mine, where: str = "state_dict", default=_MISSING) -> None:
    """``state[key]`` equals this object's constructor value ``mine`` (``default``
    stands for a missing key, for keys added after a state version)."""
    value = state.get(key, default)
    if value is _MISSING:
        raise ValueError(f"{where}[{key!r}] is missing")
    if type(value) is bool and type(mine) is not bool or value != mine:
        raise ValueError(f"{where}[{key!r}]={value!r} does not match this object's {key}={mine!r}")


def integer(state: dict, key: str, low: int = 0, where: str = "state_dict", optional: bool = False,
            high: Optional[int] = None) -> Optional[int]:
    """An int in ``[low, high]`` (``None`` allowed with ``optional``)."""
    value = _get(state, key, where)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{where}[{key!r}] must be an int {span}, got {value!r}")
    return int(value)


def epoch(state: dict, key: str = "epoch", where: str = "state_dict") -> int:
    """An epoch counter: an int in ``[0, MAX_EPOCH]``."""
    return integer(state, key, where=where, high=MAX_EPOCH)


def totals(values: torch.Tensor, names, epochs: int, num_samples: int, where: str = "state_dict",
           key: str = "totals", bounded=("backward_saved",)) -> None:
    """The running totals of a selector agree with each other: ``sample_epochs`` is at
    most ``epochs * num_samples`` (one per sample per closed epoch), and each total
    named in ``bounded`` (counted once per sample per closed epoch, as the samples
    saved) is at most ``sample_epochs``."""
    t = dict(zip(names, values.tolist()))
    sample_epochs = t["sample_epochs"]
    if sample_epochs > epochs * num_samples:
        raise ValueError(f"{where}[{key!r}]: sample_epochs={sample_epochs} exceeds epoch * num_samples = "
                         f"{epochs} * {num_samples}")
    for name in bounded:
        if t[name] > sample_epochs:
            raise ValueError(f"{where}[{key!r}]: {name}={t[name]} exceeds sample_epochs={sample_epochs}")


def at_most(values: torch.Tensor, names, high: int, where: str, key: str) -> None:
    """Every counter of ``values`` (named ``names``) is at most ``high``."""
    for name, value in zip(names, values.tolist()):
        if value > high:
            raise ValueError(f"{where}[{key!r}]: {name}={value} exceeds {high}")


def number(state: dict, key: str, low: float = 0.0, where: str = "state_dict") -> float:
    """A finite float ``>= low``."""
    value = _get(state, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ValueError(f"{where}[{key!r}] must be a finite number >= {low}, got {value!r}")
    return float(value)


def boolean(state: dict, key: str, where: str = "state_dict") -> bool:
    value = _get(state, key, where)
    if not isinstance(value, bool):
        raise ValueError(f"{where}[{key!r}] must be a bool, got {value!r}")
    return value


def tensor(state: dict, key: str, shape: tuple, dtype: torch.dtype, where: str = "state_dict", *,
           low=None, high=None, no_nan: bool = False, finite: bool = False) -> torch.Tensor:
    """A tensor of ``shape`` and ``dtype`` whose values lie in ``[low, high]`` (where
    given), with no NaN (``no_nan``) or only finite values (``finite``). Reads the
    tensor once to check its values (``load_state_dict`` is not a training step)."""
    t = _get(state, key, where)
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        got = f"a {t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{where}[{key!r}] must be a {dtype} tensor of shape {tuple(shape)}, got {got}")
    bad = None
    if finite and t.is_floating_point():
        bad = ~torch.isfinite(t)
    elif no_nan and t.is_floating_point():
        bad = torch.isnan(t)
    if bad is not None and bool(bad.any()):
        raise ValueError(f"{where}[{key!r}] holds {'NaN' if no_nan and not finite else 'non-finite values'}")
    if low is not None and t.numel() and bool((t < low).any()):
        raise ValueError(f"{where}[{key!r}] holds values below {low}")
    if high is not None and t.numel() and bool((t > high).any()):
        raise ValueError(f"{where}[{key!r}] holds values above {high}")
    return t


def generator_state(state: dict, key: str, device: torch.device, where: str = "state_dict") -> torch.Tensor:
    """A ``torch.Generator`` state for ``device`` (tried on a scratch generator)."""
    t = _get(state, key, where)
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8:
        raise ValueError(f"{where}[{key!r}] must be a generator state (a uint8 tensor)")
    try:
        torch.Generator(device=device).set_state(t.cpu())
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{where}[{key!r}] is not a valid generator state for {device}: "
                         f"{str(exc).splitlines()[0]}") from None
    return t.cpu()
