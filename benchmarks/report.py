"""Turn pytest-benchmark JSON files from this suite into Markdown tables.

    python benchmarks/report.py results.json [more.json ...] [--label TEXT] [-o out.md]

The header names the device, driver, torch and triton versions recorded in the
file (``machine_info["ies_bench"]``, written by ``benchmarks/conftest.py``).
Figures come from each result's ``extra_info``: per-operation median and min time;
GB/s, copy-bandwidth fraction, speedup and efficiency derived from the median;
the host-sync flag.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fmt_time(seconds) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:{spec}}{suffix}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def header_lines(data: dict, label) -> list[str]:
    info = data.get("machine_info", {}).get("ies_bench", {})
    commit = data.get("commit_info", {})
    title = label or info.get("device", "unknown device")
    native = ", ".join(k for k in ("native_cpu", "native_cuda") if info.get(k)) or "not built"
    return [
        f"### {title}",
        "",
        f"Device: {info.get('device', '?')} · driver: {info.get('driver') or 'n/a (CPU)'} · "
        f"torch {info.get('torch', '?')} (CUDA {info.get('torch_cuda') or 'none'}) · "
        f"triton {info.get('triton') or 'not installed'} · ies_fast._C: {native} · "
        f"size: {info.get('size', '?')} · commit {str(commit.get('id', '?'))[:10]}"
        f"{' (dirty)' if commit.get('dirty') else ''} · {data.get('datetime', '?')[:19]}",
        "",
    ]


#: what each variant name in the tables runs (docs/benchmarks.md has the full list)
VARIANTS = {
    "fused_triton": "ies_fast.cross_entropy's fused Triton kernel (loss + ring write in one pass)",
    "torch_eager": "F.cross_entropy, then the ring write as torch ops (the reference for 'vs torch eager')",
    "torch_compile": "torch_eager under torch.compile (compile time excluded)",
    "torch_eager_test": "torch_eager plus a per-step Δ^N test of the batch: more work than the fused kernel",
    "native_record": "F.cross_entropy + the native ring write of ies_fast._C",
    "liger": "Liger-Kernel's fused cross-entropy + the torch ring write",
    "triton": "the Triton compaction kernel", "native": "ies_fast._C's compaction (CUB on CUDA, C++ on CPU)",
    "nonzero": "torch.nonzero", "torch_cumsum": "the torch fallback (cumsum + scatter)",
    "kept_indices": "IES.kept_indices(), what the samplers call",
    "python_loop": "a per-sample Python loop over loss lists, like the official code's bookkeeping",
}


def variant_notes(names) -> list[str]:
    """One line per variant name present in a table, saying what it runs."""
    notes = []
    for name in dict.fromkeys(names):
        base = name.split("[")[0]  # IES.step[native] -> IES.step
        if base in ("IES.step", "IES"):
            what = f"the selector on the {name[len(base) + 1:-1]} backend"
        else:
            what = VARIANTS.get(name)
        if what:
            notes.append(f"`{name}`: {what}")
    return ["Variants: " + "; ".join(notes) + ".", ""] if notes else []


def kernel_section(results: list[dict]) -> list[str]:
    if not results:
        return []
    eager = {
        (r["N"], r["C"], r["dtype"], r["direction"]): r.get("time_s")
        for r in results if r["variant"] == "torch_eager"
    }
    rows = []
    for r in sorted(results, key=lambda r: (r["direction"], r["dtype"], r["N"], r["C"], r["variant"])):
        base = eager.get((r["N"], r["C"], r["dtype"], r["direction"]))
        t = r.get("time_s")
        rows.append([
            r["variant"], str(r["N"]), str(r["C"]), r["dtype"], r["direction"], fmt_time(t), fmt_time(r.get("time_min_s")),
            fmt(r.get("gbps"), ".1f"), fmt(100 * r["copy_fraction"] if "copy_fraction" in r else None, ".1f", "%"),
            fmt(base / t if base and t else None, ".2f", "×"),
        ])
    copy = results[0].get("copy_gbps")
    return [
        "#### Fused loss + ring write (kernel throughput)",
        "",
        f"Copy bandwidth measured in the same run: {fmt(copy, '.1f')} GB/s (read + write); "
        "'of copy BW' = GB/s over it.",
        "",
        *table(["variant", "N", "C", "dtype", "pass", "median", "min", "GB/s", "of copy BW", "vs torch eager"], rows),
        "",
        *variant_notes(r["variant"] for r in results),
    ]


def compaction_section(results: list[dict]) -> list[str]:
    if not results:
        return []
    rows = [
        [r["variant"], str(r["N"]), fmt_time(r.get("time_s")), fmt_time(r.get("time_min_s")),
         "n/a (CPU)" if r.get("host_sync") is None else fmt(r["host_sync"])]
        for r in sorted(results, key=lambda r: (r["N"], r["variant"]))
    ]
    return ["#### Compaction (keep mask → index list)", "", *table(["variant", "N", "median", "min", "host sync"], rows), "",
            *variant_notes(r["variant"] for r in results)]


def step_section(results: list[dict]) -> list[str]:
    if not results:
        return []
    rows = [
        [r["variant"], str(r["N"]), fmt_time(r.get("time_s")), fmt_time(r.get("time_min_s")), str(r.get("mastered", "–")), r.get("device", "")]
        for r in sorted(results, key=lambda r: (r["N"], r["variant"]))
    ]
    return ["#### `IES.step()` vs a Python loop", "",
            *table(["implementation", "N", "median", "min", "mastered", "ran on"], rows), "",
            *variant_notes(r["variant"] for r in results)]


def epoch_section(results: list[dict]) -> list[str]:
    if not results:
        return []
    rows = []
    for r in sorted(results, key=lambda r: (r["loader"], r["batch"], -r["kept_fraction"])):
        rows.append([
            r["loader"], str(r["batch"]), str(r["N"]), fmt(r["kept_fraction"], ".2f"), fmt_time(r.get("time_s")),
            fmt_time(r.get("time_min_s")),
            fmt(r.get("speedup"), ".2f", "×"), fmt(r.get("ideal_speedup"), ".2f", "×"), fmt(r.get("efficiency"), ".2f"),
            fmt(r.get("efficiency_min"), ".2f"),
            fmt(1e3 * r["F_s"], ".3f"), fmt(1e3 * r["B_s"], ".3f"), fmt(1e3 * r["F_score_s"], ".3f"),
        ])
    models = sorted({r.get("model", "?") for r in results})
    samplers = sorted({r.get("loader_impl", "?") for r in results})
    return [
        "#### Epoch time, ResNet-18 (CIFAR variant), CIFAR-shaped synthetic data",
        "",
        f"Model: {', '.join(models)}; sampler: {', '.join(samplers)}. "
        "Speedup = median epoch at k = 1 / median epoch at k; ideal = 1 / (k + (1−k)·F_score/(F+B)); "
        "efficiency = speedup / ideal; efficiency (min) uses the fastest rounds. F, B, F_score in ms per sample "
        "(median over batches). An efficiency above 1.0 is not an error: the ideal counts only the per-sample "
        "forward, backward and scoring costs, while the epoch also has costs that shrink with the kept set and "
        "that the ideal leaves out (optimizer steps, batch loading), and per-batch medians differ from an "
        "epoch's mix of batches; on a shared CPU, noise adds to it.",
        "",
        *table(["loader", "batch", "samples", "kept k", "epoch (median)", "min", "speedup", "ideal",
                "efficiency", "efficiency (min)", "F", "B", "F_score"], rows),
        "",
    ]


def memory_section(results: list[dict]) -> list[str]:
    if not results:
        return []
    rows = [
        [r["variant"], str(r["N"]), f"{r['order']}+{r['window']}", fmt(r["state_bytes_per_sample"], ".1f"),
         fmt(r["with_kept_buffer_bytes_per_sample"], ".1f"), fmt_time(r.get("time_s"))]
        for r in sorted(results, key=lambda r: (r["N"], r["variant"]))
    ]
    return ["#### Selector device memory", "",
            *table(["selector", "N", "order+window", "state B/sample", "with kept-index buffer B/sample",
                    "kept_indices_padded() median"], rows), "",
            *variant_notes(r["variant"] for r in results)]


SECTIONS = {"kernel": kernel_section, "compaction": compaction_section, "step": step_section,
            "memory": memory_section, "epoch": epoch_section}


def render(data: dict, label=None) -> str:
    by_bench: dict[str, list[dict]] = {name: [] for name in SECTIONS}
    for result in data.get("benchmarks", []):
        info = result.get("extra_info", {})
        if info.get("bench") in by_bench:
            by_bench[info["bench"]].append(info)
    lines = header_lines(data, label)
    for name, section in SECTIONS.items():
        lines += section(by_bench[name])
    if not any(by_bench.values()):
        lines.append("(no results from this suite in the file)")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark --benchmark-json output file(s)")
    parser.add_argument("--label", help="section title (default: the device name)")
    parser.add_argument("-o", "--output", type=Path, help="write the Markdown here instead of stdout")
    args = parser.parse_args(argv)
    parts = []
    for path in args.json:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            parser.error(f"cannot read {path}: {exc}")
        parts.append(render(data, args.label))
    text = "\n".join(parts)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
