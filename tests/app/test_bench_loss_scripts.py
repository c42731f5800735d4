"""benchmarks/bench_loss_cpu.py runs and prints the table docs/results.md
quotes (one tiny round; no timing is asserted)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"ies_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_loss_cpu_prints_the_ratio_table(capsys, monkeypatch):
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)  # leave the test process's threads alone
    load("bench_loss_cpu").main(["--rounds", "1", "--calls", "3", "--batch", "32"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\d+) \| (fwd|fwd\+bwd) \| (\d+) \| \d+ \(([\d.]+)x\) \| \d+ \(([\d.]+)x\) \|$", out, re.M)
    assert [(c, p) for c, p, *_ in rows] == [("10", "fwd"), ("10", "fwd+bwd"), ("1000", "fwd"), ("1000", "fwd+bwd")]
    assert all(float(r) > 0 for *_, a, b in rows for r in (a, b))
