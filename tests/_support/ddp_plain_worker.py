"""Worker side of tests/integrations/test_ddp_plain.py: ``IESDataset`` in a plain DDP
loop (gloo, CPU). Each epoch every rank logs its optimizer steps and the kept set; the
ranks compare both (an all-gather) and rank 0 checkpoints between epochs: model,
optimizer and sampler in one verified file, the selector through
``ies_fast.io.selector_shards`` (collective; it reshards on resume)."""
from __future__ import annotations

import datetime
import json
import os
import signal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

from ies_fast.selectors import make_selector
from ies_fast.data.selected_dataset import IESDataset
from ies_fast.io.checkpoint import load_checkpoint, save_checkpoint
from ies_fast.io.selector_shards import load_selector, save_selector

S, FEATURES, CLASSES, BATCH, LR, DELTA = 45, 6, 3, 4, 0.2, 0.05


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(S, FEATURES, generator=g)
    y = (x @ torch.randn(FEATURES, CLASSES, generator=g) + 0.5 * torch.randn(S, CLASSES, generator=g)).argmax(1)
    return TensorDataset(x, y)


def _agree(values: list[int], world: int) -> bool:
    """Whether every rank holds the same ``values`` (one all-gather)."""
    mine = torch.tensor(values, dtype=torch.int64)
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    return all(torch.equal(e, mine) for e in every)


def worker(rank: int, world: int, port: int, out_dir: str, job: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=30))
    try:
        _train(rank, world, out_dir, job)
    finally:
        dist.destroy_process_group()


def _train(rank: int, world: int, out_dir: str, job: dict) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, CLASSES)
    ddp = DDP(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    selector = make_selector("ies", S, delta=DELTA, order=1, window=2, shard_state=job.get("shard_state", False))
    ds = IESDataset(data(), model, selector=selector, seed=1)
    loader = DataLoader(ds, batch_size=BATCH, sampler=ds.sampler)
    ckpt = job.get("ckpt", os.path.join(out_dir, "ckpt"))
    log = []
    if job.get("resume"):
        state = load_checkpoint(os.path.join(ckpt, "train.ckpt"))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ds.sampler.load_state_dict(state["sampler"])
        load_selector(ds.selector, os.path.join(ckpt, "selector"))
        log = json.loads(state["log"])
    for epoch in range(ds.selector.epoch, job["epochs"]):
        kept = ds.selector.kept_indices().tolist()
        steps = 0
        for batch, (x, y, index) in enumerate(loader):
            if (epoch, batch) == tuple(job.get("kill_at", ())) and rank == world - 1:
                os.kill(os.getpid(), signal.SIGKILL)
            loss = ds.update(F.cross_entropy(ddp(x), y, reduction="none"), index)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        ds.end_epoch()  # scoring pass and step(): the checkpoint is taken between epochs
        assert _agree([steps, len(kept), hash(tuple(kept)) % (1 << 62)], world), f"ranks disagree in epoch {epoch}"
        log.append({"epoch": epoch, "world": world, "kept": kept, "steps": steps})
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "sampler": ds.sampler.state_dict(),
                 "log": json.dumps(log)}
        if rank == 0:
            save_checkpoint(state, os.path.join(ckpt, "train.ckpt"))
        save_selector(ds.selector, os.path.join(ckpt, "selector"))
        dist.barrier()  # the checkpoint is whole before any rank goes on
    if rank == 0:
        save_checkpoint({"model": model.state_dict(), "mastered": ds.selector.mastered_mask().clone(),
                         "log": json.dumps(log)}, os.path.join(out_dir, "final.ckpt"))
