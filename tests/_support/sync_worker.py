"""One gloo rank for tests/selectors/test_sync.py: feed a selector the same epochs as
every other rank, optionally perturb one sample of one state tensor on one rank,
then run ``assert_selector_in_sync`` and write what it said."""
from __future__ import annotations

import datetime
import json
import os

import torch
import torch.distributed as dist

from ies_fast import IES


def _check(sel, check) -> str:
    try:
        check(sel)
        return "in sync"
    except RuntimeError as exc:
        return str(exc)


def worker(rank: int, world: int, port: int, out_dir: str, job: dict) -> None:
    if os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        from ies_fast.selectors.sync import assert_selector_in_sync

        n = 1000
        sel = IES(n, delta=0.05, order=1, window=2, backend="torch", min_kept=0.1)
        gen = torch.Generator().manual_seed(0)  # the same losses on every rank
        for _ in range(5):
            sel.observe(torch.rand(n, generator=gen), torch.arange(n))
            sel.step()
        said = [_check(sel, assert_selector_in_sync)]  # identical states first
        name, i = job["perturb"]
        if rank == 1:  # then one sample of one tensor on one rank
            t = getattr(sel, name)
            if t.dtype == torch.bool:
                t[i] = ~t[i]
            elif t.dtype == torch.float32:  # one bit of one loss
                t.view(torch.int32)[i, 0] ^= 1
            else:
                t[i] += 1
        said.append(_check(sel, assert_selector_in_sync))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"said": said}, f)
    finally:
        dist.destroy_process_group()
