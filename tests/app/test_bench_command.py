"""``ies-fast bench`` runs the benchmark suite at CPU sizes here (CI), writes its JSON
and Markdown with the bandwidth bound of each measured kernel, refuses what it
cannot do in one line (exit 2), and writes the README's GPU table only from GPU
results."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from ies_fast.app import bench

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "ies_fast.app.cli", "bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_bench_runs_the_small_sizes_on_cpu(tmp_path):
    done = _cli("--only", "compaction-step", "no-sync", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["size"] == "small"
    assert [p["name"] for p in data["phases"]] == ["compaction-step", "no-sync"]
    assert data["phases"][0]["outcome"] == "ok" and data["phases"][1]["outcome"].startswith("skipped")
    benches = {r["extra_info"]["bench"] for r in data["benchmarks"]}
    assert {"compaction", "step"} <= benches
    info = data["machine_info"]["ies_bench"]
    assert {"device", "driver", "torch", "triton"} <= info.keys()
    md = (tmp_path / "bench.md").read_text()
    assert "Measured time over the bandwidth lower bound" in md
    assert "| compaction | nonzero |" in md and "| step | IES.step[" in md


def test_bench_refuses_in_one_line(tmp_path):
    import torch

    if not torch.cuda.is_available():
        done = _cli("--size", "gpu", "--out", str(tmp_path))
        assert done.returncode == 2 and done.stderr.strip() == "ies-fast: error: --size gpu needs a CUDA device"
        done = _cli("--readme", "README.md", "--out", str(tmp_path))
        assert done.returncode == 2 and "GPU results only" in done.stderr
    done = _cli("--budget", "0", "--out", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip().endswith("--budget must be > 0 seconds, got 0.0")
    assert not (tmp_path / "bench.json").exists()


def test_bytes_model_and_bound():
    kernel = dict(bench="kernel", variant="fused_triton", N=4096, C=1000, dtype="bf16", direction="fwd",
                  bytes_moved=8_192_000 + 4096 * 33, time_s=20e-6)
    compaction = dict(bench="compaction", variant="nonzero", N=1_000_000, kept_fraction=0.5, time_s=1e-3)
    step = dict(bench="step", variant="IES.step[native]", N=1_000_000, time_s=2e-3)
    loop = dict(bench="step", variant="python_loop", N=50_000, time_s=1.0)
    assert bench.bytes_model(kernel) == 8_192_000 + 4096 * 33
    assert bench.bytes_model(compaction) == 1_000_000 * 5
    assert bench.bytes_model(step) == 1_000_000 * (4 * 5 + 8)
    assert bench.bytes_model(loop) is None
    rows = bench.bound_rows([kernel, compaction, step, loop], copy_gbps=1000.0)
    assert len(rows) == 3
    assert rows[1] == ["compaction", "nonzero", "N=1000000", "5.00 MB", "5.0 µs", "1000.0 µs", "200.0×"]


def test_readme_gpu_table_is_replaced_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{bench.README_BEGIN}\nold\n{bench.README_END}\n\nafter\n")
    bench.write_readme(readme, "### H100\n\n| a |\n")
    text = readme.read_text()
    assert "old" not in text and "| a |" in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    real = (ROOT / "docs" / "results.md").read_text()  # the GPU table lives with the other measurements
    assert bench.README_BEGIN in real and bench.README_END in real and "ies-fast bench" in real


def test_phase_outcomes(tmp_path):
    suite = tmp_path / "test_phase.py"
    suite.write_text("import pytest\n\ndef test_skip():\n    pytest.skip('x')\n\n"
                     "def test_fail():\n    assert False\n")
    outcome, _ = bench.run_phase((str(suite),), "small", tmp_path / "p.json", timeout=300)
    assert outcome.startswith("failed (rc 1)")
    suite.write_text("import pytest\n\ndef test_skip():\n    pytest.skip('x')\n")
    assert bench.run_phase((str(suite),), "small", tmp_path / "p.json", timeout=300)[0].startswith("skipped")
    suite.write_text("import time\n\ndef test_slow():\n    time.sleep(60)\n")
    assert bench.run_phase((str(suite),), "small", tmp_path / "p.json", timeout=5)[0] == "timed out"


def test_every_phase_names_files_that_exist():
    """A moved test file would make a phase run nothing (pytest exit 4)."""
    for name, files, _share in bench.PHASES:
        for f in files:
            assert (ROOT / f).is_file(), f"bench phase {name!r} names {f}, which does not exist"
