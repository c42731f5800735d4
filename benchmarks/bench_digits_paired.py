"""Paired, interleaved CPU-time comparison of ``ies-fast train --dataset digits`` from
two checkouts (e.g. the commit before the per-sample table and this branch).

Each run is a fresh process (``OMP_NUM_THREADS=1``) importing ``ies_fast`` from its
checkout via ``PYTHONPATH``; runs alternate A, B, A, B, ... (the order flips every
pair) and the CPU time of each child process (user + system, ``getrusage``) is
recorded, plus the summary's ``cpu_time_s`` where the checkout writes one. Prints
one JSON line per run and the medians and ratio.

    python benchmarks/bench_digits_paired.py --a /work/wt/pretable --b . --pairs 5 [-- extra train args]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

CLI = {"ies_fast.app.cli": "ies_fast/app/cli.py", "ies_fast.cli": "ies_fast/cli.py"}


def cli_module(checkout: str) -> str:
    for module, path in CLI.items():
        if os.path.exists(os.path.join(checkout, path)):
            return module
    raise SystemExit(f"{checkout}: no ies_fast CLI found")


def run_once(checkout: str, out: str, extra: list) -> dict:
    checkout = os.path.abspath(checkout)
    env = dict(os.environ, PYTHONPATH=checkout, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code = (f"import sys, ies_fast; print('IES_FAST_FROM', ies_fast.__file__, file=sys.stderr); "
            f"from {cli_module(checkout)} import main; "
            f"sys.exit(main(['train', '--dataset', 'digits', '--out', {out!r}, '--no-progress', *{extra!r}]))")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # run outside any checkout: the current folder would come first on sys.path
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(out))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    found = os.path.dirname(os.path.dirname(proc.stderr.split("IES_FAST_FROM ", 1)[1].split("\n", 1)[0]))
    if os.path.realpath(found) != os.path.realpath(checkout):
        raise SystemExit(f"imported ies_fast from {found}, not {checkout}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return {"process_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "epochs_cpu_s": summary.get("cpu_time_s"), "test_acc": summary["test_acc"],
            "backward_saved_fraction": summary["backward_saved_fraction"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="checkout A (e.g. the commit before the table)")
    p.add_argument("--b", required=True, help="checkout B (e.g. this branch)")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("extra", nargs="*", help="extra `ies-fast train` arguments (after --)")
    args = p.parse_args(argv)
    runs = {"a": [], "b": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            for side in (("a", "b") if i % 2 == 0 else ("b", "a")):
                out = os.path.join(tmp, f"{side}{i}")
                r = run_once(getattr(args, side), out, args.extra)
                runs[side].append(r)
                print(json.dumps({"pair": i, "side": side, **r}), flush=True)
    med = {s: statistics.median(r["process_cpu_s"] for r in runs[s]) for s in runs}
    ratios = [b["process_cpu_s"] / a["process_cpu_s"] for a, b in zip(runs["a"], runs["b"])]
    print(json.dumps({"median_process_cpu_s": med, "ratio_b_over_a": med["b"] / med["a"],
                      "median_pair_ratio": statistics.median(ratios), "pair_ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
