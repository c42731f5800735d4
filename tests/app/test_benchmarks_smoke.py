"""CI proof that the benchmark suite runs: its smoke size (the smallest shapes), in
this process, with one timed round, then ``benchmarks/report.py`` on the JSON it wrote. No timing is
asserted; only that every benchmark ran and reported its fields."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
_spec = importlib.util.spec_from_file_location("ies_bench_report", BENCH / "report.py")
report = importlib.util.module_from_spec(_spec)  # benchmarks/report.py, without touching sys.path
_spec.loader.exec_module(report)

SUITE = [f"benchmarks/test_bench_{name}.py" for name in ("kernel", "compaction", "step", "epoch")]
FIELDS = {
    "kernel": {"time_s", "time_min_s", "gbps", "copy_fraction", "copy_gbps", "bytes_moved", "N", "C", "dtype", "direction"},
    "compaction": {"time_s", "host_sync", "N"},
    "step": {"time_s", "N", "mastered"},
    "memory": {"time_s", "state_bytes_per_sample", "with_kept_buffer_bytes_per_sample"},
    "epoch": {"time_s", "F_s", "B_s", "F_score_s", "ideal_speedup", "speedup", "efficiency", "kept_fraction"},
}


@pytest.fixture(scope="module")
def suite_json(tmp_path_factory, monkeypatch_module):
    """The benchmark suite at its smoke size, run in this process (no second interpreter,
    no wall-clock limit that a busy machine could exceed), one timed round each."""
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    for name, value in dict(IES_BENCH_SIZE="smoke", IES_BENCH_ROUNDS="1").items():
        monkeypatch_module.setenv(name, value)
    monkeypatch_module.delenv("TRITON_INTERPRET", raising=False)  # interpreted Triton is too slow to time
    monkeypatch_module.chdir(ROOT)
    monkeypatch_module.setattr(sys, "path", list(sys.path))  # the suite's rootdir conftest prepends benchmarks/
    before = set(sys.modules)
    args = ["-q", "-p", "no:cacheprovider",
            "--size", "smoke", "--benchmark-min-rounds=1", "--benchmark-max-time=0", "--benchmark-warmup=off",
            f"--benchmark-json={out}", *SUITE]
    try:
        code = pytest.main(args)
    finally:
        for name in set(sys.modules) - before:  # the suite's own modules (benchutil, conftest, ...)
            if not name.startswith(("torch", "triton", "ies_fast", "numpy", "_pytest", "pytest")):
                sys.modules.pop(name, None)
    assert code == 0, f"the benchmark suite failed (pytest exit {code})"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_every_benchmark_reports_its_fields(suite_json):
    seen = {}
    for result in suite_json["benchmarks"]:
        info = result["extra_info"]
        seen.setdefault(info["bench"], []).append(info)
        missing = FIELDS[info["bench"]] - info.keys()
        assert not missing, f"{result['name']} lacks {missing}"
        assert info["time_s"] > 0
        assert {"device", "driver", "torch", "triton"} <= info.keys()
    assert set(seen) == set(FIELDS), f"benchmarks that produced no result: {set(FIELDS) - set(seen)}"
    variants = {r["variant"] for r in seen["kernel"]}
    assert {"torch_eager", "torch_compile"} <= variants
    assert {"nonzero", "torch_cumsum"} <= {r["variant"] for r in seen["compaction"]}
    assert "python_loop" in {r["variant"] for r in seen["step"]}
    assert {r["kept_fraction"] for r in seen["epoch"]} >= {1.0}
    info = suite_json["machine_info"]["ies_bench"]
    assert {"device", "driver", "torch", "triton", "size"} <= info.keys() and info["size"] == "smoke"


def test_report_renders_the_suite(suite_json):
    text = report.render(suite_json, "CPU smoke")
    assert text.startswith("### CPU smoke")
    for heading in ("Fused loss + ring write", "Compaction", "IES.step()", "Selector device memory", "Epoch time"):
        assert heading in text
    assert "torch " + suite_json["machine_info"]["ies_bench"]["torch"] in text


def _result(bench, **info):
    return {"name": bench, "extra_info": dict(bench=bench, **info)}


def test_report_computes_speedup_against_eager():
    data = {
        "machine_info": {"ies_bench": {"device": "Fake GPU", "driver": "1.0", "torch": "9", "triton": "9", "size": "gpu"}},
        "benchmarks": [
            _result("kernel", variant="torch_eager", N=4, C=8, dtype="bf16", direction="fwd", time_s=4e-6,
                    gbps=1.0, copy_fraction=0.1, copy_gbps=10.0),
            _result("kernel", variant="fused_triton", N=4, C=8, dtype="bf16", direction="fwd", time_s=1e-6,
                    gbps=4.0, copy_fraction=0.4, copy_gbps=10.0),
            _result("compaction", variant="nonzero", N=10, time_s=2e-5, host_sync=True),
        ],
    }
    text = report.render(data)
    assert "### Fake GPU" in text and "driver: 1.0" in text
    fused = next(line for line in text.splitlines() if line.startswith("| fused_triton"))
    assert "4.00×" in fused and "40.0%" in fused and "1.0 µs" in fused
    assert "| nonzero | 10 | 20.0 µs | – | yes |" in text


def test_report_cli_rejects_unreadable_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit):
        report.main([str(bad)])
    assert "cannot read" in capsys.readouterr().err
