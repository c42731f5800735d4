"""Small helpers for running IES under ``torch.distributed`` (DDP via torchrun).

The selector itself needs nothing from here: ``IES.step()`` merges the ranks'
observations (one ``all_reduce(MAX)`` of ``num_samples`` fp32 values), after which
every rank holds the identical state. These helpers are what a training loop calls
around it: start the process group from torchrun's environment, wrap the model,
and guard rank-0-only work. Checking or copying selector state across ranks is
:mod:`ies_fast.selectors.sync`.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Optional

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    """Whether a process group is up (``False`` where torch.distributed is absent)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that logs and checkpoints."""
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher) set ``RANK``/``WORLD_SIZE`` with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(backend: Optional[str] = None, timeout_s: float = 600.0) -> torch.device:
    """Start the process group from torchrun's environment, if launched by it.

    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``. On CUDA
    the process is pinned to ``LOCAL_RANK``'s GPU. Returns the device this rank
    should train on; without a launcher it returns the default device and starts
    nothing, so the same loop runs single-process.
    """
    cuda = torch.cuda.is_available()
    if not launched_by_torchrun():
        return torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if backend not in ("nccl", "gloo", "mpi", "ucc"):
        raise ValueError(f"backend must be one of nccl, gloo, mpi, ucc; got {backend!r}")
    device = torch.device("cuda", local_rank) if cuda and backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return device


def cleanup() -> None:
    """Destroy the process group if one is up (call at the end of a run). All ranks
    meet in a barrier first: a rank tearing gloo down while a peer still has a
    collective in flight aborts the peer ("terminate called without an active exception")."""
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, device: torch.device, **ddp_kwargs) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` under a multi-rank group, else ``model``.

    The loop must leave the per-sample loss *unreduced* for IES, then reduce the kept
    samples' losses itself; DDP averages gradients across ranks as usual.
    """
    if get_world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, **ddp_kwargs)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (what to checkpoint)."""
    return getattr(model, "module", model)


def barrier() -> None:
    """``dist.barrier()`` under a process group, else nothing."""
    if is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the body first (e.g. builds a data cache), the others after it."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks in place (for metrics: loss sums, correct counts)."""
    if get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
