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
    """Base class of every sample selector: the keep mask, the kept index list, index
    checks, the recording interface and the ``state_dict`` contract.

    Args:
        num_samples: the training set's size; every index must lie in ``[0, num_samples)``.
        device: where the per-sample state lives (default CPU); not ``"meta"``.
        backend: ``"auto"``, ``"torch"``, ``"native"`` or ``"triton"`` (see :func:`ies_fast.backend_info`).

    Raises:
        TypeError: ``num_samples`` is not an int (a bool or a float included).
        ValueError: ``num_samples < 1``, ``device="meta"``, or an unknown ``backend``.
        RuntimeError: ``backend="native"`` or ``"triton"`` is not available on ``device``.
    """

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
        """Record this epoch's per-sample losses (no host sync).

        Args:
            per_sample_loss: float ``[B]``, one unreduced loss per row of the batch.
            index: integer ``[B]``, the rows' dataset indices.
            scoring: whether this is a forward-only scoring pass (counted in
                ``stats()["scored_total"]``).

        Raises:
            TypeError: a non-tensor or non-floating ``per_sample_loss``, or a non-integer ``index``.
            ValueError: shapes that do not match, or an index out of range (on CUDA:
                reported by the next :meth:`step`).
        """
        raise NotImplementedError

    # ---- the recording interface (ies_fast.cross_entropy uses only these) ---------------
    def record(self, per_sample_loss: torch.Tensor, index: torch.Tensor) -> None:
        """Record already-checked losses (the hook :func:`ies_fast.cross_entropy` uses).

        Args:
            per_sample_loss: float ``[B]``.
            index: int64 ``[B]`` from :meth:`check_index`, on the selector's device;
                rows with ``index < 0`` are skipped.
        """
        raise NotImplementedError

    def ring(self) -> Optional[Ring]:
        """The loss ring, for a fused kernel that writes one loss per sample into it.

        Returns:
            The :class:`Ring` that :meth:`record` writes one max-loss per sample into,
            when a kernel's direct write gives the same result; ``None`` otherwise
            (then the loss calls :meth:`record`).
        """
        return None

    def count_scored(self, n) -> None:
        """Count samples forwarded by a scoring pass (``stats()["scored_total"]``).

        Args:
            n: an int, or a 0-d device tensor (no host sync).
        """
        self._pending_scored += n

    def defer_bad_targets(self, bad: torch.Tensor) -> None:
        """Count rows dropped for a target out of range where raising would sync.

        Args:
            bad: 0-d int tensor, the number of such rows; the next :meth:`step` raises
                ``ValueError`` reporting them.
        """
        self._deferred_errors[1] += bad

    def step(self) -> None:
        """Close the epoch and decide the next epoch's kept set (call once per epoch).

        Raises:
            ValueError: rows were dropped since the last step for an index or target
                out of range (CUDA, where checking them eagerly would sync).
        """
        raise NotImplementedError

    def score(self, model, loader, **kwargs) -> int:
        """Forward-only scoring pass over the removed samples, recording their losses.

        Args:
            model: the ``torch.nn.Module`` to forward (``eval`` mode by default, restored after).
            loader: yields ``(x, y, index)`` batches (or dicts with ``data``/``label``/``index``),
                e.g. over a :class:`ies_fast.data.ScoringSampler`.
            **kwargs: ``device``, ``autocast_dtype``, ``non_blocking``, ``score_fn``,
                ``mode`` and ``force`` of :func:`ies_fast.selectors.scoring.score`.

        Returns:
            The number of samples scored (0 when :meth:`needs_scoring` is False and not ``force``).

        Raises:
            TypeError: ``model`` is not a ``torch.nn.Module``.
            ValueError: an unknown ``mode``, a batch of another shape, or a ``score_fn``
                result that is not ``[B]``.
        """
        from .scoring import score

        return score(self, model, loader, **kwargs)

    def removed_mask(self) -> torch.Tensor:
        """Which samples the next training pass leaves out.

        Returns:
            bool ``[num_samples]`` on the selector's device (all False while removal is off).
        """
        raise NotImplementedError

    def epoch_losses(self) -> Optional[torch.Tensor]:
        """This epoch's recorded loss per sample, for reports (no host sync).

        Returns:
            fp32 ``[num_samples]`` on the selector's device: the loss recorded for each
            sample since the last :meth:`step` (the largest, where several were), NaN
            where none was; ``None`` for a selector that keeps no losses.
        """
        return None

    def sample_scores(self) -> Optional[torch.Tensor]:
        """The per-sample score the selector decides on (call before :meth:`step`).

        Returns:
            fp32 ``[num_samples]``, the epoch not yet closed included where it changes
            the score; NaN where a sample has none; ``None`` if the selector scores nothing.
        """
        return None

    def state_tensors(self) -> dict:
        """What must be equal on every DDP rank (:mod:`ies_fast.selectors.sync` checksums it).

        Returns:
            dict: the tensors of :meth:`state_dict` by name (nested ones as
            ``outer.inner``), the live ones without copies where the selector has them.
        """
        def flat(state: dict, prefix: str = "") -> dict:
            out = {}
            for k, v in state.items():
                if isinstance(v, torch.Tensor):
                    out[prefix + k] = v
                elif isinstance(v, dict):
                    out.update(flat(v, f"{prefix}{k}."))
            return out

        return flat(self.state_dict())

    def loss_weights(self, index: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-row weights for the training loss (InfoBatch rescales kept low-loss samples; IES does not).

        Args:
            index: integer ``[B]``, the rows' dataset indices.

        Returns:
            float32 ``[B]`` weights, or ``None`` when every weight is 1.
        """
        return None

    def training_loss(self, per_sample_loss: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The batch's loss to backpropagate, with the selector's own weighting.

        Args:
            per_sample_loss: float ``[B]``.
            index: integer ``[B]``, the rows' dataset indices.

        Returns:
            0-d tensor: the mean of ``per_sample_loss`` times :meth:`loss_weights` (the
            plain mean when the selector does not reweight).
        """
        weights = self.loss_weights(index)
        if weights is None:
            return per_sample_loss.mean()
        return (per_sample_loss * weights.to(per_sample_loss.device, per_sample_loss.dtype)).mean()

    def needs_scoring(self) -> bool:
        """Whether a forward-only scoring pass should run this epoch.

        Returns:
            ``True`` when :meth:`scoring_mask`'s samples should be forwarded now.
        """
        return False

    def scoring_mask(self) -> torch.Tensor:
        """Which samples the scoring pass should forward.

        Returns:
            bool ``[num_samples]``: here the removed ones.
        """
        return self.removed_mask()

    def set_removal(self, enabled: bool) -> None:
        """Turn removal off (annealing: the last epochs on the full data) or back on.

        Losses are still recorded and decisions still updated.

        Args:
            enabled: ``False`` trains every sample; ``True`` removes again.
        """
        self.removal_enabled = bool(enabled)
        self._invalidate()

    def stats(self) -> dict:
        """Counters as Python numbers; reads them from the device, so call it once per epoch.

        Returns:
            A dict: ``epoch``, ``num_samples``, ``kept``, ``removed``, the selector's own
            counts, then ``backward_saved``, ``backward_saved_fraction``,
            ``scored_total`` and ``removal_enabled``.
        """
        totals = dict(zip(self.TOTALS, self.totals.tolist()))
        removed = int(self.removed_mask().count_nonzero())
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
        """The selector's whole state, for a checkpoint (tensors cloned).

        Returns:
            A dict of plain values and tensors with ``kind``, ``version`` and
            ``num_samples`` first; save it with ``torch.save`` and load it with
            ``torch.load(weights_only=True)``.
        """
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`: validate all of it first, then apply it.

        Args:
            state: a dict from this class's :meth:`state_dict`.

        Raises:
            ValueError: anything wrong in ``state`` (a wrong kind or version, a missing
                key, a mismatched constructor value, a tensor of another shape or dtype);
                the message names the key and nothing is changed.
        """
        self.apply_state(self.check_state(state))

    def check_state(self, state, where: str = "state_dict") -> dict:
        """Validate ``state`` whole, changing nothing (subclasses add their own fields).

        Args:
            state: a dict from :meth:`state_dict`.
            where: how messages name the state (e.g. ``"state_dict['exits']"``).

        Returns:
            The values :meth:`apply_state` applies.

        Raises:
            ValueError: a bad header, ``num_samples``, ``epoch``, ``removal_enabled``
                or ``totals``, naming the key.
        """
        check.header(state, self.KIND, self.VERSION, where)
        check.matches(state, "num_samples", self.num_samples, where)
        epoch = check.epoch(state, where=where)
        totals = check.tensor(state, "totals", (len(self.TOTALS),), torch.int64, where, low=0)
        check.totals(totals, self.TOTALS, epoch, self.num_samples, where, bounded=self.BOUNDED_TOTALS)
        return {"epoch": epoch, "removal_enabled": check.boolean(state, "removal_enabled", where), "totals": totals}

    def apply_state(self, values: dict) -> None:
        """Apply a validated state (cannot fail); subclasses extend it.

        Args:
            values: what :meth:`check_state` returned.
        """
        self.totals.copy_(values["totals"].to(self.device))
        self.epoch, self.removal_enabled = values["epoch"], values["removal_enabled"]
        self._pending_scored.zero_()
        self._invalidate()

    def to(self, device) -> "Selector":
        """Move the per-sample state (every tensor attribute) to ``device``.

        Args:
            device: the target device.

        Returns:
            ``self``.

        Raises:
            ValueError: the selector draws from a ``torch.Generator`` (InfoBatch,
                RandomRemoval), whose stream cannot move: build it on ``device``.
        """
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
        """Which samples the next training pass trains.

        Returns:
            bool ``[num_samples]``, the complement of :meth:`removed_mask`.
        """
        return ~self.removed_mask()

    def kept_indices_padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept sample indices without a host sync.

        Returns:
            ``(buffer, count)``: ``buffer[:count]`` are the kept indices in ascending
            order; ``count`` is a device tensor.
        """
        if self._kept_cache is None:
            self._kept_cache = compact(self.kernel_backend, self.kept_mask())
        return self._kept_cache

    def kept_indices(self) -> torch.Tensor:
        """The samples to train on next epoch.

        Built by on-device compaction; sizing the result reads the count once (the
        one device->host copy per epoch); cached until the next :meth:`step`.

        Returns:
            int64 indices, ascending, on the selector's device.
        """
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
        """Validate a batch's dataset indices.

        Args:
            index: integer tensor ``[length]``.
            length: the batch size it must match.

        Returns:
            int64 ``index`` on the selector's device; on CUDA, out-of-range rows become -1.

        Raises:
            TypeError: ``index`` is not a tensor, or not of an integer dtype.
            ValueError: ``index`` is on the meta device, not 1-D of ``length``, or (on CPU)
                out of ``[0, num_samples)``; on CUDA the next :meth:`step` reports it.
        """
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
        self._deferred_errors[0] += bad.count_nonzero()
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
