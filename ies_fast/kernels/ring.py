"""Ring-buffer record and end-of-epoch Δ^N test, in Triton.

Same state layout and semantics as :mod:`ies_fast.ops.ring` (the plain-torch
reference): ``hist`` fp32 ``[S, L]``, ``count`` uint8 ``[S]`` in ``[0, 2L)``,
``mastered`` bool ``[S]``; slot ``count % L`` is the current epoch's (``-inf``
until observed, ``+inf`` after a non-finite loss).

* :func:`record_triton`: atomic max of each loss into its sample's current slot.
* :func:`close_epoch_triton`: one kernel over samples that folds in the epoch,
  recomputes ``mastered`` and resets the next slot, reading each ring row once;
  per-block partial statistics are summed by one small torch reduction.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops.ring import EPOCH_STATS

#: samples per program in both kernels
BLOCK = 1024
_NSTATS = len(EPOCH_STATS)


@triton.jit
def _record_kernel(hist_ptr, count_ptr, loss_ptr, index_ptr, B, L: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < B
    idx = tl.load(index_ptr + offs, mask=ok, other=-1)
    rec = ok & (idx >= 0)
    idx = tl.where(rec, idx, 0)
    slot = tl.load(count_ptr + idx, mask=rec, other=0).to(tl.int32) % L
    v = tl.load(loss_ptr + offs, mask=rec, other=0.0)
    finite = (v == v) & (tl.abs(v) < float("inf"))
    v = tl.where(finite, v, float("inf"))
    tl.atomic_max(hist_ptr + idx * L + slot, v, mask=rec)


@triton.jit
def _chron(row, n, k, L: tl.constexpr, mask):
    """The k-th oldest of the last L losses of a ring whose next write slot is n % L."""
    return tl.load(row + (n + k) % L, mask=mask, other=0.0)


@triton.jit
def _close_epoch_kernel(
    hist_ptr,
    count_ptr,
    mastered_ptr,
    partial_ptr,
    S,
    delta,
    L: tl.constexpr,
    ORDER: tl.constexpr,
    NSTATS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < S
    c = tl.load(count_ptr + offs, mask=ok, other=0).to(tl.int32)
    row = hist_ptr + offs * L
    current = tl.load(row + c % L, mask=ok, other=float("-inf"))
    observed = ok & (current > float("-inf"))
    nonfinite = ok & (current == float("inf"))
    finite = observed & (current < float("inf"))

    n = c + finite.to(tl.int32)
    n = tl.where(n >= 2 * L, n - L, n)
    n = tl.where(nonfinite, 0, n)
    eligible = ok & (n >= L)

    # mean |Δ^ORDER| over the window, evaluated as iterated differences (the same
    # fp32 operations, in the same order, as ies_fast.ops.ring.difference_score)
    score = tl.zeros((BLOCK,), tl.float32)
    for w in tl.static_range(L - ORDER):  # inline: a local would turn into a tensor
        x0 = _chron(row, n, w, L, eligible)
        if ORDER == 0:
            dlt = x0
        else:
            x1 = _chron(row, n, w + 1, L, eligible)
            if ORDER == 1:
                dlt = x1 - x0
            else:
                x2 = _chron(row, n, w + 2, L, eligible)
                if ORDER == 2:
                    dlt = (x2 - x1) - (x1 - x0)
                else:
                    x3 = _chron(row, n, w + 3, L, eligible)
                    dlt = ((x3 - x2) - (x2 - x1)) - ((x2 - x1) - (x1 - x0))
        score += tl.abs(dlt)
    score = tl.div_rn(score, tl.full((BLOCK,), L - ORDER, tl.float32))  # IEEE, as torch.mean on CPU
    passed = eligible & (score < delta)

    was = ok & (tl.load(mastered_ptr + offs, mask=ok, other=0) != 0)
    now = tl.where(finite, passed, was & ~nonfinite)

    tl.store(count_ptr + offs, n.to(tl.uint8), mask=ok)
    tl.store(mastered_ptr + offs, now.to(tl.uint8), mask=ok)
    tl.store(row + n % L, tl.full((BLOCK,), float("-inf"), tl.float32), mask=ok)

    out = partial_ptr + pid * NSTATS
    tl.store(out + 0, tl.sum(observed.to(tl.int32), axis=0))
    tl.store(out + 1, tl.sum(nonfinite.to(tl.int32), axis=0))
    tl.store(out + 2, tl.sum(now.to(tl.int32), axis=0))
    tl.store(out + 3, tl.sum((was & ~now).to(tl.int32), axis=0))
    tl.store(out + 4, tl.sum((~was & now).to(tl.int32), axis=0))
    tl.store(out + 5, tl.sum(eligible.to(tl.int32), axis=0))


def _check_state(hist: torch.Tensor, count: torch.Tensor) -> None:
    if not isinstance(hist, torch.Tensor) or hist.dtype != torch.float32 or hist.dim() != 2 or not hist.is_contiguous():
        raise ValueError("hist must be a contiguous float32 [S, L] tensor")
    if (
        not isinstance(count, torch.Tensor)
        or count.dtype != torch.uint8
        or tuple(count.shape) != (hist.shape[0],)
        or not count.is_contiguous()
    ):
        raise ValueError(f"count must be a contiguous uint8 tensor of shape ({hist.shape[0]},)")
    if count.device != hist.device:
        raise ValueError(f"count is on {count.device} but hist on {hist.device}")


def record_triton(hist: torch.Tensor, count: torch.Tensor, loss: torch.Tensor, index: torch.Tensor, *, block: int = 0) -> None:
    """Max-reduce ``loss`` [B] into ``hist[index, count[index] % L]`` (atomic max).
    Rows with ``index < 0`` are skipped; non-finite losses are written as ``+inf``.
    No host synchronisation."""
    _check_state(hist, count)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 1:
        raise ValueError("loss must be a 1-D tensor [B]")
    if not isinstance(index, torch.Tensor) or tuple(index.shape) != tuple(loss.shape):
        raise ValueError(f"index must have the shape of loss {tuple(loss.shape)}")
    B = loss.numel()
    if B == 0:
        return
    value = loss.detach().to(device=hist.device, dtype=torch.float32).contiguous()
    index = index.to(device=hist.device, dtype=torch.int64).contiguous()
    blk = block or BLOCK
    _record_kernel[(triton.cdiv(B, blk),)](hist, count, value, index, B, L=hist.shape[1], BLOCK=blk)


def close_epoch_triton(
    hist: torch.Tensor, count: torch.Tensor, mastered: torch.Tensor, order: int, delta: float, *, block: int = 0
) -> torch.Tensor:
    """Fold the epoch's observations into the ring and recompute ``mastered`` in place,
    exactly as :func:`ies_fast.ops.ring.close_epoch_torch`. Returns the int64
    :data:`~ies_fast.ops.ring.EPOCH_STATS` vector on device (no host sync)."""
    _check_state(hist, count)
    S, L = hist.shape
    if not isinstance(mastered, torch.Tensor) or mastered.dtype != torch.bool or tuple(mastered.shape) != (S,):
        raise ValueError(f"mastered must be a bool tensor of shape ({S},)")
    if not mastered.is_contiguous():
        raise ValueError("mastered must be contiguous (it is updated in place)")
    if order not in (0, 1, 2, 3) or L <= order:
        raise ValueError(f"order must be in 0..3 and below the ring length {L}, got {order!r}")
    blk = block or BLOCK
    grid = triton.cdiv(S, blk)
    partial = torch.empty((grid, _NSTATS), dtype=torch.int32, device=hist.device)
    if S:
        _close_epoch_kernel[(grid,)](
            hist, count, mastered.view(torch.uint8), partial, S, float(delta),
            L=L, ORDER=order, NSTATS=_NSTATS, BLOCK=blk,
        )
    return partial.sum(0, dtype=torch.int64)
