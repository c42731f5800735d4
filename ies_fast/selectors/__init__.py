"""Sample selectors: which training samples the next epoch trains on.

* :class:`IES` (``ies.py``): instance-dependent early stopping, the mastered rule
  of ``rule.py``; per-exit decisions in ``per_exit.py``; the collapse guard
  (``floor.py``) and the re-scoring schedule (``schedule.py``);
* :class:`InfoBatch`, :class:`RandomRemoval`: the baselines it is compared with;
:func:`score` (``scoring.py``): the forward-only pass over removed samples.
(:class:`ies_fast.PatienceStopper`, stopping a run on a plateau, is ``ies_fast/stopping.py``.)

:func:`make_selector` builds any of them by name.
"""
from __future__ import annotations

from .base import Selector
from .ies import IES
from .infobatch import InfoBatch
from .per_exit import PerExitIES
from .random_removal import RandomRemoval

#: the names :func:`make_selector` takes, and what each builds
KINDS = {"ies": IES, "infobatch": InfoBatch, "random": RandomRemoval}


def make_selector(kind: str, num_samples: int, **kwargs) -> Selector:
    """A selector by name: ``"ies"`` (``exit_reduction="per_exit"`` gives a
    :class:`PerExitIES`), ``"infobatch"`` or ``"random"``; keyword arguments go to its
    constructor. The one place that picks a class from arguments."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if kind == "ies" and kwargs.get("exit_reduction") == "per_exit":
        return PerExitIES(num_samples, **kwargs)
    return KINDS[kind](num_samples, **kwargs)


__all__ = ["IES", "InfoBatch", "KINDS", "PerExitIES", "RandomRemoval", "Selector", "make_selector"]
