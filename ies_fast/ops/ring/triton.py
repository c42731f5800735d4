"""Ring-buffer record and end-of-epoch Δ^N test, in Triton.

Same state layout and semantics as :mod:`ies_fast.ops.ring.reference` (the plain-torch
reference): ``hist`` fp32 ``[S, L]``, ``count`` uint8 ``[S]`` in ``[0, 2L)``,
``mastered`` bool ``[S]``; slot ``count % L`` is the current epoch's (``-inf``
until observed, ``+inf`` after a non-finite loss).

* :func:`record_triton`: atomic max of each loss into its sample's current slot.
* :func:`close_epoch_triton`: one kernel over samples that folds in the epoch,
  recomputes ``mastered`` (the decision arithmetic of :mod:`ies_fast.selectors.rule`,
  bit for bit) and resets the next slot, reading the used losses once per window;
  per-block partial statistics are summed by one small torch reduction.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...checks import check_int
from .reference import EPOCH_STATS

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
def _sliding_difference(x, p0, p1, p2, ORDER: tl.constexpr):
    """One step of the sliding Δ: (p0, p1, p2) are the previous loss and its first and
    second differences; returns Δ^ORDER ending at ``x`` and the new (p0, p1, p2)."""
    d1 = x - p0
    d2 = d1 - p1
    d3 = d2 - p2
    if ORDER == 0:
        dn = x
    elif ORDER == 1:
        dn = d1
    elif ORDER == 2:
        dn = d2
    else:
        dn = d3
    return dn, x, d1, d2


@triton.jit
def _window_sum(row, first, L: tl.constexpr, ORDER: tl.constexpr, WINDOW: tl.constexpr, mask):
    """|Δ^ORDER| summed left to right over the ORDER + WINDOW losses from ring slot
    ``first`` on (the first ORDER only prime the differences). Δ^ORDER is a sliding
    combination, so no per-sample array is kept, and the window loop is a real loop
    (``range``), not unrolled: registers do not grow with the ring length."""
    p0 = tl.zeros(first.shape, tl.float32)
    p1 = p0
    p2 = p0
    slot = first
    for t in tl.static_range(ORDER):
        x = tl.load(row + slot, mask=mask, other=0.0)
        _, p0, p1, p2 = _sliding_difference(x, p0, p1, p2, ORDER)
        slot = tl.where(slot == L - 1, 0, slot + 1)
    s = tl.zeros(first.shape, tl.float32)
    for t in range(WINDOW):
        x = tl.load(row + slot, mask=mask, other=0.0)
        dn, p0, p1, p2 = _sliding_difference(x, p0, p1, p2, ORDER)
        s += tl.abs(dn)
        slot = tl.where(slot == L - 1, 0, slot + 1)
    return s


@triton.jit
def _close_epoch_kernel(
    hist_ptr,
    count_ptr,
    mastered_ptr,
    partial_ptr,
    S,
    threshold,
    L: tl.constexpr,
    ORDER: tl.constexpr,
    WINDOW: tl.constexpr,
    K: tl.constexpr,
    NSTATS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < S
    c = tl.load(count_ptr + offs, mask=ok, other=0).to(tl.int32)
    row = hist_ptr + offs * L
    current = tl.load(row + tl.where(c < L, c, c - L), mask=ok, other=float("-inf"))
    observed = ok & (current > float("-inf"))
    nonfinite = ok & (current == float("inf"))
    finite = observed & (current < float("inf"))

    n = c + finite.to(tl.int32)
    n = tl.where(n >= 2 * L, n - L, n)
    n = tl.where(nonfinite, 0, n)
    eligible = ok & (n >= L)
    next_slot = tl.where(n < L, n, n - L)  # the oldest loss, and the next write

    # the decision arithmetic of ies_fast.selectors.rule: T = W_0 + ... + W_{K-1} < threshold
    first = next_slot + (L - (ORDER + WINDOW + K - 1))  # skip 1 loss under eligibility="official"
    first = tl.where(first >= L, first - L, first)
    total = tl.zeros((BLOCK,), tl.float32)
    for j in range(K):
        total += _window_sum(row, first, L, ORDER, WINDOW, eligible)
        first = tl.where(first == L - 1, 0, first + 1)
    passed = eligible & (total < threshold)

    was = ok & (tl.load(mastered_ptr + offs, mask=ok, other=0) != 0)
    now = tl.where(finite, passed, was & ~nonfinite)

    tl.store(count_ptr + offs, n.to(tl.uint8), mask=ok)
    tl.store(mastered_ptr + offs, now.to(tl.uint8), mask=ok)
    tl.store(row + next_slot, tl.full((BLOCK,), float("-inf"), tl.float32), mask=ok)

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


def close_epoch_triton(hist: torch.Tensor, count: torch.Tensor, mastered: torch.Tensor, order: int, window: int,
                       k: int, threshold: float, *, block: int = 0) -> torch.Tensor:
    """Fold the epoch's observations into the ring and recompute ``mastered`` in place,
    exactly as :func:`ies_fast.ops.ring.reference.close_epoch_torch` (``threshold`` is an fp32
    value, :func:`ies_fast.selectors.rule.decision_threshold`). Returns the int64
    :data:`~ies_fast.ops.ring.reference.EPOCH_STATS` vector on device (no host sync)."""
    _check_state(hist, count)
    S, L = hist.shape
    if not isinstance(mastered, torch.Tensor) or mastered.dtype != torch.bool or tuple(mastered.shape) != (S,):
        raise ValueError(f"mastered must be a bool tensor of shape ({S},)")
    if not mastered.is_contiguous():
        raise ValueError("mastered must be contiguous (it is updated in place)")
    check_int("order", order, min=0, max=3)
    if window < 1 or k < 1 or order + window + k - 1 > L:
        raise ValueError(f"window and k must be >= 1 with order + window + k - 1 <= L = {L}, got {window!r}, {k!r}")
    if not threshold >= 0 or float(torch.tensor(threshold, dtype=torch.float32)) != threshold:
        raise ValueError(f"threshold must be a non-negative fp32 value, got {threshold!r}")
    blk = block or BLOCK
    grid = triton.cdiv(S, blk)
    partial = torch.empty((grid, _NSTATS), dtype=torch.int32, device=hist.device)
    if S:
        _close_epoch_kernel[(grid,)](
            hist, count, mastered.view(torch.uint8), partial, S, float(threshold),
            L=L, ORDER=order, WINDOW=window, K=k, NSTATS=_NSTATS, BLOCK=blk,
        )
    return partial.sum(0, dtype=torch.int64)
