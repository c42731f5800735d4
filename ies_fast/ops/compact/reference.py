"""Stream compaction (bool mask -> int64 index list) in plain torch, count left on device."""
from __future__ import annotations

import torch


def compact_torch(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(indices, count)``: ``indices[:count]`` are the positions of True in
    ascending order (the rest is unspecified) and ``count`` is a 0-d int64 device tensor.
    No host synchronisation."""
    n = mask.numel()
    flags = mask.reshape(-1).long()
    position = torch.cumsum(flags, 0) - 1
    out = torch.empty(n + 1, dtype=torch.int64, device=mask.device)
    target = torch.where(flags.bool(), position, torch.full_like(position, n))
    out.scatter_(0, target, torch.arange(n, device=mask.device))
    count = flags.sum() if n else torch.zeros((), dtype=torch.int64, device=mask.device)
    return out[:n], count
