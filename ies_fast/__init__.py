"""ies_fast: Instance-dependent Early Stopping for PyTorch training.

>>> sel = ies_fast.IES(len(dataset), delta=1e-3)
>>> loss = ies_fast.cross_entropy(logits, target, index, selector=sel)
>>> sel.step()                 # at the end of each epoch
>>> sel.kept_indices()         # what to train on next epoch
"""
from .backend import backend_info, warn_if_native_missing

warn_if_native_missing()  # once: a build without ies_fast._C is otherwise silent
from .criterion import ReferenceCriterion, instability_score
from .loss import causal_lm_cross_entropy, cross_entropy
from .selection import Selector
from .selector import IES

__all__ = ["IES", "Selector", "ReferenceCriterion", "backend_info", "causal_lm_cross_entropy", "cross_entropy", "instability_score"]
__version__ = "0.1.0"
from .infobatch import InfoBatch
from .random_removal import RandomRemoval
from .stopper import PatienceStopper, all_mastered
from .multi_exit import MultiExitResNet, multi_exit_loss, per_exit_cross_entropy

__all__ += ["InfoBatch", "RandomRemoval", "PatienceStopper", "all_mastered", "MultiExitResNet", "multi_exit_loss", "per_exit_cross_entropy"]
from .scoring import score

__all__ += ["score"]
from .data.selected_dataset import IESDataset

__all__ += ["IESDataset"]
