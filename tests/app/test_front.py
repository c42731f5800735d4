"""``ies-fast sweep --front`` (ies_fast.app.train.front): the Pareto logic, the table
(spread verdicts, one-seed tables), the plot's one line per method, IES variants'
folders, and ``--eval-every``; plus the compare/sweep clock and plot placement."""
import argparse
import dataclasses
import json
import math

import pytest

from _support.fake_config import FakeConfig
from ies_fast.app.cli import main
from ies_fast.app.train import compare as cmp
from ies_fast.app.train import front
from ies_fast.app.train import sweep as sw


def fake_train(config):
    """Saved fraction grows with the budget; accuracy falls with it, less for IES; anneal
    gives accuracy back. Times: CPU ∝ kept; the test pass adds 2 s."""
    saved = {"none": 0.0, "ies": min(0.9, config.delta), "infobatch": 0.6 * config.prune_ratio,
             "random": config.random_ratio}[config.selector]
    loss = {"ies": 0.02, "infobatch": 0.05, "random": 0.08}.get(config.selector, 0.0) * saved
    acc = 0.90 - loss + 0.01 * config.anneal + 0.001 * config.seed
    train = 10.0 * (1 - saved) + 0.1 * config.seed
    return {"test_acc": acc, "backward_saved_fraction": saved, "wall_time_s": train + 2.5,
            "cpu_time_s": train + 2.0, "train_cpu_time_s": train}


def test_pareto_front_on_made_up_points():
    # (time, accuracy): 0 dominated by 1 (faster and more accurate); 2 ties 1 on accuracy but slower;
    # 3 slowest and most accurate; 4 fastest and least accurate
    xs, ys = [5.0, 4.0, 6.0, 9.0, 1.0], [0.80, 0.85, 0.85, 0.90, 0.70]
    assert front.pareto_front(xs, ys, larger_x_better=False) == [4, 1, 3]
    assert front.pareto_front([1.0, 1.0], [0.5, 0.5], larger_x_better=False) == [0, 1], "equal points both stay"
    rows = sw.sweep(FakeConfig(), deltas=[0.2, 0.4], prune_ratios=[0.3, 0.5], random_ratios=[0.3], seeds=[0, 1],
                    train_fn=fake_train)
    pts = {a["label"]: a for a in front.points(rows, "cpu")}
    assert all(a["on_front"] for a in pts.values()), "within each method a larger budget is faster and less accurate"
    # made-up aggregate where the larger budget is both slower and less accurate: off the front
    worse = [dict(r, cpu_time_s=r["cpu_time_s"] + (20 if r["param"] == 0.4 else 0)) for r in rows]
    pts = {a["label"]: a for a in front.points(worse, "cpu")}
    assert not pts["IES δ=0.4"]["on_front"] and pts["IES δ=0.2"]["on_front"]
    assert pts["IES δ=0.2"]["train_speedup"] == pytest.approx(10.05 / (10.0 * 0.8 + 0.05))


def test_table_says_which_differences_exceed_the_seed_spread():
    import re

    rows = sw.sweep(FakeConfig(), deltas=[0.2, 0.4], prune_ratios=[0.3, 0.5], random_ratios=[0.3, 0.5],
                    seeds=[0, 1, 2], variants=[{"anneal": 0.4}], train_fn=fake_train)
    lines = front.format_table(rows, "cpu", tolerance=0.2, title="digits").splitlines()
    assert lines[0].startswith("front on digits: 3 seeds; mean ± sd over seeds; times in CPU time")
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[3:12]]
    body = {(c[0], c[1]): c for c in cells}
    assert [c[0] for c in cells] == ["baseline"] + ["IES"] * 2 + ["IES anneal=0.4"] * 2 + ["InfoBatch"] * 2 + [
        "random removal"] * 2
    assert body[("baseline", "-")][3] == "90.10 ± 0.10" and body[("baseline", "-")][4] == "-"
    # seeds spread 0.1 points: a 0.4-point loss is beyond it, the variant's +0.00 within it
    assert body[("IES", "δ=0.2")][4] == "-0.40 (beyond spread)"
    assert body[("IES anneal=0.4", "δ=0.2")][4] == "+0.00 (within spread)"
    assert body[("random removal", "ratio=0.5")][4] == "-4.00 (beyond spread)"
    assert body[("IES", "δ=0.2")][8] == "1.25x / 1.20x"  # training 10.1 / 8.1 s; total 12.1 / 10.1 s
    assert body[("IES", "δ=0.2")][6] == "8.1 ± 0.1" and body[("IES", "δ=0.2")][9] == "*"
    assert lines[-5].startswith("fastest point within 0.2 accuracy points of the baseline (90.10%)")
    assert lines[-4:] == ["  IES: none", "  IES anneal=0.4: δ=0.2, 90.10%, 10.1 s (1.20x; training only 1.25x)",
                          "  InfoBatch: none", "  random removal: none"]


def test_one_seed_table_has_no_spread():
    rows = sw.sweep(FakeConfig(), deltas=[0.2], prune_ratios=[0.5], random_ratios=[0.5], seeds=[0],
                    train_fn=fake_train)
    for text in (front.format_table(rows), cmp.format_table(rows), sw.recommendation(rows)):
        assert "±" not in text and "1 seeds" not in text and "± 0.00" not in text
    assert "1 seed;" in front.format_table(rows) and "(1 seed)" in sw.recommendation(rows)
    assert "-0.40\n" not in front.format_table(rows) and "(within spread)" not in front.format_table(rows)


def test_plot_has_one_line_per_method_and_the_baseline_band(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sw.sweep(FakeConfig(), deltas=[0.2, 0.4], prune_ratios=[0.3, 0.5], random_ratios=[0.3, 0.5],
                    seeds=[0, 1], variants=[{"anneal": 0.1}], train_fn=fake_train)
    fig, ax = plt.subplots()
    drawn = front.draw(ax, front.points(rows, "cpu"))
    assert drawn == ["IES", "IES anneal=0.1", "InfoBatch", "random removal"]
    assert len(ax.containers) == 4, "one errorbar line per method"
    assert all(len(c.lines[0].get_xdata()) == 2 for c in ax.containers), "two budgets on each line"
    labels = ax.get_legend_handles_labels()[1]
    assert labels[0].startswith("baseline (") and labels[1:] == drawn
    assert len(ax.patches) == 1, "the baseline's ± sd band"
    plt.close(fig)
    path = front.plot(rows, str(tmp_path / "front.png"), "cpu", "digits")
    assert (tmp_path / "front.png").stat().st_size > 5000 and path.endswith("front.png")


def test_variants_run_in_their_own_folders_and_are_checked():
    calls = []
    rows = sw.sweep(FakeConfig(), deltas=[0.2, 0.4], prune_ratios=[], random_ratios=[], seeds=[0],
                    variants=[{"anneal": 0.1}, {"anneal": 0.2, "delta": 0.3}],
                    train_fn=lambda c: calls.append(c) or fake_train(c))
    assert [(r["selector"], r["param"], r["variant"]) for r in rows] == [
        ("none", None, ""), ("ies", 0.2, ""), ("ies", 0.4, ""), ("ies", 0.2, "anneal=0.1"),
        ("ies", 0.4, "anneal=0.1"), ("ies", 0.3, "anneal=0.2")]
    assert [c.anneal for c in calls] == [0.0, 0.0, 0.0, 0.1, 0.1, 0.2]
    assert sw.run_folder(calls[3], {"anneal": 0.1}) == "ies-delta0.2-anneal0.1-seed0"
    assert sw.run_folder(calls[1]) == "ies-delta0.2-seed0"
    assert front.parse_variant("order=1, window=2") == {"order": 1, "window": 2}
    assert front.variant_folder({"threshold": "relative", "delta": 1.0}) == "-thresholdrelative"
    for bad in ("order=x", "speed=3", "order=1,order=2", ""):
        with pytest.raises(ValueError, match="--ies-variant"):
            front.parse_variant(bad)
    with pytest.raises(ValueError, match="--ies-variant"):
        front.check_variants([{"delta": 0.3}])


def test_cli_front_on_digits(tmp_path, capsys):
    out = tmp_path / "front"
    argv = ["sweep", "--front", "--dataset", "digits", "--epochs", "2", "--eval-every", "2", "--deltas", "0.05", "0.2",
            "--prune-ratios", "0.3", "0.5", "--random-ratios", "0.3", "0.5", "--seeds", "0", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "test pass every 2 epochs and after the last" in text and "times in CPU time" in text
    for method in ("baseline", "IES ", "InfoBatch", "random removal"):
        assert sum(line.startswith(method) for line in text.splitlines()) == (1 if method == "baseline" else 2), method
    assert "±" not in text, "one seed: no spread"
    assert (out / "front.png").stat().st_size > 5000
    summary = json.loads((out / "none-seed0" / "summary.json").read_text())
    assert summary["eval_every"] == 2 and 0 < summary["train_cpu_time_s"] <= summary["cpu_time_s"]


def test_eval_every_tests_every_n_epochs_and_after_the_last(tmp_path):
    from ies_fast.app.train.config import TrainConfig, resolve
    from ies_fast.app.train.loop import train

    s = train(TrainConfig(dataset="digits", epochs=5, eval_every=2, out=str(tmp_path / "r"), progress=False,
                          plot=False))
    tested = [not math.isnan(r["test_acc"]) for r in s["history"]]
    assert tested == [False, True, False, True, True]
    assert s["test_acc"] == s["history"][-1]["test_acc"] > 0.5 and s["best_test_acc"] >= s["test_acc"]
    every = train(TrainConfig(dataset="digits", epochs=5, eval_every=1, out=str(tmp_path / "e"), progress=False,
                              plot=False))
    assert every["test_acc"] == s["test_acc"], "the test pass does not change training"
    assert [r["train_loss"] for r in every["history"]] == [r["train_loss"] for r in s["history"]]
    assert resolve(TrainConfig(dataset="fashion-mnist"), need_data=False).eval_every == 5
    assert resolve(TrainConfig(dataset="fashion-mnist", early_stop="patience"), need_data=False).eval_every == 1
    assert resolve(TrainConfig(dataset="digits")).eval_every == 1
    with pytest.raises(ValueError, match="--eval-every"):
        resolve(TrainConfig(dataset="digits", eval_every=2, early_stop="patience"))
    with pytest.raises(ValueError, match="--eval-every"):
        resolve(TrainConfig(dataset="digits", eval_every=0))


def test_compare_writes_its_plot_into_out_and_defaults_to_cpu_time(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Config:
        dataset: str = "digits"
        seed: int = 0
        selector: str = "ies"
        delta: float = 0.2
        prune_ratio: float = 0.5
        random_ratio: float = 0.3
        anneal: float = 0.0
        out: str = str(tmp_path / "cmp")

    parser = argparse.ArgumentParser()
    cmp.add_arguments(parser)
    printed = []
    cmp.run(parser.parse_args(["--seeds", "0", "1"]), Config(), train_fn=fake_train, print_fn=printed.append)
    assert (tmp_path / "cmp" / "compare.png").exists()
    assert any("CPU time (s)" in p for p in printed)
    old = lambda c: {k: v for k, v in fake_train(c).items() if k != "cpu_time_s"}  # runs from before CPU time
    printed.clear()
    cmp.run(parser.parse_args(["--seeds", "0", "--plot", ""]), Config(), train_fn=old, print_fn=printed.append)
    assert any(p.startswith("clock: wall time") for p in printed) and any("wall time (s)" in p for p in printed)


def test_sweep_help_says_how_delta_and_deltas_differ(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the training option --delta (one run's δ) is not used by a sweep" in text
    assert "--front" in text and "--ies-variant" in text


def test_only_finished_reads_back_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["sweep", "--front", "--dataset", "digits", "--epochs", "2", "--deltas", "0.2", "--prune-ratios",
            "--random-ratios", "--seeds", "0", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv + ["--seeds", "0", "1", "--only-finished", "--plot", ""]) == 0
    text = capsys.readouterr().out
    assert "IES δ=0.2 seed 1 skipped" in text and "has no finished run" in text
    assert not (out / "ies-delta0.2-seed1").exists() and not (out / "none-seed1").exists()
    assert any(line.startswith("IES ") and " 1 " in line for line in text.splitlines())
