"""IES with its per-sample state sharded by sample across ranks (``IES(..., shard_state=True)``).

Rank ``r`` of ``W`` owns the samples ``i`` with ``i % W == r``: their loss ring, counts
and own decisions (row ``i // W`` of its ring). During an epoch a rank only queues the
``(index, loss)`` pairs it observed; at :meth:`ShardedIES.step` one all-to-all sends each
pair to its owner, which records them with the same kernel as the replicated selector
(max per sample and epoch) and decides for its rows. The mastered set is then rebuilt
on every rank from an all-gathered bitmask (``ceil(N / W / 8)`` bytes per rank), so
``removed_mask()``, ``kept_indices()`` and the samplers agree on every rank.

Decisions, statistics and totals are bit-identical to the replicated selector on the
same observations (``tests/selectors/test_sharded_state.py``): recording is a max,
which does not depend on where or in which order the losses were taken.

Memory per rank: ``(N / W)·(4·L + 2)`` bytes of ring, counts and own decisions, ``N``
bytes of the global mask, and the queued pairs of one epoch (8 bytes per observation
this rank made, about ``8·N / W``), against ``N·(4·L + 2)`` replicated.

Limits (``ValueError`` at construction): one exit, ``score_policy="every"``.
Checkpoints: :meth:`ShardedIES.state_dict` is this rank's shard (``state["shard"]``);
:meth:`ShardedIES.load_state_dict` takes a whole (replicated-layout) state, and
:mod:`ies_fast.io.selector_shards` assembles one from shards saved on any number of ranks.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..ops import dispatch
from .ies import IES
from .rule import decision_threshold


def process_group_shape(distributed: bool = True) -> tuple[int, int]:
    """``(rank, world)`` of the default process group (``(0, 1)`` without one)."""
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def owned_rows(num_samples: int, rank: int, world: int) -> int:
    """How many of ``range(num_samples)`` satisfy ``i % world == rank``."""
    return (num_samples - rank + world - 1) // world


def pack_bits(mask: torch.Tensor, nbytes: int) -> torch.Tensor:
    """uint8 ``[nbytes]``: bool ``mask`` packed little-endian (bit ``j`` of byte ``b`` is
    ``mask[8·b + j]``), zero-padded."""
    bits = torch.zeros(nbytes * 8, dtype=torch.uint8, device=mask.device)
    bits[: mask.numel()] = mask.to(torch.uint8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (bits.view(nbytes, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """bool ``[8·packed.numel()]``: the inverse of :func:`pack_bits`."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(1) >> shifts) & 1).bool().reshape(-1)


def interleave(rows_by_rank: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``[num_samples, ...]`` from ``[W, R, ...]`` rows (rank ``r``'s row ``j`` is sample
    ``j·W + r``; rows past the end are padding)."""
    W, R = rows_by_rank.shape[:2]
    return rows_by_rank.transpose(0, 1).reshape(W * R, *rows_by_rank.shape[2:])[:num_samples]


def _all_gather(out: torch.Tensor, mine: torch.Tensor) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, mine)


class ShardedIES(IES):
    """:class:`ies_fast.IES` whose ring, counts and decisions are held by their owner rank
    (see the module docstring). Built by ``IES(..., shard_state=True)``; the rank and
    world size are those of the process group at construction."""

    _shards_state = True

    def __init__(self, num_samples: int, *args, shard_state: bool = True, **kwargs):
        self.rank, self.world = process_group_shape(kwargs.get("distributed", True))
        super().__init__(num_samples, *args, **kwargs)
        if self.num_exits != 1:
            raise ValueError(f"shard_state=True needs num_exits=1, got {self.num_exits}")
        if self.scoring_schedule.policy != "every":
            raise ValueError(f"shard_state=True needs score_policy='every', got {self.scoring_schedule.policy!r}")
        # this rank's own decisions (row j = sample j·W + rank); self.mastered is the global mask
        self.owned_mastered = (self.mastered if self.world == 1  # one rank owns all: the same tensor
                               else torch.zeros(self.hist.shape[0], dtype=torch.bool, device=self.device))
        self._queued: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _ring_rows(self, num_samples: int) -> int:
        return owned_rows(num_samples, self.rank, self.world)

    # ---- recording: queue until step() ----------------------------------------------
    def record(self, per_sample_loss: torch.Tensor, index: torch.Tensor) -> None:
        if self.world == 1:  # the ring holds every sample: record in place
            super().record(per_sample_loss, index)
            return
        loss = per_sample_loss.detach().to(self.device, torch.float32, non_blocking=True)
        self._queued.append((loss, index))

    def ring(self):
        return None  # queued, not written in place

    def _merge_ranks(self) -> None:
        """Send each queued ``(index, loss)`` to its owner (one all-to-all of 8-byte
        pairs, after one of the per-rank counts) and record what arrives."""
        if self.world == 1:
            return
        if self._queued:
            loss = torch.cat([q[0] for q in self._queued])
            index = torch.cat([q[1] for q in self._queued])
        else:
            loss = torch.zeros(0, dtype=torch.float32, device=self.device)
            index = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._queued = []
        valid = index >= 0  # rows check_index dropped on CUDA
        loss, index = loss[valid], index[valid]
        owner = index % self.world
        order = torch.argsort(owner, stable=True)
        pairs = torch.stack([(index // self.world).to(torch.int32), loss.view(torch.int32)], 1)[order]
        send = torch.bincount(owner, minlength=self.world)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send)
        send_sizes, recv_sizes = send.tolist(), recv.tolist()
        arrived = torch.empty(sum(recv_sizes), 2, dtype=torch.int32, device=self.device)
        dist.all_to_all_single(arrived, pairs, recv_sizes, send_sizes)
        del pairs
        if arrived.numel():
            dispatch.record(self._op("record"), self.hist, self.count,
                            arrived[:, 1].contiguous().view(torch.float32), arrived[:, 0].long())
        counters = torch.cat([self._pending_scored, self._deferred_errors])
        dist.all_reduce(counters, op=dist.ReduceOp.SUM)
        self._pending_scored.copy_(counters[:1])
        self._deferred_errors.copy_(counters[1:])

    # ---- the decision -----------------------------------------------------------------
    def _close_epoch(self) -> torch.Tensor:
        """Decide this rank's rows, sum the statistics over ranks and rebuild the global
        mask from the ranks' bitmasks."""
        stats = dispatch.close_epoch(
            self._op("close_epoch"), self.hist, self.count, self.owned_mastered,
            self.order, self.window, self.k, decision_threshold(self.delta, self.window),
        )
        if self.world == 1:
            return stats
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        self.mastered.copy_(self._gather_mask(self.owned_mastered))
        return stats

    def _gather_mask(self, owned: torch.Tensor) -> torch.Tensor:
        """bool ``[N]`` from every rank's ``owned`` rows (all-gather of packed bits)."""
        rows = owned_rows(self.num_samples, 0, self.world)  # rank 0 owns the most
        nbytes = (rows + 7) // 8
        gathered = torch.empty(self.world * nbytes, dtype=torch.uint8, device=self.device)
        _all_gather(gathered, pack_bits(owned, nbytes))
        bits = unpack_bits(gathered).view(self.world, nbytes * 8)[:, :rows]
        return interleave(bits, self.num_samples)

    # ---- checkpoints ------------------------------------------------------------------
    def _owned(self, per_sample: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a ``[N, ...]`` tensor."""
        return per_sample[self.rank::self.world]

    def state_dict(self) -> dict:
        """This rank's shard: the replicated layout with only this rank's rows of
        ``hist``, ``count``, ``mastered`` and ``replay`` (samples ``rank::world``), and
        ``state["shard"] = {"rank", "world"}``. With one rank it is the whole state."""
        state = super().state_dict()
        state["mastered"] = self.owned_mastered.clone()
        if state["replay"].numel():
            state["replay"] = self._owned(state["replay"]).clone()
        state["shard"] = {"rank": self.rank, "world": self.world}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a whole state (``IES.state_dict()`` of a replicated selector, a shard
        saved on one rank, or shards joined by :func:`ies_fast.io.selector_shards.join_shards`);
        this rank keeps its rows. Checked whole first; a bad state changes nothing."""
        shard = state.get("shard", {"rank": 0, "world": 1}) if isinstance(state, dict) else None
        if shard != {"rank": 0, "world": 1}:
            raise ValueError(f"state_dict['shard'] is {shard!r}: load one rank's shard through "
                             "ies_fast.io.selector_shards.load_selector (it joins every shard first)")
        self._apply_state(self._checked_state(state))

    def _apply_state(self, values: dict) -> None:
        """Keep this rank's rows of the ring; the global mask and replay stay whole."""
        values = dict(values, hist=self._owned(values["hist"]), count=self._owned(values["count"]))
        super()._apply_state(values)
        if self.owned_mastered is not self.mastered:
            self.owned_mastered.copy_(self._owned(self.mastered))
        self._queued = []

    def to(self, device) -> "ShardedIES":
        alias = self.owned_mastered is self.mastered
        super().to(device)
        self.owned_mastered = self.mastered if alias else self.owned_mastered.to(self.device)
        self._queued = [(loss.to(self.device), index.to(self.device)) for loss, index in self._queued]
        return self

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", shard_state=True, rank={self.rank}, world={self.world})"

