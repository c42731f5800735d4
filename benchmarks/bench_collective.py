"""Time the per-epoch rank merge of ``IES.step()`` (``IES._merge_ranks``: gather
the current-epoch slot, one ``all_reduce(MAX)`` of ``num_samples`` fp32 values,
scatter back, plus a one-element SUM) and the whole ``step()``, across processes.

    PYTHONPATH=. python benchmarks/bench_collective.py [--samples 1281167] [--world 2] [--repeats 10] [--backend gloo|nccl|all]

gloo runs on CPU; nccl runs one GPU per rank when CUDA has ``world`` devices.
Prints the median and min over ``--repeats`` (after one warm-up) in ms, as seen
by rank 0, each timed between two barriers.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _worker(rank: int, world: int, port: int, backend: str, samples: int, repeats: int, queue) -> None:
    from ies_fast import IES

    if backend == "gloo" and os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    sel = IES(samples, delta=1e-3, device=device)
    gen = torch.Generator().manual_seed(rank)
    times = {"merge": [], "step": []}
    for it in range(repeats + 1):
        # each rank observes its half of the samples with fresh losses
        idx = torch.arange(rank, samples, world)
        sel.observe(torch.rand(idx.numel(), generator=gen).to(device), idx.to(device))
        for name, fn in (("merge", sel._merge_ranks), ("step", sel.step)):
            _sync(device)
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            _sync(device)
            dt = time.perf_counter() - t0
            if it > 0:
                times[name].append(dt * 1e3)
    if rank == 0:
        queue.put(times)
    dist.barrier()
    dist.destroy_process_group()


def run(backend: str, world: int, samples: int, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, backend, samples, repeats, queue)) for r in range(world)]
    for p in procs:
        p.start()
    times = queue.get(timeout=600)
    for p in procs:
        p.join(60)
    return {
        "backend": backend, "world": world, "samples": samples,
        **{f"{k}_ms_median": statistics.median(v) for k, v in times.items()},
        **{f"{k}_ms_min": min(v) for k, v in times.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_281_167, help="ImageNet-1k train set size by default")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--backend", choices=["gloo", "nccl", "all"], default="all")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    backends = ["gloo"] if args.backend in ("gloo", "all") else []
    if args.backend in ("nccl", "all") and torch.cuda.is_available() and dist.is_nccl_available():
        if torch.cuda.device_count() >= args.world:
            backends.append("nccl")
        else:
            print(f"nccl: skipped, needs {args.world} GPUs, found {torch.cuda.device_count()}")
    results = []
    for backend in backends:
        r = run(backend, args.world, args.samples, args.repeats)
        r.update(machine=platform.machine(), cpus=os.cpu_count(), torch=torch.__version__,
                 device=torch.cuda.get_device_name(0) if backend == "nccl" else platform.processor() or "cpu")
        results.append(r)
        print(f"{backend} world={r['world']} samples={r['samples']}: merge {r['merge_ms_median']:.2f} ms "
              f"(min {r['merge_ms_min']:.2f}), whole step() {r['step_ms_median']:.2f} ms (min {r['step_ms_min']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
