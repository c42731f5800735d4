"""``ies-fast bench``: the benchmark suite of ``benchmarks/`` in one command.

On a CUDA machine it runs the GPU sizes (fused loss against torch eager,
``torch.compile`` and Liger where installed; compaction against ``torch.nonzero``;
``IES.step()`` at 1.28M and 10M samples; the training step under
``torch.cuda.set_sync_debug_mode("error")``; the ResNet-18 epoch on CIFAR-shaped
data at kept fractions 1.0 / 0.6 / 0.3 with speedup efficiency) inside a total time
budget (default 9.5 minutes: a phase that would run past it is stopped and reported
as such); on a CPU it runs the small sizes. It writes ``bench.json`` (every result,
plus the device, driver, torch and Triton versions) and ``bench.md`` (the tables, and
measured time over the bandwidth lower bound of each kernel), and with ``--readme``
replaces the GPU table between the markers of a Markdown file (docs/results.md).
It installs nothing: the suite needs the ``test`` extra (pytest-benchmark) and a
source checkout (``benchmarks/``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
#: the GPU table's place, in docs/results.md ("Summary of the CPU micro-benchmarks")
README_BEGIN = "<!-- ies-bench:begin (written by `ies-fast bench --readme FILE` on a GPU; do not edit) -->"
README_END = "<!-- ies-bench:end -->"

#: (name, files, share of the time budget); run in this order, each in its own pytest process
PHASES = (
    ("kernel", ("benchmarks/test_bench_kernel.py",), 0.35),
    ("compaction-step", ("benchmarks/test_bench_compaction.py", "benchmarks/test_bench_step.py"), 0.2),
    ("no-sync", ("tests/ops/test_no_sync_gpu.py",), 0.1),
    ("epoch", ("benchmarks/test_bench_epoch.py",), 0.35),
)
#: at GPU sizes, the cases of a phase that fit the 10-minute budget (pytest -k); the
#: whole matrix is in docs/benchmarks.md ("How to run")
GPU_SELECT = {"kernel": "C1000 or C32768", "epoch": "B512"}


class BenchError(Exception):
    """A reason ``ies-fast bench`` cannot run (one line, exit 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=("auto", "small", "gpu"), default="auto",
                        help="benchmark sizes: 'gpu' (the GPU sizes of docs/benchmarks.md, needs CUDA), 'small' (the "
                             "CPU sizes CI runs); auto: gpu on a CUDA machine, else small")
    parser.add_argument("--out", default="bench-results", help="folder for bench.json and bench.md")
    parser.add_argument("--readme", metavar="MD",
                        help="replace the GPU table between the ies-bench markers of this Markdown file, e.g. "
                             "docs/results.md (GPU results only)")
    parser.add_argument("--budget", type=float, default=570.0,
                        help="total seconds for all phases, shared out by phase; a phase that would overrun its share "
                             "is stopped and reported as timed out (570 s keeps the command under 10 minutes)")
    parser.add_argument("--only", nargs="+", choices=[name for name, _, _ in PHASES], metavar="PHASE",
                        help=f"run only these phases: {', '.join(repr(n) for n, _, _ in PHASES)}")


def _load(name: str):
    """``benchmarks/<name>.py`` of the checkout, without putting benchmarks/ on sys.path."""
    spec = importlib.util.spec_from_file_location(f"ies_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measured_copy_gbps() -> float:
    """The device's copy bandwidth (GB/s, read + write), as the suite measures it."""
    benchutil = _load("benchutil")
    dev = benchutil.device()
    return benchutil.copy_bandwidth(dev, 2**30 if dev.type == "cuda" else 2**26)


def check_can_run(size: str, readme: Optional[str], budget: float) -> str:
    """The concrete size; raises :class:`BenchError` before anything runs."""
    import torch

    if not (ROOT / "benchmarks" / "conftest.py").is_file():
        raise BenchError(f"ies-fast bench needs a source checkout (benchmarks/ not found under {ROOT})")
    if importlib.util.find_spec("pytest_benchmark") is None:
        raise BenchError("pytest-benchmark is not installed: pip install --no-build-isolation -e '.[test]'")
    if budget <= 0:
        raise BenchError(f"--budget must be > 0 seconds, got {budget}")
    cuda = torch.cuda.is_available()
    if size == "auto":
        size = "gpu" if cuda else "small"
    if size == "gpu" and not cuda:
        raise BenchError("--size gpu needs a CUDA device")
    if readme is not None:
        if size != "gpu":
            raise BenchError("--readme takes GPU results only (a measured GPU figure is one that ran on a GPU)")
        from ..io.run_folder import RunFolderError, read_bytes

        try:  # a regular file only: a FIFO or a device named here would block or never end
            text = read_bytes(readme, 16 * 2**20).decode("utf-8", errors="replace")
        except (OSError, RunFolderError) as exc:
            raise BenchError(f"--readme {readme}: {exc}") from None
        if README_BEGIN not in text:
            raise BenchError(f"--readme {readme}: no '{README_BEGIN}' marker")
    return size


def check_out(out: Path) -> None:
    """``--out`` can take bench.json and bench.md (a folder, made if missing, that can be
    written; no link or folder at those names); raises :class:`BenchError` before any work."""
    from ..io.run_folder import RunFolderError, check_slot

    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file; it must name a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("bench.json", "bench.md"):
            check_slot(out / name)
        with tempfile.TemporaryFile(dir=out):
            pass
    except RunFolderError as exc:
        raise BenchError(f"--out {exc}") from None
    except OSError as exc:
        raise BenchError(f"--out {out} is not writable: {exc.strerror or exc}") from None


def run_phase(files, size: str, json_path: Path, timeout: float, select: Optional[str] = None) -> tuple[str, float]:
    """One pytest run; ``(outcome, seconds)`` with outcome 'ok', 'failed (rc N)' or 'timed out'."""
    env = dict(os.environ, IES_BENCH_SIZE=size)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("TRITON_INTERPRET", None)  # interpreted Triton is far too slow to time
    if size == "small":
        env.setdefault("IES_BENCH_ROUNDS", "1")
        env.setdefault("IES_BENCH_SAMPLES", "128")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), *files]
    if files[0].startswith("benchmarks/"):
        cmd += ["--size", size, "--benchmark-json", str(json_path), "--benchmark-max-time=0.2",
                "--benchmark-min-rounds=3"]
    else:  # a plain test file (pass / fail), with compiled kernels
        cmd += ["-m", "gpu"] if size == "gpu" else []
        env["TRITON_INTERPRET"] = "0"
    if select:
        cmd += ["-k", select]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return "timed out", time.perf_counter() - start
    elapsed = time.perf_counter() - start
    tail = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode == 5 or (done.returncode == 0 and "skipped" in tail and "passed" not in tail):
        return f"skipped ({tail})", elapsed
    return ("ok" if done.returncode == 0 else f"failed (rc {done.returncode}): {tail}"), elapsed


# ---- the bandwidth model -----------------------------------------------------------------

#: default ring length (order 2 + window 3): bytes of history per sample are 4·L
DEFAULT_L = 5


def bytes_model(info: dict) -> Optional[float]:
    """Bytes a result's operation must move at least (read + write), or None:
    kernel: logits read (and gradient written) + per-row extras (``bytes_moved``);
    compaction: the mask read once + the kept indices written (8 B each);
    step: the history read and the next slot written (4·L + 4 B), count and
    mastered read and written (4 B) per sample."""
    bench = info.get("bench")
    if bench == "kernel":
        return info.get("bytes_moved")
    if bench == "compaction":
        return info["N"] * (1 + 8 * info.get("kept_fraction", 0.5))
    if bench == "step" and str(info.get("variant", "")).startswith("IES.step"):
        return info["N"] * (4 * info.get("L", DEFAULT_L) + 4 + 4)
    return None


def bound_rows(results: list[dict], copy_gbps: Optional[float]) -> list[list[str]]:
    rows = []
    for info in results:
        need = bytes_model(info)
        t = info.get("time_s")
        if need is None or not t or not copy_gbps:
            continue
        bound = need / (copy_gbps * 1e9)
        name = info.get("variant", "?")
        shape = " ".join(f"{k}={info[k]}" for k in ("N", "C", "dtype", "direction") if k in info)
        rows.append([info["bench"], name, shape, f"{need / 1e6:.2f} MB", f"{bound * 1e6:.1f} µs",
                     f"{t * 1e6:.1f} µs", f"{t / bound:.1f}×"])
    return rows


def one_copy_bandwidth(results: list[dict], measured_here: float) -> tuple[float, str]:
    """The one copy bandwidth a report uses, and where it was measured: the kernel
    phase's (its GB/s column divides by it), else the one measured before the phases.
    Two runs of the same copy differ (threads, caches, other load), so a report that
    printed both would give two figures for one machine."""
    suite = next((r["copy_gbps"] for r in results if r.get("copy_gbps")), None)
    if suite:
        return float(suite), "measured in the kernel phase"
    return float(measured_here), "measured before the phases"


def render(datas: list[dict], outcomes: list[tuple[str, str, float]], copy_gbps: float) -> str:
    report = _load("report")
    parts = [report.render(d) for d in datas]
    results = [r.get("extra_info", {}) for d in datas for r in d.get("benchmarks", [])]
    copy_gbps, where = one_copy_bandwidth(results, copy_gbps)
    rows = bound_rows(results, copy_gbps)
    lines = ["#### Measured time over the bandwidth lower bound", "",
             f"Bound = bytes the operation must move / the copy bandwidth ({copy_gbps:.1f} GB/s, read + write, "
             f"{where}: the one figure of this report); 1.0× would be an operation at copy speed.", ""]
    if rows:
        lines += report.table(["bench", "variant", "shape", "bytes", "bound", "median", "median / bound"], rows)
    lines += ["", "#### Phases", ""]
    lines += report.table(["phase", "outcome", "wall"], [[n, o, f"{s:.0f} s"] for n, o, s in outcomes])
    return "\n".join(parts) + "\n" + "\n".join(lines) + "\n"


def write_readme(path: Path, table: str) -> None:
    text = path.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    path.write_text(text[:start] + f"{README_BEGIN}\n{table.strip()}\n{README_END}" + text[end:])


def run(args) -> int:
    from ..io.run_folder import write_text

    size = check_can_run(args.size, args.readme, args.budget)
    out = Path(args.out)
    check_out(out)
    phases = [p for p in PHASES if not args.only or p[0] in args.only]
    total_share = sum(share for _, _, share in phases)
    deadline = time.perf_counter() + args.budget
    datas, outcomes = [], []
    copy_gbps = measured_copy_gbps()
    with tempfile.TemporaryDirectory(prefix="ies_bench_") as tmp:
        for i, (name, files, share) in enumerate(phases):
            left = deadline - time.perf_counter()
            if left <= 1:
                outcomes.append((name, "not run (budget spent)", 0.0))
                continue
            json_path = Path(tmp) / f"phase{i}.json"
            select = GPU_SELECT.get(name) if size == "gpu" else None
            outcome, seconds = run_phase(files, size, json_path, min(left, args.budget * share / total_share * 2),
                                         select)
            outcomes.append((name, outcome, seconds))
            print(f"ies-fast bench: {name}: {outcome} ({seconds:.0f} s)", file=sys.stderr)
            if json_path.is_file():
                datas.append(json.loads(json_path.read_text()))
    all_results = [b.get("extra_info", {}) for d in datas for b in d.get("benchmarks", [])]
    merged = {"size": size, "copy_gbps": round(one_copy_bandwidth(all_results, copy_gbps)[0], 2), "phases": [dict(name=n, outcome=o, seconds=round(s, 1)) for n, o, s in outcomes],
              "machine_info": datas[0].get("machine_info", {}) if datas else {},
              "benchmarks": [b for d in datas for b in d.get("benchmarks", [])]}
    write_text(out / "bench.json", json.dumps(merged, indent=1))
    text = render(datas, outcomes, copy_gbps)
    write_text(out / "bench.md", text)
    if args.readme:
        write_readme(Path(args.readme), text)
    print(text)
    print(f"ies-fast bench: wrote {out / 'bench.json'} and {out / 'bench.md'}", file=sys.stderr)
    return 0 if all(o == "ok" or o.startswith("skipped") for _, o, _ in outcomes) else 1
