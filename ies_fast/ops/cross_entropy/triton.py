"""Fused per-row cross-entropy + the selector's per-sample record, in Triton.

One forward pass over the logits computes each row's loss with an online softmax
(running max and running sum over column blocks, fp32 accumulation, so any class
count works). Rows are read in place from ``[B, C]`` or ``[B, C, P]`` logits of
any strides (K-dim input, language-model logits). In the same pass, a selector's
ring gets each sample's loss (one row per sample: a direct atomic max into its
current-epoch slot) or each sample's sums for the segmented mean (many rows per
sample). The backward pass recomputes the softmax from the saved logits and the
per-row ``(max, log-sum)`` pair; see ``docs/kernels.md`` for why the gradient is
recomputed rather than produced in the forward pass.

Semantics are those of ``F.cross_entropy(logits.float(), target, weight=...,
reduction="none", ignore_index=..., label_smoothing=...)`` per row, with Liger's
optional soft-cap and z-loss (:func:`ies_fast.ops.cross_entropy.reference.position_losses_torch`
is the torch statement of the same thing).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .reference import position_losses_torch, reduce_losses

#: most columns one program loads at a time (larger rows loop over blocks)
MAX_BLOCK_C = 8192
#: elements per program tile (rows x columns) for small class counts
TILE = 2048
#: try to launch at least this many programs before packing rows together
MIN_PROGRAMS = 264

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: forward tiles (BLOCK_B, BLOCK_C) launched with more warps than :func:`_blocks` gives:
#: with every feature on (ring write, smoothing, saved stats) ptxas spills on sm_80 at
#: (64, 4) with 1 warp (8 B) and (32, 64) with 4 warps (16 B); tools/gpu_resources.py
#: gates it. The extra warps go along rows (checked in the TTGIR: a row's columns sit on
#: the same lanes and warps as before), so each row is reduced in the same order.
_FORWARD_WARPS = {(64, 4): 2, (32, 64): 8}


@triton.jit
def _capped(x, softcap, HAS_SOFTCAP: tl.constexpr):
    """``softcap * tanh(x / softcap)`` (tanh from exp: stable at both ends)."""
    if HAS_SOFTCAP:
        x = softcap * (2.0 / (1.0 + tl.exp(-2.0 * (x / softcap))) - 1.0)
    return x


@triton.jit
def _ce_forward_kernel(
    logits_ptr,
    stride_b,
    stride_p,
    stride_c,
    P,
    target_ptr,
    weight_ptr,
    wsum_ptr,
    loss_ptr,
    z_ptr,
    max_ptr,
    logsum_ptr,
    seg_ptr,
    hist_ptr,
    count_ptr,
    index_ptr,
    B,
    C,
    ignore_index,
    eps,
    z_scale,
    softcap,
    L: tl.constexpr,
    HAS_RING: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    SAVE_STATS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_SEGMENT: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Losses of BLOCK_B rows (fp32). Row ``r`` is position ``r % P`` of sample
    ``r // P``, its class ``c`` at ``b*stride_b + p*stride_p + c*stride_c`` (no copy
    of K-dim or [B, T, V] logits). Optionally: the rows' (max, log-sum), the
    per-sample sums (ce, divisor, z, valid) for the selector's segmented mean, and
    a direct ring write when each sample has one row."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    t = tl.load(target_ptr + rows, mask=row_ok, other=ignore_index)
    active = row_ok & (t != ignore_index)
    sample = rows // P
    base = logits_ptr + sample * stride_b + (rows - sample * P) * stride_p

    m = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    d = tl.zeros((BLOCK_B,), tl.float32)
    sx = tl.zeros((BLOCK_B,), tl.float32)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        msk = active[:, None] & (cols[None, :] < C)
        x = tl.load(base[:, None] + cols[None, :] * stride_c, mask=msk, other=0.0).to(tl.float32)
        x = tl.where(msk, _capped(x, softcap, HAS_SOFTCAP), float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=1))
        # rows with nothing loaded (ignored) keep m = -inf: shift by 0 to avoid inf - inf
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        d = d * tl.exp(m - shift) + tl.sum(tl.exp(x - shift[:, None]), axis=1)
        if HAS_SMOOTHING:
            if HAS_WEIGHT:
                wc = tl.load(weight_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
                sx += tl.sum(tl.where(msk, x * wc[None, :], 0.0), axis=1)
            else:
                sx += tl.sum(tl.where(msk, x, 0.0), axis=1)
        m = m_new

    t_safe = tl.where(active, t, 0)
    xt = tl.load(base + t_safe * stride_c, mask=active, other=0.0).to(tl.float32)
    xt = _capped(xt, softcap, HAS_SOFTCAP)
    log_d = tl.log(tl.where(active, d, 1.0))
    lse = m + log_d
    if HAS_WEIGHT:
        wt = tl.load(weight_ptr + t_safe, mask=active, other=0.0).to(tl.float32)
    else:
        wt = tl.where(active, 1.0, 0.0)
    # F.cross_entropy: (1 - eps) * w_t * (lse - x_t) + eps / C * sum_c w_c * (lse - x_c)
    if HAS_SMOOTHING:
        if HAS_WEIGHT:
            wsum = tl.load(wsum_ptr).to(tl.float32)
            loss = (1.0 - eps) * wt * (lse - xt) + eps / C * (lse * wsum - sx)
        else:
            loss = log_d + (1.0 - eps) * (m - xt) + eps * (m - sx / C)
    else:
        loss = wt * (log_d + (m - xt))
    loss = tl.where(active, loss, 0.0)
    tl.store(loss_ptr + rows, loss, mask=row_ok)
    z = tl.zeros((BLOCK_B,), tl.float32)
    if HAS_Z:
        z = tl.where(active, z_scale * lse * lse, 0.0)
        tl.store(z_ptr + rows, z, mask=row_ok)
    if SAVE_STATS:
        tl.store(max_ptr + rows, m, mask=row_ok)
        tl.store(logsum_ptr + rows, log_d, mask=row_ok)
    if HAS_SEGMENT:
        n_samples = (B + P - 1) // P
        tl.atomic_add(seg_ptr + sample, loss, mask=active)
        tl.atomic_add(seg_ptr + n_samples + sample, wt, mask=active)
        if HAS_Z:
            tl.atomic_add(seg_ptr + 2 * n_samples + sample, z, mask=active)
            tl.atomic_add(seg_ptr + 3 * n_samples + sample, tl.where(active, 1.0, 0.0), mask=active)
    if HAS_RING:
        # one row per sample: the documented per-sample loss is ce / w_t + z
        idx = tl.load(index_ptr + rows, mask=row_ok, other=-1)
        rec = active & (idx >= 0) & (wt > 0)
        idx = tl.where(rec, idx, 0)
        slot = tl.load(count_ptr + idx, mask=rec, other=0).to(tl.int32) % L
        value = loss / tl.where(rec, wt, 1.0) + z
        finite = (value == value) & (tl.abs(value) < float("inf"))
        value = tl.where(finite, value, float("inf"))
        tl.atomic_max(hist_ptr + idx * L + slot, value, mask=rec)


@triton.jit
def _ce_backward_kernel(
    logits_ptr,
    stride_b,
    stride_p,
    stride_c,
    P,
    grad_ptr,
    target_ptr,
    weight_ptr,
    wsum_ptr,
    max_ptr,
    logsum_ptr,
    gout_ptr,
    gz_ptr,
    B,
    C,
    ignore_index,
    eps,
    z_scale,
    softcap,
    HAS_WEIGHT: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """grad[r, c] = g_r * ((1 - eps) w_t (p_c - [c = t]) + eps / C (W p_c - w_c))
    + gz_r * 2 z_scale lse p_c, times the soft-cap's derivative; zero on ignored rows.
    ``grad`` is a contiguous [rows, C] buffer."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    t = tl.load(target_ptr + rows, mask=row_ok, other=ignore_index)
    active = row_ok & (t != ignore_index)
    g = tl.load(gout_ptr + rows, mask=active, other=0.0).to(tl.float32)
    m = tl.load(max_ptr + rows, mask=active, other=0.0)
    lse = m + tl.load(logsum_ptr + rows, mask=active, other=0.0)
    t_safe = tl.where(active, t, 0)
    if HAS_WEIGHT:
        wt = tl.load(weight_ptr + t_safe, mask=active, other=0.0).to(tl.float32)
        wsum = tl.load(wsum_ptr).to(tl.float32)
    else:
        wt = tl.full((BLOCK_B,), 1.0, tl.float32)
        wsum = C * 1.0
    gz = tl.zeros((BLOCK_B,), tl.float32)
    if HAS_Z:
        gz = tl.load(gz_ptr + rows, mask=active, other=0.0).to(tl.float32)
    sample = rows // P
    base = logits_ptr + sample * stride_b + (rows - sample * P) * stride_p
    out = grad_ptr + rows[:, None] * C
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        in_c = cols[None, :] < C
        ld = active[:, None] & in_c
        x = tl.load(base[:, None] + cols[None, :] * stride_c, mask=ld, other=0.0).to(tl.float32)
        xc = _capped(x, softcap, HAS_SOFTCAP)
        p = tl.where(ld, tl.exp(xc - lse[:, None]), 0.0)
        onehot = tl.where(cols[None, :] == t[:, None], 1.0, 0.0)
        if HAS_WEIGHT:
            wc = tl.load(weight_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
        else:
            wc = 1.0
        grad = (1.0 - eps) * wt[:, None] * (p - onehot) + (eps / C) * (wsum * p - wc)
        grad = grad * g[:, None]
        if HAS_Z:
            grad += (2.0 * z_scale) * (gz * lse)[:, None] * p
        if HAS_SOFTCAP:
            th = xc / softcap
            grad = grad * (1.0 - th * th)
        grad = tl.where(active[:, None], grad, 0.0)
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


class KernelOptions(NamedTuple):
    """What a launch computes besides plain cross-entropy (all validated by the caller)."""

    ignore_index: int = -100
    eps: float = 0.0
    weight: Optional[torch.Tensor] = None  # fp32 [C], contiguous
    z_scale: float = 0.0
    softcap: Optional[float] = None
    block_c: Optional[int] = None
    block_b: Optional[int] = None


def _layout(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(stride_b, stride_p, stride_c, P) of logits [B, C] or [B, C, P]: row ``b*P + p``."""
    if x.dim() == 2:
        return x.stride(0), 0, x.stride(1), 1
    return x.stride(0), x.stride(2), x.stride(1), x.shape[2]


def _forward(x, target, opt: KernelOptions, ring, segments, save_stats):
    """Launch the forward kernel: (ce [N], z [N] or None, row max, row log-sum)."""
    C = x.shape[1]
    N = target.numel()
    dev = x.device
    losses = torch.empty(N, dtype=torch.float32, device=dev)
    z = torch.empty(N, dtype=torch.float32, device=dev) if opt.z_scale else None
    if save_stats:
        row_max = torch.empty(N, dtype=torch.float32, device=dev)
        row_logsum = torch.empty(N, dtype=torch.float32, device=dev)
    else:  # never written (SAVE_STATS=False); any valid pointer will do
        row_max = row_logsum = losses
    if N == 0:
        return losses, z, row_max, row_logsum
    if ring is None:
        hist, count, index, L = losses, target, target, 1  # unused pointers
    else:
        hist, count, index = ring
        L = hist.shape[1]
    weight = opt.weight if opt.weight is not None else losses
    wsum = opt.weight.sum() if opt.weight is not None and opt.eps else losses
    sb, sp, sc, P = _layout(x)
    bb, bc, warps = _blocks(N, C, opt.block_c, opt.block_b)
    warps = _FORWARD_WARPS.get((bb, bc), warps)
    _ce_forward_kernel[(triton.cdiv(N, bb),)](
        x, sb, sp, sc, P, target, weight, wsum, losses, z if z is not None else losses, row_max, row_logsum,
        segments if segments is not None else losses, hist, count, index,
        N, C, opt.ignore_index, opt.eps, float(opt.z_scale), float(opt.softcap or 1.0),
        L=L, HAS_RING=ring is not None, HAS_SMOOTHING=opt.eps > 0.0, SAVE_STATS=save_stats,
        HAS_WEIGHT=opt.weight is not None, HAS_Z=bool(opt.z_scale), HAS_SOFTCAP=opt.softcap is not None,
        HAS_SEGMENT=segments is not None, BLOCK_B=bb, BLOCK_C=bc, num_warps=warps,
    )
    return losses, z, row_max, row_logsum


def _torch_rows(x, target, opt: KernelOptions):
    """The same per-row (ce, z) from torch ops: the backward used when autograd must
    build a graph of the gradient (create_graph=True: gradient penalties, Hessian-vector
    products), so second-order results are F.cross_entropy's."""
    t = target.view(x.shape[0], *x.shape[2:])
    pos = position_losses_torch(x.float(), t, opt.weight, opt.ignore_index, opt.eps, opt.z_scale, opt.softcap)
    return pos.ce.reshape(-1), (pos.z.reshape(-1) if pos.z is not None else None)


class FusedCrossEntropyFunction(torch.autograd.Function):
    """Per-row fp32 ``(ce, z)``; backward recomputes the softmax from the saved logits
    and per-row statistics (no ``[rows, C]`` buffer is written in forward)."""

    @staticmethod
    def forward(ctx, x, target, opt, ring, segments):
        # ``ring`` is one plain tuple so autograd does not treat the ring state
        # (written in place by the kernel, never differentiated) as an input
        ce, z, row_max, row_logsum = _forward(x, target, opt, ring, segments, True)
        ctx.save_for_backward(x, target, row_max, row_logsum)
        ctx.opt = opt
        if z is None:
            z = ce.new_zeros(0)
            ctx.mark_non_differentiable(z)
        return ce, z

    @staticmethod
    def backward(ctx, grad_ce, grad_z):
        x, target, row_max, row_logsum = ctx.saved_tensors
        opt = ctx.opt
        none = (None,) * 4
        if grad_ce is None:
            grad_ce = torch.zeros_like(row_max)
        has_z = bool(opt.z_scale) and grad_z is not None
        if torch.is_grad_enabled():
            ce, z = _torch_rows(x, target, opt)
            outs, grads = ([ce, z], [grad_ce, grad_z]) if has_z else ([ce], [grad_ce])
            return (torch.autograd.grad(outs, x, grads, create_graph=True)[0],) + none
        B, C = x.shape[0], x.shape[1]
        N = target.numel()
        grad = torch.empty((N, C), dtype=x.dtype, device=x.device)
        if N:
            g = grad_ce.float().contiguous()
            gz = grad_z.float().contiguous() if has_z else g
            weight = opt.weight if opt.weight is not None else g
            wsum = opt.weight.sum() if opt.weight is not None else g
            sb, sp, sc, P = _layout(x)
            bb, bc, warps = _blocks(N, C, opt.block_c, opt.block_b)
            _ce_backward_kernel[(triton.cdiv(N, bb),)](
                x, sb, sp, sc, P, grad, target, weight, wsum, row_max, row_logsum, g, gz,
                N, C, opt.ignore_index, opt.eps, float(opt.z_scale), float(opt.softcap or 1.0),
                HAS_WEIGHT=opt.weight is not None, HAS_Z=has_z, HAS_SOFTCAP=opt.softcap is not None,
                BLOCK_B=bb, BLOCK_C=bc, num_warps=warps,
            )
        if x.dim() > 2:
            grad = grad.view(B, -1, C).permute(0, 2, 1)
        return (grad,) + none


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


def position_losses(x, target, opt: KernelOptions, ring=None, segments=None):
    """Per-row fp32 ``(ce [N], z [N] or None)`` of logits ``x`` [B, C] or [B, C, P]
    (any strides; row ``b*P + p``) against int64 ``target`` [N]; differentiable
    w.r.t. ``x`` when grad is enabled (nothing saved otherwise).

    ``ring=(hist, count, index)`` (one row per sample) max-reduces each sample's loss
    into ``hist[index, count[index] % L]`` in the same pass; ``segments`` (fp32
    zeros [4, B]) receives each sample's sums of ce, divisor (w_t or 1), z and valid
    rows: the selector's segmented mean, also in the same pass. Arguments are
    trusted: :func:`fused_cross_entropy` and ``ies_fast.cross_entropy`` check them."""
    if ring is not None:
        ring = _check_ring(ring, x.shape[0], x.device)
    target = target.contiguous()
    if torch.is_grad_enabled() and x.requires_grad:
        ce, z = FusedCrossEntropyFunction.apply(x, target, opt, ring, segments)
        return ce, (z if opt.z_scale else None)
    ce, z, _, _ = _forward(x, target, opt, ring, segments, False)
    return ce, z


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
    opt = KernelOptions(int(ignore_index), eps, block_c=block_c, block_b=block_b)
    losses = position_losses(logits, target, opt, ring)[0]
    valid = target != ignore_index
    return reduce_losses(losses, valid, reduction, sample_weight, logits.dtype)
