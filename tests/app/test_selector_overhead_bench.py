"""Smoke test of benchmarks/bench_selector_overhead.py at a tiny N: every piece is
timed and reported (no timing asserted)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_selector_overhead", ROOT / "benchmarks" / "bench_selector_overhead.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

PIECES = ("step", "table", "table_write", "floor_idle", "floor_replay", "sync")


def test_every_piece_is_measured(tmp_path, capsys):
    assert bench.main(["--sizes", "3000", "--repeats", "1", "--json", str(tmp_path / "r.json")]) == 0
    (result,) = json.loads((tmp_path / "r.json").read_text())
    assert result["N"] == 3000 and 0 < result["mastered"] < 3000
    for piece in PIECES:
        assert result[piece + "_s"] >= 0 and result[piece + "_peak_bytes_per_sample"] >= 0, piece
    assert result["per_epoch_s"] == sum(result[p + "_s"] for p in ("table", "floor_idle", "sync"))
    assert result["per_epoch_x_step"] == result["per_epoch_s"] / result["step_s"]
    out = capsys.readouterr().out
    assert "floor_replay" in out and "per_epoch" in out
