"""ies_fast: Instance-dependent Early Stopping for PyTorch training.

>>> sel = ies_fast.IES(len(dataset), delta=1e-3)
>>> loss = ies_fast.cross_entropy(logits, target, index, selector=sel)
>>> sel.step()                 # at the end of each epoch
>>> sel.kept_indices()         # what to train on next epoch
"""
from .backend import backend_info, warn_if_native_missing

warn_if_native_missing()  # once: a build without ies_fast._C is otherwise silent

from .data.selected_dataset import IESDataset  # noqa: E402
from .losses import causal_lm_cross_entropy, cross_entropy, multi_exit_loss, per_exit_cross_entropy  # noqa: E402
from .selectors import IES, InfoBatch, PerExitIES, RandomRemoval, Selector, make_selector  # noqa: E402
from .selectors.rule import ReferenceCriterion, instability_score  # noqa: E402
from .selectors.scoring import score  # noqa: E402
from .stopping import PatienceStopper, all_mastered  # noqa: E402

__all__ = [
    "IES", "IESDataset", "InfoBatch", "PatienceStopper", "PerExitIES", "RandomRemoval",
    "ReferenceCriterion", "Selector", "all_mastered", "backend_info", "causal_lm_cross_entropy", "cross_entropy",
    "instability_score", "make_selector", "multi_exit_loss", "per_exit_cross_entropy", "score",
]
__version__ = "0.1.0"
