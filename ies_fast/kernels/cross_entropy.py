"""Fused per-sample cross-entropy + ring-buffer write, in Triton.

One forward pass over the logits computes each row's loss with an online softmax
(running max and running sum over column blocks, fp32 accumulation, so any class
count works) and, when a selector's ring is given, max-reduces the row's loss into
its sample's current-epoch slot in the same pass. The backward pass recomputes the
softmax from the saved logits and the per-row ``(max, log-sum)`` pair; see
``docs/kernels.md`` for why the gradient is recomputed rather than produced in the
forward pass.

Semantics are those of ``F.cross_entropy(logits.float(), target, reduction="none",
ignore_index=..., label_smoothing=...)`` followed by
:func:`ies_fast.ops.cross_entropy.reduce_losses`.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..ops.cross_entropy import cross_entropy_grad_torch, reduce_losses

#: most columns one program loads at a time (larger rows loop over blocks)
MAX_BLOCK_C = 8192
#: elements per program tile (rows x columns) for small class counts
TILE = 2048
#: try to launch at least this many programs before packing rows together
MIN_PROGRAMS = 264

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _ce_forward_kernel(
    logits_ptr,
    stride_row,
    target_ptr,
    loss_ptr,
    max_ptr,
    logsum_ptr,
    hist_ptr,
    count_ptr,
    index_ptr,
    B,
    C,
    ignore_index,
    eps,
    L: tl.constexpr,
    HAS_RING: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    SAVE_STATS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Loss of BLOCK_B rows (fp32); optionally their (max, log-sum) and a ring write."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    t = tl.load(target_ptr + rows, mask=row_ok, other=ignore_index)
    active = row_ok & (t != ignore_index)
    base = logits_ptr + rows[:, None] * stride_row

    m = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    d = tl.zeros((BLOCK_B,), tl.float32)
    sx = tl.zeros((BLOCK_B,), tl.float32)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        msk = active[:, None] & (cols[None, :] < C)
        x = tl.load(base + cols[None, :], mask=msk, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=1))
        # rows with nothing loaded (ignored) keep m = -inf: shift by 0 to avoid inf - inf
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        d = d * tl.exp(m - shift) + tl.sum(tl.exp(x - shift[:, None]), axis=1)
        if HAS_SMOOTHING:
            sx += tl.sum(tl.where(msk, x, 0.0), axis=1)
        m = m_new

    t_safe = tl.where(active, t, 0)
    xt = tl.load(logits_ptr + rows * stride_row + t_safe, mask=active, other=0.0).to(tl.float32)
    log_d = tl.log(tl.where(active, d, 1.0))
    if HAS_SMOOTHING:
        # (1 - eps) * (lse - x_t) + eps * (lse - mean_j x_j), with lse = m + log d
        loss = log_d + (1.0 - eps) * (m - xt) + eps * (m - sx / C)
    else:
        loss = log_d + (m - xt)
    loss = tl.where(active, loss, 0.0)
    tl.store(loss_ptr + rows, loss, mask=row_ok)
    if SAVE_STATS:
        tl.store(max_ptr + rows, m, mask=row_ok)
        tl.store(logsum_ptr + rows, log_d, mask=row_ok)
    if HAS_RING:
        idx = tl.load(index_ptr + rows, mask=row_ok, other=-1)
        rec = row_ok & (idx >= 0)
        idx = tl.where(rec, idx, 0)
        slot = tl.load(count_ptr + idx, mask=rec, other=0).to(tl.int32) % L
        finite = (loss == loss) & (tl.abs(loss) < float("inf"))
        value = tl.where(finite, loss, float("inf"))
        tl.atomic_max(hist_ptr + idx * L + slot, value, mask=rec)


@triton.jit
def _ce_backward_kernel(
    logits_ptr,
    stride_row,
    grad_ptr,
    target_ptr,
    max_ptr,
    logsum_ptr,
    gout_ptr,
    gout_stride,
    B,
    C,
    ignore_index,
    eps,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """grad = (softmax - (1 - eps) * onehot(t) - eps / C) * dloss, zero on ignored rows."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    t = tl.load(target_ptr + rows, mask=row_ok, other=ignore_index)
    active = row_ok & (t != ignore_index)
    g = tl.load(gout_ptr + rows * gout_stride, mask=active, other=0.0).to(tl.float32)
    m = tl.load(max_ptr + rows, mask=active, other=0.0)
    log_d = tl.load(logsum_ptr + rows, mask=active, other=0.0)
    base = logits_ptr + rows[:, None] * stride_row
    out = grad_ptr + rows[:, None] * C
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        in_c = cols[None, :] < C
        x = tl.load(base + cols[None, :], mask=active[:, None] & in_c, other=float("-inf")).to(tl.float32)
        p = tl.exp((x - m[:, None]) - log_d[:, None])
        grad = p - eps / C - tl.where(cols[None, :] == t[:, None], 1.0 - eps, 0.0)
        grad = tl.where(active[:, None], grad * g[:, None], 0.0)
        tl.store(out + cols[None, :], grad.to(grad_ptr.dtype.element_ty), mask=row_ok[:, None] & in_c)


def _blocks(B: int, C: int, block_c: Optional[int], block_b: Optional[int]) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_C, num_warps): whole rows in one block up to MAX_BLOCK_C columns;
    several rows per program for small C, but not so many that the grid gets small."""
    bc = block_c or min(triton.next_power_of_2(max(C, 1)), MAX_BLOCK_C)
    if block_b is None:
        bb = max(1, min(TILE // bc, 128))
        while bb > 1 and triton.cdiv(B, bb) < MIN_PROGRAMS:
            bb //= 2
    else:
        bb = block_b
    for name, v in (("block_c", bc), ("block_b", bb)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two >= 1, got {v}")
    tile = bb * bc
    num_warps = max(1, min(8, tile // 512))  # about 4+ elements per thread per load
    return bb, bc, num_warps


def _forward(logits, target, ignore_index, eps, ring, save_stats, block_c, block_b):
    B, C = logits.shape
    dev = logits.device
    losses = torch.empty(B, dtype=torch.float32, device=dev)
    if save_stats:
        row_max = torch.empty(B, dtype=torch.float32, device=dev)
        row_logsum = torch.empty(B, dtype=torch.float32, device=dev)
    else:  # never written (SAVE_STATS=False); any valid pointer will do
        row_max = row_logsum = losses
    if B == 0:
        return losses, row_max, row_logsum
    if ring is None:
        hist, count, index, L = losses, target, target, 1  # unused pointers
    else:
        hist, count, index = ring
        L = hist.shape[1]
    bb, bc, warps = _blocks(B, C, block_c, block_b)
    _ce_forward_kernel[(triton.cdiv(B, bb),)](
        logits, logits.stride(0), target, losses, row_max, row_logsum, hist, count, index,
        B, C, ignore_index, eps,
        L=L, HAS_RING=ring is not None, HAS_SMOOTHING=eps > 0.0, SAVE_STATS=save_stats,
        BLOCK_B=bb, BLOCK_C=bc, num_warps=warps,
    )
    return losses, row_max, row_logsum


class FusedCrossEntropyFunction(torch.autograd.Function):
    """Per-row fp32 losses ``[B]``; backward recomputes the softmax from the saved
    logits and per-row statistics (no ``[B, C]`` buffer is written in forward)."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index, eps, ring, block_c, block_b):
        # ``ring`` is passed as one plain tuple so autograd does not treat the ring
        # state (written in place by the kernel, never differentiated) as an input
        losses, row_max, row_logsum = _forward(logits, target, ignore_index, eps, ring, True, block_c, block_b)
        ctx.save_for_backward(logits, target, row_max, row_logsum)
        ctx.args = (ignore_index, eps, block_c, block_b)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        logits, target, row_max, row_logsum = ctx.saved_tensors
        ignore_index, eps, block_c, block_b = ctx.args
        if torch.is_grad_enabled():
            # create_graph=True (a gradient penalty, a Hessian-vector product): the
            # kernel builds no graph, so the gradient is formed from torch ops instead
            grad = cross_entropy_grad_torch(logits, target, grad_losses, ignore_index, eps)
            return grad, None, None, None, None, None, None
        B, C = logits.shape
        grad = torch.empty((B, C), dtype=logits.dtype, device=logits.device)
        if B:
            g = grad_losses.float()
            bb, bc, warps = _blocks(B, C, block_c, block_b)
            _ce_backward_kernel[(triton.cdiv(B, bb),)](
                logits, logits.stride(0), grad, target, row_max, row_logsum, g, g.stride(0),
                B, C, ignore_index, eps, BLOCK_B=bb, BLOCK_C=bc, num_warps=warps,
            )
        return grad, None, None, None, None, None, None


def _check_ring(ring, B: int, device: torch.device):
    if not (isinstance(ring, (tuple, list)) and len(ring) == 3):
        raise ValueError("ring must be None or a (hist, count, index) tuple")
    hist, count, index = ring
    if not isinstance(hist, torch.Tensor) or hist.dtype != torch.float32 or hist.dim() != 2 or not hist.is_contiguous():
        raise ValueError("ring hist must be a contiguous float32 [S, L] tensor")
    if not isinstance(count, torch.Tensor) or count.dtype != torch.uint8 or tuple(count.shape) != (hist.shape[0],):
        raise ValueError(f"ring count must be a uint8 tensor of shape ({hist.shape[0]},)")
    if not isinstance(index, torch.Tensor) or index.dtype != torch.int64 or tuple(index.shape) != (B,):
        raise ValueError(f"ring index must be an int64 tensor of shape ({B},)")
    for name, t in (("hist", hist), ("count", count), ("index", index)):
        if t.device != device:
            raise ValueError(f"ring {name} is on {t.device} but logits on {device}")
    return hist, count.contiguous(), index.contiguous()


def row_losses(logits, target, ignore_index: int, eps: float, ring=None, block_c=None, block_b=None) -> torch.Tensor:
    """fp32 per-row losses ``[B]`` of ``logits`` [B, C] (unit column stride) against
    int64 ``target`` [B], plus the optional ring write; differentiable w.r.t. the
    logits when grad is enabled (nothing saved otherwise). Arguments are trusted:
    :func:`fused_cross_entropy` and ``ies_fast.cross_entropy`` check them."""
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if ring is not None:
        ring = _check_ring(ring, logits.shape[0], logits.device)
    if torch.is_grad_enabled() and logits.requires_grad:
        return FusedCrossEntropyFunction.apply(logits, target.contiguous(), ignore_index, eps, ring, block_c, block_b)
    return _forward(logits, target.contiguous(), ignore_index, eps, ring, False, block_c, block_b)[0]


def fused_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    sample_weight: Optional[torch.Tensor] = None,
    ring=None,
    block_c: Optional[int] = None,
    block_b: Optional[int] = None,
) -> torch.Tensor:
    """Cross-entropy of ``logits`` [B, C] (fp32/bf16/fp16) against class indices
    ``target`` [B], differentiable w.r.t. ``logits``; result in ``logits.dtype``.

    ``ring=(hist, count, index)`` also max-reduces each row's fp32 loss into
    ``hist[index, count[index] % L]`` (rows with ``index < 0`` skipped, non-finite
    losses written as ``+inf``) in the same kernel pass. Without grad (``no_grad``
    or logits that do not require grad) nothing is saved for a backward pass.
    ``block_c`` / ``block_b`` override the tile (powers of two; tests use tiny ones).
    No host synchronisation.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("logits must be a 2-D tensor [batch, classes]")
    if logits.dtype not in _DTYPES:
        raise TypeError(f"logits must be float32, bfloat16 or float16 for the Triton path, got {logits.dtype}")
    if not isinstance(target, torch.Tensor) or tuple(target.shape) != (logits.shape[0],):
        raise ValueError(f"target must be a 1-D tensor of shape ({logits.shape[0]},)")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    target = target.to(torch.int64)
    losses = row_losses(logits, target, int(ignore_index), eps, ring, block_c, block_b)
    valid = target != ignore_index
    return reduce_losses(losses, valid, reduction, sample_weight, logits.dtype)
