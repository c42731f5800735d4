"""ies_fast.app.train.sweep (``ies-fast sweep``): the grid, one resumable folder per
point and seed, the table, the δ it names, the Pareto plot, and bad options."""
import json

import pytest

from _support.fake_config import FakeConfig
from ies_fast.app.cli import main
from ies_fast.app.train import sweep as sw


def fake_train(calls, acc_of=None):
    """Saved fraction grows with the point's parameter; accuracy falls with it."""
    def train(config):
        calls.append(config)
        saved = {"none": 0.0, "ies": min(0.9, 0.2 + 0.15 * (5 + __import__("math").log10(config.delta))),
                 "infobatch": config.prune_ratio * 0.6, "random": config.random_ratio}[config.selector]
        acc = acc_of(config, saved) if acc_of else 0.95 - 0.04 * saved ** 2 - 0.002 * config.seed
        return {"test_acc": acc, "backward_saved_fraction": saved, "wall_time_s": 10.0 * (1 - saved) + 0.1 * config.seed}
    return train


def test_log_grid_is_log_spaced_and_checked():
    assert sw.log_grid(1e-5, 1e-1, 5) == (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    assert sw.log_grid(1e-4, 1e-2, 3) == (1e-4, 1e-3, 1e-2)
    assert sw.log_grid(1e-3, 1e-1, 5) == (1e-3, 0.00316, 0.01, 0.0316, 0.1)
    assert sw.log_grid(0.01, 0.01, 1) == (0.01,)
    with pytest.raises(ValueError, match="--delta-range"):
        sw.log_grid(0, 1e-1, 5)
    with pytest.raises(ValueError, match="--delta-range"):
        sw.log_grid(1e-1, 1e-3, 5)
    with pytest.raises(ValueError, match="--delta-points"):
        sw.log_grid(1e-3, 1e-1, 1)


def test_sweep_runs_every_point_and_seed_with_its_parameter():
    calls = []
    rows = sw.sweep(FakeConfig(), deltas=[1e-2, 1e-4], prune_ratios=[0.5], random_ratios=[0.3, 0.6], seeds=[0, 1],
                    train_fn=fake_train(calls))
    got = [(r["selector"], r["param"], r["seed"]) for r in rows]
    assert got == [("none", None, 0), ("none", None, 1), ("ies", 1e-4, 0), ("ies", 1e-4, 1), ("ies", 1e-2, 0),
                   ("ies", 1e-2, 1), ("infobatch", 0.5, 0), ("infobatch", 0.5, 1), ("random", 0.3, 0),
                   ("random", 0.3, 1), ("random", 0.6, 0), ("random", 0.6, 1)]
    assert [(c.selector, c.seed) for c in calls] == [(r["selector"], r["seed"]) for r in rows]
    assert [c.delta for c in calls if c.selector == "ies"] == [1e-4, 1e-4, 1e-2, 1e-2]
    assert [c.random_ratio for c in calls if c.selector == "random"] == [0.3, 0.3, 0.6, 0.6]
    assert [sw.run_folder(c) for c in calls[::2]] == [
        "none-seed0", "ies-delta0.0001-seed0", "ies-delta0.01-seed0", "infobatch-prune0.5-seed0",
        "random-ratio0.3-seed0", "random-ratio0.6-seed0"]
    table = sw.cmp.format_table(rows).splitlines()
    assert len(table) == 2 + 6 and "IES δ=0.0001" in table[3] and "random removal ratio=0.6" in table[7]


def _rows(accs_saved, base_acc=0.90, seeds=(0, 1)):
    """Rows of a sweep: baseline at ``base_acc``, IES δ -> (accuracy, saved) (the seeds
    spread ±0.002 around the accuracy)."""
    rows = [{"selector": "none", "param": None, "seed": s, "accuracy": base_acc, "backward_saved": 0.0,
             "wall_time_s": 10.0} for s in seeds]
    for delta, (acc, saved) in accs_saved.items():
        rows += [{"selector": "ies", "param": delta, "seed": s, "accuracy": acc + (0.002 if s else -0.002),
                  "backward_saved": saved, "wall_time_s": 10.0 * (1 - saved)} for s in seeds]
    return rows


def test_best_within_names_the_delta_that_saves_most_inside_the_tolerance():
    rows = _rows({1e-4: (0.901, 0.2), 1e-3: (0.897, 0.5), 1e-2: (0.893, 0.7), 1e-1: (0.85, 0.95)})
    assert sw.best_within(rows, tolerance=0.5)["param"] == 1e-3   # 89.7 >= 89.5; 89.3 is not
    assert sw.best_within(rows, tolerance=1.0)["param"] == 1e-2
    assert sw.best_within(rows, tolerance=0.0)["param"] == 1e-4
    assert sw.best_within(rows, tolerance=10.0)["param"] == 1e-1
    assert sw.best_within(_rows({1e-1: (0.80, 0.9)}), tolerance=0.5) is None
    text = sw.recommendation(rows, 0.5)
    assert "δ=0.001" in text and "50.0% backward saved" in text and "2.00x" in text and "89.50%" in text
    assert "no point" in sw.recommendation(_rows({1e-1: (0.80, 0.9)}), 0.5)
    with pytest.raises(ValueError, match="baseline"):
        sw.best_within(rows[2:])


def test_pareto_front():
    xs, ys = [0, 10, 20, 30, 25], [90, 91, 89, 85, 88]
    assert sw.pareto_front(xs, ys, larger_x_better=True) == [1, 2, 4, 3]
    assert sw.pareto_front(xs, ys, larger_x_better=False) == [0, 1]


def test_plot_is_written(tmp_path):
    rows = sw.sweep(FakeConfig(), deltas=[1e-4, 1e-3, 1e-2], prune_ratios=[0.5], random_ratios=[0.5], seeds=[0, 1],
                    train_fn=fake_train([]))
    path = sw.plot(rows, str(tmp_path / "sweep.png"), tolerance=0.5)
    assert (tmp_path / "sweep.png").stat().st_size > 5000 and path.endswith("sweep.png")


@pytest.mark.parametrize("kw,match", [
    (dict(deltas=[0.0, 1e-3]), "--deltas"),
    (dict(deltas=[1e-3, 1e-3]), "--deltas"),
    (dict(prune_ratios=[0.95]), "--prune-ratios"),
    (dict(random_ratios=[1.0]), "--random-ratios"),
    (dict(seeds=[]), "--seeds"),
    (dict(seeds=[0, 0]), "--seeds"),
])
def test_bad_grids_raise_before_any_run(kw, match):
    calls = []
    with pytest.raises(ValueError, match=match):
        sw.sweep(FakeConfig(), **kw, train_fn=fake_train(calls))
    assert calls == []


@pytest.mark.parametrize("argv,match", [
    (["--tolerance", "-1"], "--tolerance"),
    (["--deltas", "0"], "--deltas"),
    (["--delta-range", "1e-1", "1e-5"], "--delta-range"),
    (["--prune-ratios", "0.95"], "--prune-ratios"),
    (["--seeds", "1", "1"], "--seeds"),
])
def test_cli_bad_options_exit_2_with_one_line_before_any_run(argv, match, tmp_path, capsys):
    assert main(["sweep", "--dataset", "digits", "--epochs", "2", "--out", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err
    assert not (tmp_path / "s" / "none-seed0").exists()


def test_cli_sweep_on_digits_runs_each_point_in_its_folder_and_reads_them_back(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--dataset", "digits", "--epochs", "7", "--deltas", "1e-1", "--prune-ratios", "--random-ratios",
            "0.5", "--seeds", "0", "--out", str(out), "--json", str(tmp_path / "rows.json")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    for folder in ("none-seed0", "ies-delta0.1-seed0", "random-ratio0.5-seed0"):
        assert json.loads((out / folder / "summary.json").read_text())["epochs_run"] == 7
    assert not list(out.glob("infobatch*")), "--prune-ratios with no value: no InfoBatch"
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["selector"], r["param"]) for r in rows] == [("none", None), ("ies", 0.1), ("random", 0.5)]
    assert rows[0]["backward_saved"] == 0.0 and rows[1]["backward_saved"] > 0
    assert rows[2]["backward_saved"] == pytest.approx(0.5, abs=0.01)
    assert "IES δ=0.1" in first and ("δ that saves most within 0.5 points: δ=0.1" in first or "δ: no point" in first)
    assert (out / "sweep.png").stat().st_size > 5000
    (out / "ies-delta0.1-seed0" / "checkpoint.pt").write_bytes(b"")  # read back from JSON, not the checkpoint
    assert main(argv) == 0
    again = capsys.readouterr().out
    table = lambda text: [line for line in text.splitlines() if line.split() and line.split()[-1].endswith("x")
                          and line.startswith(("baseline ", "IES ", "random "))]
    assert len(table(first)) == 3
    assert [line.split()[:5] for line in table(again)] == [line.split()[:5] for line in table(first)]
