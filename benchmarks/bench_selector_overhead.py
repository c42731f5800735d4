"""Per-epoch cost of what a training run adds around ``IES.step()``, at large N.

For each N, one IES selector (CPU, one thread, the recipes' order 2 / window 3,
half the samples on a loss plateau so about half are mastered) is fed one loss per
sample per epoch (untimed), then every per-epoch piece of work is timed in CPU
seconds (``time.process_time``) and its peak extra memory measured (the rise of the
process's peak RSS over its RSS before the call, ``/proc/self/status`` after
``clear_refs``; large blocks are ``mmap``-ed, so a freed block leaves the RSS):

* ``step``: ``IES.step()`` without the floor (``min_kept=0``), the reference;
* ``table``: the per-sample table of ``ies-fast train`` per epoch
  (``SampleRecord.start_epoch`` + ``observe_epoch``);
* ``table_write``: building its columns and writing ``samples.parquet`` (per epoch
  before this change; now only at the end of a run);
* ``floor_idle`` / ``floor_replay``: ``KeptFloor.replay_mask`` with the 5% floor when
  nothing needs replaying (half mastered) and when it does (99% mastered);
* ``sync``: the per-rank work of the DDP check ``assert_selector_in_sync`` (its
  checksum of the state; the one all-gather of a few int64 is not timed);
* ``per_epoch``: what every epoch adds, ``table + floor_idle + sync`` (the sum of
  their medians; issue 27's target is at most 2x ``step`` at N = 10M).

Medians over ``--repeats`` epochs. Run as a script::

    python benchmarks/bench_selector_overhead.py --sizes 1000000 10000000 --repeats 5

It also runs under pytest-benchmark at a tiny size (``test_selector_overhead``).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from ies_fast import IES

try:  # where the DDP check lives (selectors/sync.py after issue 27, io/distributed.py before)
    from ies_fast.selectors.sync import selector_fingerprint as _checksum
except ImportError:  # pragma: no cover - the code before the change
    from ies_fast.io.distributed import selector_fingerprint as _checksum
from ies_fast.app.train.samples import SampleRecord, write_samples

MIN_KEPT = 0.05
NUM_CLASSES = 10
#: the pieces every epoch adds (the table's write is once per run; the floor replays only after a collapse)
PER_EPOCH = ("table", "floor_idle", "sync")


def _fixed_mmap_threshold(nbytes: int = 1 << 16) -> None:
    """Make glibc ``mmap`` every block above ``nbytes`` (and unmap it when freed), so
    the peak RSS sees each call's temporaries instead of reused heap."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except OSError:  # not glibc: peaks may then be under-reported
        pass


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def measure(fn) -> tuple[float, int]:
    """``(CPU seconds, peak extra bytes)`` of one call of ``fn``."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
        base = _status("VmRSS:")
    except OSError:
        base = None
    t0 = time.process_time()
    fn()
    cpu = time.process_time() - t0
    return cpu, (max(0, _status("VmHWM:") - base) if base is not None else -1)


def epoch_losses(n: int, gen: torch.Generator) -> torch.Tensor:
    """Half the samples sit on a plateau (|Δ| ~ 1e-5, mastered), half jump around."""
    noise = torch.rand(n, generator=gen)
    return torch.where(torch.arange(n) % 2 == 0, 0.5 + noise * 1e-5, noise * 2 + 0.1)


def run(n: int, repeats: int, out_dir: str) -> dict:
    """Median CPU seconds and peak extra bytes of each piece at ``n`` samples."""
    sel = IES(n, delta=1e-3, order=2, window=3)
    gen = torch.Generator().manual_seed(n)
    index = torch.arange(n)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    record = SampleRecord(labels, NUM_CLASSES, torch.device("cpu"))
    for _ in range(sel.history_length):  # fill the ring: every sample eligible
        sel.observe(epoch_losses(n, gen), index)
        sel.step()
    floor = IES(n, min_kept=MIN_KEPT).kept_floor
    nearly_all = torch.rand(n, generator=gen) < 0.99
    times: dict = {}

    def timed(name, fn):
        cpu, peak = measure(fn)
        times.setdefault(name, []).append((cpu, peak))

    for epoch in range(repeats):
        timed("table", lambda: record.start_epoch(epoch, sel))
        sel.observe(epoch_losses(n, gen), index)
        table_epoch = [measure(lambda: record.observe_epoch(sel))]
        timed("step", sel.step)
        start, seen = times["table"][-1], table_epoch[0]
        times["table"][-1] = (start[0] + seen[0], max(start[1], seen[1]))
        timed("floor_idle", lambda: floor.replay_mask(sel.mastered, epoch + 1))
        timed("floor_replay", lambda: floor.replay_mask(nearly_all, epoch + 1))
        timed("sync", lambda: _checksum(sel))
        timed("table_write", lambda: write_samples(record.columns(sel), out_dir))
    result = {"N": n, "repeats": repeats, "mastered": int(sel.mastered.sum())}
    for name, values in times.items():
        result[name + "_s"] = statistics.median(v[0] for v in values)
        result[name + "_peak_bytes_per_sample"] = statistics.median(v[1] for v in values) / n
    result["per_epoch_s"] = sum(result[name + "_s"] for name in PER_EPOCH)
    result["per_epoch_x_step"] = result["per_epoch_s"] / result["step_s"]
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="per-epoch selector overheads at large N")
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _fixed_mmap_threshold()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            r = run(n, args.repeats, tmp)
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{'N':>11} {'piece':>13} {'CPU s':>9} {'x step':>7} {'peak B/sample':>14}")
    for r in results:
        for name in ("step", "table", "table_write", "floor_idle", "floor_replay", "sync"):
            print(f"{r['N']:>11} {name:>13} {r[name + '_s']:>9.4f} {r[name + '_s'] / r['step_s']:>7.2f} "
                  f"{r[name + '_peak_bytes_per_sample']:>14.1f}")
        print(f"{r['N']:>11} {'per_epoch':>13} {r['per_epoch_s']:>9.4f} {r['per_epoch_x_step']:>7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def test_selector_overhead(benchmark, tmp_path):
    """pytest-benchmark at a tiny size: the whole measurement once per round."""
    _fixed_mmap_threshold()
    result = benchmark.pedantic(lambda: run(20_000, 2, str(tmp_path)), rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in result.items() if isinstance(v, (int, float))})
    assert result["step_s"] > 0


if __name__ == "__main__":
    sys.exit(main())
