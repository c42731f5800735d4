"""Samplers that visit only the samples a selector keeps (training) or removed
(scoring), with DistributedSampler-style seeding and DDP sharding.

The kept index list lives on the selector's device; each sampler copies it to the
host once per epoch (the one device->host copy the design allows) and caches the
copy until the selector's list changes (``selector.step()`` builds a new one).
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .. import checks as check

__all__ = ["KeptSampler", "KeptBatchSampler", "ScoringSampler", "shard", "check_seed"]

# a seed and an epoch are int64s: ``seed + epoch`` then always fits torch.Generator.manual_seed
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int in the int64 range (what the shuffle's generator takes);
    ``TypeError``/``ValueError`` naming ``name`` otherwise (bools are refused)."""
    return check.check_int(name, seed, min=INT64_MIN, max=INT64_MAX)


def _check_selector(selector) -> None:
    for name in ("num_samples", "kept_indices", "scoring_mask"):
        if not hasattr(selector, name):
            raise TypeError(f"selector must be an ies_fast selector (IES, InfoBatch, ...), got {type(selector).__name__} without {name!r}")


def _world(num_replicas: Optional[int], rank: Optional[int]) -> tuple[int, int]:
    """``(num_replicas, rank)``, defaulting to the initialised process group (else 1, 0)."""
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    num_replicas = check.check_int("num_replicas", num_replicas, min=1)
    return num_replicas, check.check_int("rank", rank, min=0, max=num_replicas - 1)


def shard(indices: torch.Tensor, num_replicas: int, rank: int, drop_last: bool) -> torch.Tensor:
    """This rank's share of ``indices`` (1-D, already in epoch order), exactly as
    ``DistributedSampler`` splits: pad to a multiple of ``num_replicas`` by
    repeating from the start (``drop_last=False``) or trim the tail
    (``drop_last=True``), then take every ``num_replicas``-th element from ``rank``."""
    n = indices.numel()
    if num_replicas == 1:
        return indices
    if drop_last:
        total = (n // num_replicas) * num_replicas
        indices = indices[:total]
    else:
        total = math.ceil(n / num_replicas) * num_replicas
        pad = total - n
        if pad and n:
            reps = math.ceil(pad / n)
            indices = torch.cat([indices, indices.repeat(reps)[:pad]])
    return indices[rank:total:num_replicas]


class _HostList:
    """Host copy of a device index list, refreshed only when the source tensor changes."""

    def __init__(self):
        self._src: Optional[torch.Tensor] = None
        self._host: Optional[torch.Tensor] = None

    def get(self, src: torch.Tensor) -> torch.Tensor:
        if src is not self._src:  # the selector builds a new tensor after each step()
            self._host = src.detach().to("cpu", torch.int64)
            self._src = src
        return self._host


class KeptSampler(Sampler[int]):
    """Yields the selector's kept sample indices for one epoch, each once, in a
    fresh seeded shuffle (``shuffle=False``: ascending).

    The shuffle of epoch ``e`` uses ``seed + e``. ``e`` is the value last given to
    :meth:`set_epoch` (as with ``DistributedSampler``); if ``set_epoch`` was never
    called, ``selector.epoch`` is used, so the order still changes every epoch.
    The kept list is read when the epoch starts (``iter``) and by ``len()``, so
    ``len()`` is right before the epoch; call ``selector.step()`` before building
    the next epoch's iterator.

    DDP: every rank must hold the same selector state (``IES.step`` merges ranks)
    and the same ``seed``; rank ``r`` of ``R`` gets every ``R``-th index of the
    shuffled list. With ``drop_last=False`` the list is padded to a multiple of
    ``R`` by repeating its first entries (as ``DistributedSampler`` does): up to
    ``R - 1`` samples are seen twice per epoch; their recorded loss is unaffected
    (the selector keeps one loss per sample per epoch, the largest) but they count
    twice in the gradient. ``drop_last=True`` trims the tail instead (up to
    ``R - 1`` kept samples skipped this epoch). With one replica nothing is padded
    or dropped.
    """

    def __init__(self, selector, *, shuffle: bool = True, seed: int = 0, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, drop_last: bool = False):
        _check_selector(selector)
        self.selector = selector
        self.shuffle = bool(shuffle)
        self.seed = check_seed(seed)
        self.num_replicas, self.rank = _world(num_replicas, rank)
        self.drop_last = bool(drop_last)
        self._epoch: Optional[int] = None
        self._skip = 0  # samples of this rank's epoch order the next iter() leaves out (a mid-epoch resume)
        self._host = _HostList()

    # ---- epoch ---------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose shuffle the next ``iter()`` draws (``seed + epoch``)."""
        self._epoch = check.check_int("epoch", epoch, min=0, max=INT64_MAX)

    def resume_at(self, position: int) -> None:
        """Make the next ``iter()`` start at ``position`` of this rank's epoch order
        (the samples before it were trained before a checkpoint); ``len()`` still
        counts the whole epoch, as a resumed loop counts batches already done."""
        self._skip = check.check_int("position", position, min=0)

    @property
    def epoch(self) -> int:
        return self._epoch if self._epoch is not None else int(self.selector.epoch)

    # ---- the epoch's indices -----------------------------------------------------------
    def kept(self) -> torch.Tensor:
        """The selector's kept indices on the host (ascending; copied once per list)."""
        return self._host.get(self.selector.kept_indices())

    def epoch_indices(self) -> torch.Tensor:
        """int64 CPU tensor: this rank's indices for the current epoch, in order."""
        kept = self.kept()
        if self.shuffle and kept.numel() > 1:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            kept = kept.index_select(0, torch.randperm(kept.numel(), generator=g))
        return shard(kept, self.num_replicas, self.rank, self.drop_last)

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return iter(self.epoch_indices()[skip:].tolist())

    def __len__(self) -> int:
        n, R = self.kept().numel(), self.num_replicas
        return n // R if self.drop_last else math.ceil(n / R)

    # ---- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self._epoch, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``seed``, ``epoch`` and ``shuffle`` (these override the constructor's;
        ``shuffle`` may be absent). The whole state is checked first: a bad one raises
        ``ValueError`` naming the key and changes nothing."""
        self.apply_state(self.check_state(state))

    def check_state(self, state, where: str = "state_dict") -> dict:
        """Validate ``state`` whole (nothing changes); returns what :meth:`apply_state` applies."""
        if not isinstance(state, dict):
            raise ValueError(f"{where} must be a dict from KeptSampler.state_dict(), got {type(state).__name__}")
        seed = check.integer(state, "seed", low=INT64_MIN, high=INT64_MAX, where=where)
        epoch = check.integer(state, "epoch", optional=True, high=INT64_MAX, where=where)
        shuffle = check.boolean(state, "shuffle", where) if "shuffle" in state else self.shuffle
        return {"seed": seed, "epoch": epoch, "shuffle": shuffle}

    def apply_state(self, values: dict) -> None:
        self.seed, self._epoch, self.shuffle = values["seed"], values["epoch"], values["shuffle"]


class KeptBatchSampler(Sampler[List[int]]):
    """Batches (lists of indices) over a :class:`KeptSampler`'s epoch.

    ``drop_last`` drops the last incomplete batch *and* trims the DDP shards
    instead of padding them; ``shard_drop_last`` sets the sharding on its own.
    Use as ``DataLoader(dataset, batch_sampler=...)``."""

    def __init__(self, selector, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None, drop_last: bool = False,
                 shard_drop_last: Optional[bool] = None):
        self.batch_size = check.check_int("batch_size", batch_size, min=1)
        self.drop_last = bool(drop_last)
        self.sampler = KeptSampler(selector, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank,
                                   drop_last=self.drop_last if shard_drop_last is None else bool(shard_drop_last))

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[List[int]]:
        order = self.sampler.epoch_indices()
        n = order.numel()
        if self.drop_last:
            order = order[: (n // self.batch_size) * self.batch_size]
        return (b.tolist() for b in order.split(self.batch_size)) if order.numel() else iter(())

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class ScoringSampler(Sampler[int]):
    """The samples of ``selector.scoring_mask()`` (the removed ones due this epoch
    under the selector's scoring policy: all of them by default, see
    :mod:`ies_fast.selectors.schedule`) in ascending order — or every sample with
    ``all_samples=True`` — for the forward-only scoring pass. Read when the epoch
    starts and copied to the host once.

    DDP: rank ``r`` of ``R`` gets every ``R``-th index; shards differ in length by
    at most one and nothing is repeated (scoring is forward-only, so ranks need not
    run the same number of steps: score with the unwrapped module). ``pad=True``
    pads like ``DistributedSampler`` for equal lengths; the repeated samples are
    harmless (the selector keeps the largest of an epoch's losses per sample).
    """

    def __init__(self, selector, all_samples: bool = False, *, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, pad: bool = False):
        _check_selector(selector)
        self.selector = selector
        self.all_samples = bool(all_samples)
        self.pad = bool(pad)
        self.num_replicas, self.rank = _world(num_replicas, rank)

    def indices(self) -> torch.Tensor:
        """int64 CPU tensor: this rank's scoring indices, ascending."""
        if self.all_samples:
            idx = torch.arange(self.selector.num_samples)
        else:
            idx = self.selector.scoring_mask().to("cpu").nonzero().squeeze(1)  # once per epoch
        if self.pad:
            return shard(idx, self.num_replicas, self.rank, drop_last=False)
        return idx[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.indices().numel()
