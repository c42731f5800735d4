"""Compaction: a bool mask -> the ascending index list, its count left on the
device (no host sync). ``reference.py`` is plain torch, ``triton.py`` the Triton
kernels; the native op is ``torch.ops.ies_fast.compact`` (CUB on CUDA)."""
from __future__ import annotations

import torch

from .reference import compact_torch


def compact(backend: str, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from .triton import compact_triton

        return compact_triton(mask)
    if backend == "native":
        return torch.ops.ies_fast.compact(mask)
    return compact_torch(mask)
