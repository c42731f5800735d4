"""What every sample selector shares: the keep mask, the kept index list built on
device, input checks on ``index``, the recording interface a loss uses, and the
``state_dict`` contract (the checks are in :mod:`ies_fast.checks`).

Concrete selectors (:class:`ies_fast.IES`, :class:`ies_fast.InfoBatch`,
:class:`ies_fast.RandomRemoval`) implement ``observe``, ``record``, ``step``,
``removed_mask``, ``stats`` and the state they own.

The recording interface (what :func:`ies_fast.cross_entropy` calls, and nothing
else): :meth:`Selector.check_index`, :meth:`Selector.record`,
:meth:`Selector.count_scored`, :meth:`Selector.defer_bad_targets` and
:meth:`Selector.ring` (the raw ring a fused kernel may write into directly).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import backend as _backend
from .. import checks as check
from ..checks import check_int
from ..ops.compact import compact


class Ring(NamedTuple):
    """A selector's loss ring, for fused kernels that write one loss per sample into it
    directly (:meth:`Selector.ring`): ``hist`` fp32 ``[S, L]``, ``count`` uint8 ``[S]``,
    and the backend that the selector's own ``record`` would use."""

    hist: torch.Tensor
    count: torch.Tensor
    backend: str


class Selector:
    """Base class: subclasses set ``num_samples``, ``device``, ``backend`` and ``epoch``."""

    #: ``state_dict()["kind"]``, the state layout's version, and the names of ``self.totals``
    KIND: str
    VERSION: int
    TOTALS: tuple = ()
    #: the totals counted at most once per sample per closed epoch (checked against ``sample_epochs``)
    BOUNDED_TOTALS: tuple = ("backward_saved",)
    num_samples: int
    device: torch.device
    backend: str = "auto"
    epoch: int = 0
    #: whether :meth:`loss_weights` may return weights other than 1 (wrappers that cannot
    #: reweight the training loss refuse such a selector by name)
    REWEIGHTS: bool = False

    def __init__(self, num_samples: int, device=None, backend: str = "auto"):
        self.num_samples = check_int("num_samples", num_samples, min=1)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "meta":
            raise ValueError("device='meta' holds no data: a selector keeps per-sample state on a real device")
        if backend not in _backend.BACKENDS:
            raise ValueError(f"backend must be one of {_backend.BACKENDS}, got {backend!r}")
        self.backend = backend
        #: the concrete backend every op of this selector runs on (resolved here and at ``to()``)
        self.kernel_backend = _backend.resolve_backend(backend, self.device)
        self.removal_enabled = True
        self._kept_cache: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._kept_list: Optional[torch.Tensor] = None
        # observations dropped because of a bad index/target on a CUDA tensor,
        # reported (raised) at the next step(): checking them eagerly would sync.
        self._deferred_errors = torch.zeros(2, dtype=torch.int64, device=self.device)
        # forward-only scoring samples seen since the last step() (folded into stats there)
        self._pending_scored = torch.zeros(1, dtype=torch.int64, device=self.device)

    # ---- what the training loop asks of every selector ---------------------------------
    def observe(self, per_sample_loss: torch.Tensor, index: torch.Tensor, *, scoring: bool = False) -> None:
        """Record this epoch's per-sample losses (no host sync)."""
        raise NotImplementedError

    # ---- the recording interface (ies_fast.cross_entropy uses only these) ---------------
    def record(self, per_sample_loss: torch.Tensor, index: torch.Tensor) -> None:
        """Record already-checked losses ``[B]``: ``index`` from :meth:`check_index`
        (int64 on the selector's device, rows with ``index < 0`` skipped)."""
        raise NotImplementedError

    def ring(self) -> Optional[Ring]:
        """The ring that :meth:`record` writes one max-loss per sample into, when a
        fused kernel may write it directly with the same result; ``None`` otherwise
        (then the loss calls :meth:`record`)."""
        return None

    def count_scored(self, n) -> None:
        """Count ``n`` samples forwarded by a scoring pass (``stats()["scored_total"]``);
        ``n`` an int or a 0-d device tensor (no host sync)."""
        self._pending_scored += n

    def defer_bad_targets(self, bad: torch.Tensor) -> None:
        """Count rows dropped for a target out of range on a device where raising
        would sync (0-d int tensor): reported by the next :meth:`step`."""
        self._deferred_errors[1] += bad

    def step(self) -> None:
        """Close the epoch and decide the next epoch's kept set."""
        raise NotImplementedError

    def score(self, model, loader, **kwargs) -> int:
        """Forward-only scoring pass over the removed samples (see :func:`ies_fast.selectors.scoring.score`)."""
        from .scoring import score

        return score(self, model, loader, **kwargs)

    def removed_mask(self) -> torch.Tensor:
        """bool ``[num_samples]``: samples left out of the next training pass."""
        raise NotImplementedError

    def loss_weights(self, index: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-row weights for the training loss of the samples ``index`` (``None``: all 1).
        InfoBatch rescales kept low-loss samples; IES does not."""
        return None

    def training_loss(self, per_sample_loss: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The batch's loss to backpropagate: the mean of ``per_sample_loss`` ``[B]``
        times :meth:`loss_weights` (the plain mean when the selector does not reweight).
        The wrappers use it so that any selector trains with its own weighting."""
        weights = self.loss_weights(index)
        if weights is None:
            return per_sample_loss.mean()
        return (per_sample_loss * weights.to(per_sample_loss.device, per_sample_loss.dtype)).mean()

    def needs_scoring(self) -> bool:
        """Whether a forward-only scoring pass over :meth:`scoring_mask` should run this epoch."""
        return False

    def scoring_mask(self) -> torch.Tensor:
        """bool ``[num_samples]``: samples the scoring pass should forward (the removed ones)."""
        return self.removed_mask()

    def set_removal(self, enabled: bool) -> None:
        """Turn removal off (annealing: the last epochs on the full data) or back on.
        Losses are still recorded and decisions still updated."""
        self.removal_enabled = bool(enabled)
        self._invalidate()

    def stats(self) -> dict:
        """Counters as Python numbers (reads them from the device: call once per epoch):
        the counts every selector has, then :meth:`_own_stats`, then the savings."""
        totals = dict(zip(self.TOTALS, self.totals.tolist()))
        removed = int(self.removed_mask().sum())
        return {
            "epoch": self.epoch,
            "num_samples": self.num_samples,
            "kept": self.num_samples - removed,
            "removed": removed,
            **self._own_stats(totals),
            **self._saving_stats(totals),
        }

    def _own_stats(self, totals: dict) -> dict:
        """The selector's own entries of :meth:`stats` (``totals``: its totals by name)."""
        return {}

    def _state_header(self) -> dict:
        """What every ``state_dict`` starts with (checked by :func:`ies_fast.checks.header`)."""
        return {"kind": self.KIND, "version": self.VERSION, "num_samples": self.num_samples}

    def _saving_stats(self, totals: dict) -> dict:
        """The stats every selector reports, from its totals (backward_saved, sample_epochs, scored)."""
        epochs = totals["sample_epochs"]
        return {
            "backward_saved": totals["backward_saved"],
            "backward_saved_fraction": totals["backward_saved"] / epochs if epochs else 0.0,
            "scored_total": totals["scored"],
            "removal_enabled": self.removal_enabled,
        }

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`: validate all of it first (:meth:`check_state`),
        then apply it (:meth:`apply_state`); a bad state raises ``ValueError`` naming
        the key and changes nothing."""
        self.apply_state(self.check_state(state))

    def check_state(self, state, where: str = "state_dict") -> dict:
        """Validate ``state`` whole, changing nothing; returns the values
        :meth:`apply_state` applies. Here: the fields every selector has (header,
        ``num_samples``, ``epoch``, ``removal_enabled``, ``totals``); subclasses
        extend it with their own."""
        check.header(state, self.KIND, self.VERSION, where)
        check.matches(state, "num_samples", self.num_samples, where)
        epoch = check.epoch(state, where=where)
        totals = check.tensor(state, "totals", (len(self.TOTALS),), torch.int64, where, low=0)
        check.totals(totals, self.TOTALS, epoch, self.num_samples, where, bounded=self.BOUNDED_TOTALS)
        return {"epoch": epoch, "removal_enabled": check.boolean(state, "removal_enabled", where), "totals": totals}

    def apply_state(self, values: dict) -> None:
        """Apply what :meth:`check_state` returned (cannot fail); subclasses extend it."""
        self.totals.copy_(values["totals"].to(self.device))
        self.epoch, self.removal_enabled = values["epoch"], values["removal_enabled"]
        self._pending_scored.zero_()
        self._invalidate()

    def to(self, device) -> "Selector":
        """Move the per-sample state (every tensor attribute) to ``device``; returns
        ``self``. A selector that draws from a ``torch.Generator`` (InfoBatch,
        RandomRemoval) cannot carry its random stream to another device: build it there."""
        device = torch.device(device)
        if device == self.device:
            return self
        if isinstance(getattr(self, "generator", None), torch.Generator):
            raise ValueError(f"{type(self).__name__} draws from a random generator on {self.device}, which cannot "
                             f"move to {device}: build it with device={str(device)!r}")
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        self.device = device
        self.kernel_backend = _backend.resolve_backend(self.backend, device)
        self._invalidate()
        return self

    # ---- the mask and the index list -------------------------------------------------

    def kept_mask(self) -> torch.Tensor:
        return ~self.removed_mask()

    def kept_indices_padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(buffer, count)``: ``buffer[:count]`` are the kept sample indices in
        ascending order; ``count`` stays on the device (no host sync)."""
        if self._kept_cache is None:
            self._kept_cache = compact(self.kernel_backend, self.kept_mask())
        return self._kept_cache

    def kept_indices(self) -> torch.Tensor:
        """int64 indices of the samples to train on next epoch, ascending, on the
        selector's device. Built by on-device compaction; sizing the result reads the
        count once (the one device->host copy per epoch), cached until ``step()``."""
        if self._kept_list is None:
            buffer, count = self.kept_indices_padded()
            k = int(count)
            # the native CPU op already returns exactly k entries: no copy then
            self._kept_list = buffer if buffer.numel() == k else buffer[:k].clone()
            self._kept_cache = None  # keep only the sized list (memory: 8 bytes per kept sample)
        return self._kept_list

    def _invalidate(self) -> None:
        """Forget the cached index list (the mask changed)."""
        self._kept_cache = None
        self._kept_list = None

    # ---- input checks ------------------------------------------------------------------
    def check_index(self, index, length: int) -> torch.Tensor:
        """Validated int64 index on the selector's device; rows that must not be
        recorded become -1. Out-of-range values raise at once on CPU and are counted
        and reported by the next ``step()`` on CUDA."""
        if not isinstance(index, torch.Tensor):
            raise TypeError(f"index must be a torch.Tensor of sample indices, got {type(index).__name__}")
        if index.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"index must hold integers (int64 preferred), got dtype {index.dtype}")
        if index.device.type == "meta":
            raise ValueError("index is on the meta device (no data): it must hold the samples' dataset indices")
        if index.dim() != 1 or index.numel() != length:
            raise ValueError(f"index must be 1-D with one entry per sample ({length}), got shape {tuple(index.shape)}")
        if index.dtype != torch.int64 or index.device != self.device:
            index = index.to(device=self.device, dtype=torch.int64, non_blocking=True)
        if index.device.type == "cpu":
            # one reduction and two reads of 0-d results (cheaper than a mask and .any())
            lo, hi = torch.aminmax(index) if index.numel() else (0, 0)
            if int(lo) < 0 or int(hi) >= self.num_samples:
                first = int(index[(index < 0) | (index >= self.num_samples)][0])
                raise ValueError(f"index out of range [0, {self.num_samples}): got {first}")
            return index
        bad = (index < 0) | (index >= self.num_samples)
        self._deferred_errors[0] += bad.sum()
        return torch.where(bad, torch.full_like(index, -1), index)

    def _report_deferred_errors(self) -> None:
        if self.device.type == "cpu":
            return
        bad_index, bad_target = (int(v) for v in self._deferred_errors.tolist())
        if bad_index or bad_target:
            self._deferred_errors.zero_()
            parts = []
            if bad_index:
                parts.append(f"{bad_index} rows had an index out of range [0, {self.num_samples})")
            if bad_target:
                parts.append(f"{bad_target} rows had a target out of range")
            raise ValueError(
                "observations since the last step() were dropped: " + "; ".join(parts) + " (index / target)"
            )
