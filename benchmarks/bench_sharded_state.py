"""Replicated against sharded selector state (``make_selector("ies", ..., shard_state=True)``) on gloo ranks:
per-rank memory, ``step()`` time, bytes each rank sends per epoch, and checkpoint
save/load time (:mod:`ies_fast.io.selector_shards`).

    PYTHONPATH=. python benchmarks/bench_sharded_state.py [--samples 10000000] [--worlds 1 2 4] [--epochs 3] \
        [--storage files|dcp]

Each (mode, world) runs in fresh spawned processes, one thread each. Every epoch each
rank observes its ``N / world`` share of a permutation of the samples (as from a
``DistributedSampler``; an affine permutation, so that generating it takes no
``N``-sized table, and a contiguous block of it per rank, so that a rank's samples are
spread over all owners as a shuffle's are) in batches of 2^16, then calls ``step()``.

* state: bytes of the selector's tensors on each rank (exact);
* ``MALLOC_MMAP_THRESHOLD_=131072`` is set for the ranks (glibc), so that freed large
  blocks go back to the OS and the peak RSS is the peak of live memory;
* peak RSS: the rank's peak resident memory minus its resident memory before the
  selector was built (``ru_maxrss``), after training, and again after a checkpoint
  save and load (loading joins the whole state for its check);
* step: median CPU time (``process_time``) and wall time of ``step()`` on rank 0;
* sent: bytes one rank puts on the wire per epoch, from the collectives ``step()``
  calls (ring all-reduce ``2(W-1)/W·n``, all-gather ``(W-1)·n``, all-to-all: what goes
  to the other ranks), counted by wrapping ``torch.distributed``'s functions;
* save / load: wall time of :func:`save_selector` / :func:`load_selector` (rank 0), in
  the checkpoint storage ``--storage`` (verified files, or DCP with safetensors).

Prints one JSON line per configuration and a Markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

BATCH = 1 << 16


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _WireCounter:
    """Counts the bytes this rank sends through the collectives it wraps."""

    def __init__(self, world: int):
        self.world, self.sent, self._orig = world, 0, {}

    def _wrap(self, name, cost):
        orig = self._orig[name] = getattr(dist, name)

        def call(*args, **kwargs):
            self.sent += cost(*args, **kwargs)
            return orig(*args, **kwargs)
        setattr(dist, name, call)

    def __enter__(self):
        W = self.world
        self._wrap("all_reduce", lambda t, *a, **k: 2 * (W - 1) * t.nbytes // W)
        gather = lambda out, inp, *a, **k: (W - 1) * inp.nbytes  # noqa: E731 - each rank's part goes to W-1 others
        for name in ("all_gather_into_tensor", "all_gather_single"):
            if hasattr(dist, name):
                self._wrap(name, gather)

        def a2a(out, inp, output_split_sizes=None, input_split_sizes=None, *a, **k):
            if input_split_sizes is None:
                return (W - 1) * inp.nbytes // W
            row = inp[0].nbytes if inp.shape[0] else 0
            mine = dist.get_rank()
            return sum(n * row for r, n in enumerate(input_split_sizes) if r != mine)
        self._wrap("all_to_all_single", a2a)
        return self

    def __exit__(self, *exc):
        for name, orig in self._orig.items():
            setattr(dist, name, orig)


def _shuffled(position: torch.Tensor, samples: int, epoch: int) -> torch.Tensor:
    """The samples at ``position`` of epoch ``epoch``'s order: an affine permutation of
    ``range(samples)`` (a stand-in for a shuffle that needs no ``N``-sized table)."""
    a = 1_000_003 + 2 * epoch
    while math.gcd(a, samples) != 1:
        a += 2
    return (position * a + 7919 * epoch) % samples


def _state_bytes(sel) -> int:
    seen, total = set(), 0
    for value in vars(sel).values():
        if isinstance(value, torch.Tensor) and id(value) not in seen:
            seen.add(id(value))
            total += value.nbytes
    sched = sel.scoring_schedule
    for t in (sched.interval, sched.next_due):
        total += t.nbytes if t is not None else 0
    return total


def _worker(rank, world, port, samples, epochs, sharded, folder, queue, storage) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=1800))
    from ies_fast.selectors import make_selector
    from ies_fast.io.selector_shards import load_selector, save_selector

    base = _rss_bytes()
    sel = make_selector("ies", samples, delta=1e-2, shard_state=sharded)
    cpu, wall, sent = [], [], []
    for epoch in range(epochs):
        first, last = rank * samples // world, (rank + 1) * samples // world
        for start in range(first, last, BATCH):  # this rank's share of the epoch's order, a batch at a time
            index = _shuffled(torch.arange(start, min(last, start + BATCH)), samples, epoch)
            loss = 1.0 / (1 + epoch) + (index % 97).float() * 1e-4
            sel.observe(loss, index)
        dist.barrier()
        with _WireCounter(world) as wire:
            c0, w0 = time.process_time(), time.perf_counter()
            sel.step()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        sent.append(wire.sent)
    peak_train = _peak_bytes() - base
    dist.barrier()
    t0 = time.perf_counter()
    save_selector(sel, folder, storage=storage)
    save_s = time.perf_counter() - t0
    dist.barrier()
    t0 = time.perf_counter()
    load_selector(sel, folder)
    load_s = time.perf_counter() - t0
    peak_all = _peak_bytes() - base
    row = {"rank": rank, "state": _state_bytes(sel), "peak_train": peak_train, "peak_with_ckpt": peak_all,
           "step_cpu_s": statistics.median(cpu), "step_wall_s": statistics.median(wall),
           "sent_per_epoch": statistics.median(sent), "save_s": save_s, "load_s": load_s}
    queue.put(row)
    dist.barrier()
    dist.destroy_process_group()


def run(samples: int, world: int, epochs: int, sharded: bool, storage: str = "files") -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        procs = [ctx.Process(target=_worker, args=(r, world, port, samples, epochs, sharded, folder, queue, storage))
                 for r in range(world)]
        for p in procs:
            p.start()
        rows = [queue.get(timeout=3600) for _ in range(world)]
        for p in procs:
            p.join()
    rows.sort(key=lambda r: r["rank"])
    r0 = rows[0]
    return {"mode": "sharded" if sharded else "replicated", "world": world, "samples": samples, "storage": storage,
            "state_MB": max(r["state"] for r in rows) / 1e6,
            "peak_train_MB": max(r["peak_train"] for r in rows) / 1e6,
            "peak_with_ckpt_MB": max(r["peak_with_ckpt"] for r in rows) / 1e6,
            "step_cpu_s": r0["step_cpu_s"], "step_wall_s": r0["step_wall_s"],
            "sent_MB_per_epoch": max(r["sent_per_epoch"] for r in rows) / 1e6,
            "save_s": r0["save_s"], "load_s": r0["load_s"]}


def main() -> None:
    # a fixed mmap threshold: large blocks are returned to the OS when freed, so a rank's peak
    # RSS is its peak of live memory (glibc's moving threshold otherwise keeps freed blocks)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000_000)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--storage", choices=("files", "dcp"), default="files", help="the checkpoints' storage")
    args = ap.parse_args()
    results = []
    for world in args.worlds:
        for sharded in (False, True):  # interleaved: each world size runs both modes back to back
            res = run(args.samples, world, args.epochs, sharded, args.storage)
            print(json.dumps(res), flush=True)
            results.append(res)
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"\n{now:%Y-%m-%d %H:%M} UTC, N={args.samples}, torch {torch.__version__}, storage {args.storage}")
    print("| mode | ranks | state MB/rank | peak RSS MB/rank (train) | (+ ckpt save/load) | step() CPU s "
          "| step() wall s | sent MB/rank/epoch | save s | load s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['world']} | {r['state_MB']:.0f} | {r['peak_train_MB']:.0f} "
              f"| {r['peak_with_ckpt_MB']:.0f} | {r['step_cpu_s']:.2f} | {r['step_wall_s']:.2f} "
              f"| {r['sent_MB_per_epoch']:.1f} | {r['save_s']:.2f} "
              f"| {r['load_s']:.2f} |")


if __name__ == "__main__":
    main()
