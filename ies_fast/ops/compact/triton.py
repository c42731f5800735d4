"""Stream compaction (bool mask -> ascending int64 positions) in Triton.

Two passes over the mask and a tiny device scan, count left on device:

1. ``_block_count_kernel``: the number of True flags in each block of ``BLOCK``;
2. ``torch.cumsum`` over the per-block counts (``N / BLOCK`` values) gives each
   block's end offset, and its last entry is the total;
3. ``_scatter_kernel``: an in-block exclusive scan (``tl.cumsum``) plus the
   block's start offset gives each True flag's output position.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

#: mask elements per program
BLOCK = 4096


def _scatter_warps(block: int) -> int:
    """Warps for ``_scatter_kernel``: 16 mask elements per thread at the default BLOCK
    (8 warps). At 4 warps (32 per thread: int64 offsets plus the in-block scan) ptxas
    spills 64 B on sm_90; the warp count changes neither positions nor order."""
    return max(1, min(8, block // 512))


@triton.jit
def _block_count_kernel(flags_ptr, counts_ptr, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    f = tl.load(flags_ptr + offs, mask=offs < N, other=0) != 0
    tl.store(counts_ptr + pid, tl.sum(f.to(tl.int32), axis=0))


@triton.jit
def _scatter_kernel(flags_ptr, ends_ptr, out_ptr, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    f = (tl.load(flags_ptr + offs, mask=offs < N, other=0) != 0).to(tl.int32)
    start = tl.load(ends_ptr + pid - 1, mask=pid > 0, other=0)
    pos = start + (tl.cumsum(f, axis=0) - f)
    tl.store(out_ptr + pos, offs, mask=f != 0)


def compact_triton(mask: torch.Tensor, *, block: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(indices, count)``: ``indices[:count]`` are the flat positions of True
    in ``mask`` in ascending order (the rest is unspecified), ``indices`` has
    ``mask.numel()`` entries and ``count`` is a 0-d int64 device tensor. No host sync."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    blk = block or BLOCK
    if blk < 1 or blk & (blk - 1):
        raise ValueError(f"block must be a power of two, got {blk}")
    n = mask.numel()
    dev = mask.device
    out = torch.empty(n, dtype=torch.int64, device=dev)
    if n == 0:
        return out, torch.zeros((), dtype=torch.int64, device=dev)
    flags = mask.reshape(-1).contiguous().view(torch.uint8)
    grid = triton.cdiv(n, blk)
    counts = torch.empty(grid, dtype=torch.int32, device=dev)
    _block_count_kernel[(grid,)](flags, counts, n, BLOCK=blk)
    ends = torch.cumsum(counts, 0, dtype=torch.int64)
    _scatter_kernel[(grid,)](flags, ends, out, n, BLOCK=blk, num_warps=_scatter_warps(blk))
    return out, ends[-1]
