"""Worker side of tests/test_distributed.py: each rank observes its share of a
fixed per-epoch observation list (built identically on every rank and in the
single-process reference), steps the selector, and saves what it ended with."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from ies_fast import IES, PerExitIES
from ies_fast.io.checkpoint import load_checkpoint, save_checkpoint

S, DELTA, ORDER, WINDOW = 61, 5e-3, 1, 2


def epoch_observations(epoch: int, overlap: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(losses, index)`` observed in ``epoch`` by all ranks together, in order.

    Some samples settle (so they get mastered), some move, a fraction is not seen at
    all, one epoch is empty, and a few NaN/Inf appear. With ``overlap`` some indices
    appear twice with different losses (the ranks then see the same sample)."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    if epoch == 3:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    plateau = torch.arange(S) % 3 != 0
    settled = 1.0 / (1 + epoch) ** 2 + torch.rand(S, generator=g) * 1e-4
    loss = torch.where(plateau, settled, torch.rand(S, generator=g) * 2)
    index = torch.randperm(S, generator=g)[: int(S * 0.85)]
    loss = loss[index]
    if epoch == 5:
        loss[:2] = torch.tensor([float("nan"), float("inf")])
    if overlap:
        extra = index[torch.randperm(index.numel(), generator=g)[:20]]
        index = torch.cat([index, extra])
        loss = torch.cat([loss, loss[-20:] * 0 + torch.rand(20, generator=g)])
        perm = torch.randperm(index.numel(), generator=g)
        index, loss = index[perm], loss[perm]
    return loss, index


def exit_losses(loss: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[B, 2]`` losses for a two-exit model: exit 0 as given, exit 1 three times
    as unstable (masters later), both functions of (sample, loss) only."""
    return torch.stack([loss, loss * 3 + (index % 7).float() * 0.1], 1)


def feed(selector: IES, epochs: range, overlap: bool, rank: int, world: int, batch: int = 5) -> None:
    """Observe this rank's share (every ``world``-th observation) of each epoch, then step."""
    for epoch in epochs:
        loss, index = epoch_observations(epoch, overlap)
        mine_l, mine_i = loss[rank::world], index[rank::world]
        for l, i in zip(mine_l.split(batch), mine_i.split(batch)):
            selector.observe(exit_losses(l, i) if selector.num_exits == 2 else l, i)
        selector.step()


def new_per_exit_selector() -> PerExitIES:
    return PerExitIES(S, delta=DELTA, order=ORDER, window=WINDOW, device="cpu", backend="torch",
                      num_exits=2, exit_reduction="per_exit")


def new_selector() -> IES:
    return IES(S, delta=DELTA, order=ORDER, window=WINDOW, device="cpu", backend="torch")


def snapshot(selector: IES) -> dict:
    return {
        "hist": selector.hist.clone(),
        "count": selector.count.clone(),
        "mastered": selector.mastered.clone(),
        "kept": selector.kept_indices().clone(),
        "epoch": selector.epoch,
        "stats": selector.stats(),
    }


def worker(rank: int, world: int, port: int, out_dir: str, job: dict) -> None:
    """One rank. ``job``: ``overlap`` (bool), ``epochs`` (int), optional ``save_at``
    (epoch after which rank 0 checkpoints) or ``resume_from`` (a checkpoint path)."""
    if os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        from ies_fast.io import distributed as d

        sel = new_selector()
        start = 0
        if "resume_from" in job:
            if rank == 0:  # only rank 0 reads the file; the others get it by broadcast
                sel.load_state_dict(load_checkpoint(job["resume_from"])["selector"])
            d.broadcast_selector(sel)
            start = sel.epoch
        save_at = job.get("save_at")
        if save_at is not None:
            feed(sel, range(start, save_at), job["overlap"], rank, world)
            if d.is_main_process():
                save_checkpoint({"selector": sel.state_dict()}, os.path.join(out_dir, "selector.ckpt"))
            d.barrier()
            start = save_at
        feed(sel, range(start, job["epochs"]), job["overlap"], rank, world)
        d.assert_selector_in_sync(sel)
        snap = snapshot(sel)
        if job.get("per_exit"):
            pe = new_per_exit_selector()
            feed(pe, range(job["epochs"]), job["overlap"], rank, world)
            snap["per_exit"] = pe.exit_mastered_mask().clone()
        torch.save(snap, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
