"""IES with its per-sample state sharded by sample across ranks
(``make_selector("ies", ..., shard_state=True)``).

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
this rank made, about ``8·N / W``); ``step()`` sends them in rounds of at most 2^20
observations per rank, so its send and receive buffers stay near 8 MB each however
large the epoch; against ``N·(4·L + 2)`` replicated.

Limits (``ValueError`` at construction): one exit, ``score_policy="every"``, ``threshold="absolute"``.
Checkpoints: :meth:`ShardedIES.state_dict` is this rank's shard (``state["shard"]``);
:meth:`ShardedIES.load_state_dict` takes a whole (replicated-layout) state, and
:mod:`ies_fast.io.selector_shards` assembles one from shards saved on any number of ranks.
:meth:`ShardedIES.full_state_dict` (collective) gathers the whole state on every rank,
for checkpoints that one rank writes (the Lightning and Hugging Face wrappers:
:func:`whole_state_dict`).
"""
from __future__ import annotations

import collections

import torch
import torch.distributed as dist

from ..ops import ring as ring_ops
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
    return (packed.unsqueeze(1) >> shifts).bitwise_and_(1).view(torch.bool).reshape(-1)  # 0/1 bytes are bools


def interleave(rows_by_rank: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``[num_samples, ...]`` from ``[W, R, ...]`` rows (rank ``r``'s row ``j`` is sample
    ``j·W + r``; rows past the end are padding)."""
    W, R = rows_by_rank.shape[:2]
    return rows_by_rank.transpose(0, 1).reshape(W * R, *rows_by_rank.shape[2:])[:num_samples]


#: rows of arrived pairs recorded at a time, of queued observations sorted by owner at a
#: time, and of queued observations one rank sends per exchange round (bound the
#: temporaries of step(); many small batches are joined up to these)
_RECORD_CHUNK = 1 << 20
_GROUP_ROWS = 1 << 18
_EXCHANGE_ROWS = 1 << 20


def _take(queued, rows: int) -> list:
    """About ``rows`` observations from the front of ``queued`` (a deque or list; removed
    from it; a batch that crosses the limit is split)."""
    part, size = [], 0
    while queued and size < rows:
        loss, index = queued[0]
        room = rows - size
        if index.numel() <= room:
            part.append(queued[0])
            del queued[0]  # O(1) on the deque step() passes
        else:
            part.append((loss[:room], index[:room]))
            queued[0] = (loss[room:], index[room:])
        size += part[-1][1].numel()
    return part


def _groups(queued: list, rows: int):
    """``(loss, index)`` of about ``rows`` queued observations at a time, emptying ``queued``
    (small batches joined; a batch larger than ``rows`` comes in pieces)."""
    queued.reverse()
    parts, size = [], 0
    while queued:
        loss, index = queued.pop()
        for start in range(0, index.numel(), rows):
            parts.append((loss[start:start + rows], index[start:start + rows]))
            size += parts[-1][1].numel()
            if size >= rows:
                yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
                parts, size = [], 0
    if parts:
        yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _all_gather(out: torch.Tensor, mine: torch.Tensor) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, mine)


def check_shardable(num_exits=1, score_policy="every", threshold="absolute") -> None:
    """``ValueError`` naming the IES argument that ``shard_state=True`` cannot take (the
    wrappers call it before the process group exists, :class:`ShardedIES` at construction)."""
    if num_exits != 1:
        raise ValueError(f"shard_state=True needs num_exits=1, got {num_exits!r}")
    if score_policy != "every":
        raise ValueError(f"shard_state=True needs score_policy='every', got {score_policy!r}")
    if threshold != "absolute":
        raise ValueError(f"shard_state=True needs threshold='absolute' (a relative one would need every "
                         f"rank's losses), got {threshold!r}")


def whole_state_dict(selector) -> dict:
    """``selector``'s whole (replicated-layout) state: ``full_state_dict()`` of a
    :class:`ShardedIES` (collective: every rank calls it), else ``state_dict()``. What a
    checkpoint written by one rank holds."""
    return selector.full_state_dict() if getattr(selector, "_shards_state", False) else selector.state_dict()


class ShardedIES(IES):
    """:class:`ies_fast.IES` whose ring, counts and decisions are held by their owner rank
    (see the module docstring). Built by ``make_selector("ies", ..., shard_state=True)``
    (or directly); the rank and world size are those of the process group at construction.
    Its ``state_dict()`` is this rank's shard: save and load it with
    :mod:`ies_fast.io.selector_shards`; :meth:`full_state_dict` is the whole state,
    for a checkpoint that one rank writes."""

    _shards_state = True

    def __init__(self, num_samples: int, *args, shard_state: bool = True, **kwargs):
        if shard_state is not True:
            raise ValueError(f"ShardedIES shards its state: shard_state must be True, got {shard_state!r}")
        self.rank, self.world = process_group_shape(kwargs.get("distributed", True))
        super().__init__(num_samples, *args, **kwargs)
        check_shardable(self.num_exits, self.scoring_schedule.policy, self.threshold)
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
        self._queued.append((loss, index.to(self._index_dtype)))  # 8 bytes per observation while N < 2^31

    @property
    def _index_dtype(self) -> torch.dtype:
        return torch.int32 if self.num_samples < 2**31 else torch.int64

    def ring(self):
        return None  # queued, not written in place

    def _merge_ranks(self) -> None:
        """Send each queued ``(index, loss)`` to its owner and record what arrives: in
        rounds of at most ``_EXCHANGE_ROWS`` observations per rank (every rank takes part
        in as many rounds as the rank with the most), each one all-to-all of the per-rank
        counts and one of 8-byte pairs. Recording is a max, so the rounds do not change
        the result."""
        if self.world == 1:
            return
        self._send_queued()
        counters = torch.cat([self._pending_scored, self._deferred_errors])
        dist.all_reduce(counters, op=dist.ReduceOp.SUM)
        self._pending_scored.copy_(counters[:1])
        self._deferred_errors.copy_(counters[1:])

    def _send_queued(self) -> None:
        """Every rank's queued observations to their owners, recorded there (collective)."""
        queued, self._queued = collections.deque(self._queued), []
        mine = sum(index.numel() for _, index in queued)
        rounds = torch.tensor([-(-mine // _EXCHANGE_ROWS)], dtype=torch.int64, device=self.device)
        dist.all_reduce(rounds, op=dist.ReduceOp.MAX)
        for _ in range(int(rounds)):
            self._exchange(_take(queued, _EXCHANGE_ROWS))

    def _exchange(self, part: list) -> None:
        """One round: ``part``'s observations to their owners, recorded there."""
        pairs, send = self._pairs_by_owner(part)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send)
        send_sizes, recv_sizes = send.tolist(), recv.tolist()
        arrived = torch.empty(sum(recv_sizes), 2, dtype=torch.int32, device=self.device)
        dist.all_to_all_single(arrived, pairs, recv_sizes, send_sizes)
        del pairs
        op = self.kernel_backend
        for chunk in arrived.split(_RECORD_CHUNK):  # bounded temporaries
            ring_ops.record(op, self.hist, self.count, chunk[:, 1].contiguous().view(torch.float32), chunk[:, 0].long())

    def _pairs_by_owner(self, queued: list) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pairs, counts)``: the ``(loss, index)`` observations of ``queued`` as int32
        ``[n, 2]`` rows ``(owner's row, loss bits)`` grouped by owner rank, and int64
        ``[W]`` rows per owner. Built a queued batch at a time into one buffer (rows with
        a negative index, dropped on CUDA by ``check_index``, are left out); empties
        ``queued``."""
        W = self.world
        counts = torch.zeros(W, dtype=torch.int64, device=self.device)
        for _, index in queued:
            counts += torch.bincount(index[index >= 0].long() % W, minlength=W)
        pairs = torch.empty(int(counts.sum()), 2, dtype=torch.int32, device=self.device)
        fill = torch.cumsum(counts, 0) - counts  # next free row of each owner's block
        for loss, index in _groups(queued, _GROUP_ROWS):
            keep = index >= 0
            loss, index = loss[keep], index[keep].long()
            owner = index % W
            order = torch.argsort(owner, stable=True)
            owner = owner[order]
            per_owner = torch.bincount(owner, minlength=W)
            first = torch.cumsum(per_owner, 0) - per_owner
            row = fill[owner] + torch.arange(owner.numel(), device=self.device) - first[owner]
            pairs[row, 0] = (index[order] // W).to(torch.int32)
            pairs[row, 1] = loss[order].view(torch.int32)
            fill += per_owner
        return pairs, counts

    # ---- the decision -----------------------------------------------------------------
    def _close_epoch(self) -> torch.Tensor:
        """Decide this rank's rows, sum the statistics over ranks and rebuild the global
        mask from the ranks' bitmasks."""
        stats = ring_ops.close_epoch(
            self.kernel_backend, self.hist, self.count, self.owned_mastered,
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
        bits = unpack_bits(gathered)
        del gathered
        return interleave(bits.view(self.world, nbytes * 8)[:, :rows], self.num_samples)

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

    def full_state_dict(self) -> dict:
        """The whole state, bit for bit the ``state_dict()`` of a replicated :class:`IES`
        fed the same observations, on every rank (collective: every rank calls it; after
        :meth:`step`, like any checkpoint). The mastered and replay masks are whole on
        every rank already; the ring and counts (this rank's rows) are all-gathered, as
        ``4·L + 1`` bytes per row padded to rank 0's row count, and interleaved. Needs
        ``N·(4·L + 1)`` bytes for a moment (one replicated ring). Inside an epoch the
        queued observations are sent to their owners first, so the state holds every
        rank's observations so far (a replicated selector's holds its own rank's)."""
        if self.world == 1:
            return super().state_dict()
        self._send_queued()
        state = super().state_dict()
        rows, L = owned_rows(self.num_samples, 0, self.world), self.history_length
        mine = torch.zeros(rows, 4 * L + 1, dtype=torch.uint8, device=self.device)
        mine[: self.hist.shape[0], : 4 * L] = self.hist.view(torch.uint8)  # the float bits, unchanged
        mine[: self.count.shape[0], 4 * L] = self.count
        gathered = torch.empty(self.world * rows, 4 * L + 1, dtype=torch.uint8, device=self.device)
        _all_gather(gathered, mine)
        whole = interleave(gathered.view(self.world, rows, 4 * L + 1), self.num_samples)
        del gathered
        state["hist"] = whole[:, : 4 * L].contiguous().view(torch.float32)
        state["count"] = whole[:, 4 * L].contiguous()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a whole state (``IES.state_dict()`` of a replicated selector, a shard
        saved on one rank, or shards joined by :func:`ies_fast.io.selector_shards.join_shards`);
        this rank keeps its rows. Checked whole first; a bad state changes nothing."""
        shard = state.get("shard", {"rank": 0, "world": 1}) if isinstance(state, dict) else None
        if shard != {"rank": 0, "world": 1}:
            raise ValueError(f"state_dict['shard'] is {shard!r}: load one rank's shard through "
                             "ies_fast.io.selector_shards.load_selector (it joins every shard first)")
        self.apply_state(self.check_state(state))

    def apply_state(self, values: dict) -> None:
        """Keep this rank's rows of the ring; the global mask and replay stay whole."""
        values = dict(values, hist=self._owned(values["hist"]), count=self._owned(values["count"]))
        super().apply_state(values)
        if self.owned_mastered is not self.mastered:
            self.owned_mastered.copy_(self._owned(self.mastered))
        self._queued = []

    def to(self, device) -> "ShardedIES":
        alias = self.owned_mastered is self.mastered
        super().to(device)  # moves every tensor attribute
        if alias:
            self.owned_mastered = self.mastered
        self._queued = [(loss.to(self.device), index.to(self.device)) for loss, index in self._queued]
        return self

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", shard_state=True, rank={self.rank}, world={self.world})"

