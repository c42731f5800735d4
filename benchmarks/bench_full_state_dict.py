"""What the Lightning and Hugging Face wrappers' checkpoints cost with a sharded
selector: ``ShardedIES.full_state_dict()`` (the whole state gathered on every rank)
against the rank's own ``state_dict()`` (its shard), on gloo ranks.

    PYTHONPATH=. python benchmarks/bench_full_state_dict.py [--samples 1000000] [--world 2] [--reps 5]

Each rank (spawned, one thread) trains a ``make_selector("ies", N, shard_state=True)``
(order 2, window 3) for 6 epochs on its share of the samples, then calls both
alternately, ``--reps`` times each, between barriers; rank 0 prints the median CPU
time (``process_time``) and wall time of each.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ies_fast.selectors import make_selector


def worker(rank: int, world: int, n: int, reps: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    sel = make_selector("ies", n, shard_state=True)
    g = torch.Generator().manual_seed(rank)
    index = torch.arange(rank, n, world)
    for _ in range(6):
        sel.observe(torch.rand(index.numel(), generator=g), index)
        sel.step()
    times: dict = {}
    for name, fn in (("shard state_dict()", sel.state_dict), ("full_state_dict()", sel.full_state_dict)) * reps:
        dist.barrier()
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        times.setdefault(name, []).append((time.process_time() - cpu, time.perf_counter() - wall))
    if rank == 0:
        for name, runs in times.items():
            print(f"N={n} W={world} {name}: CPU {statistics.median(r[0] for r in runs) * 1e3:.0f} ms, "
                  f"wall {statistics.median(r[1] for r in runs) * 1e3:.0f} ms (median of {reps})", flush=True)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:  # the ranks meet in a file store: no port to pick
        mp.spawn(worker, args=(args.world, args.samples, args.reps, os.path.join(folder, "store")), nprocs=args.world)


if __name__ == "__main__":
    main()
