"""Losses that record each sample's loss in a selector: :func:`cross_entropy` (a
drop-in for ``F.cross_entropy``), :func:`causal_lm_cross_entropy`, and the
multi-exit losses of ``exits.py``. They touch a selector only through its
recording interface (:mod:`ies_fast.selectors.base`)."""
from .cross_entropy_loss import causal_lm_cross_entropy, cross_entropy
from .exits import multi_exit_loss, per_exit_cross_entropy

__all__ = ["causal_lm_cross_entropy", "cross_entropy", "multi_exit_loss", "per_exit_cross_entropy"]
