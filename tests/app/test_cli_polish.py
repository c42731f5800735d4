"""The command line as a new user meets it (issue 21, "fix these on the way"): a
config printed without data, recipes that do not trip their own warning, help
texts that keep their promises, one meaning of ``--seeds``, readable epoch lines,
no escape codes without a terminal, a bench report with one bandwidth figure, and
plots that show every selector and name the data."""
from __future__ import annotations

import io
import json
import math
import sys

import pytest

from ies_fast.app.cli import build_parser, main


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


# ---- train --print-config ----------------------------------------------------------------
@pytest.mark.parametrize("dataset,model", [("cifar10", "resnet18"), ("imagenet", "resnet101")])
def test_print_config_needs_no_data_dir(dataset, model, capsys):
    assert main(["train", "--dataset", dataset, "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["dataset"] == dataset and config["model"] == model and config["data_dir"] is None


def test_training_still_needs_the_data_dir(capsys):
    assert main(["train", "--dataset", "cifar10", "--out", "unused"]) == 2
    assert "--data-dir is required" in capsys.readouterr().err


# ---- the recipes do not trip their own "fewer than one batch" warning ----------------------
def test_small_recipes_keep_at_least_one_batch():
    """The warning fires when the kept set is below one batch; the digits recipe's
    kept set fell to 13 of 1,438 without a floor (21 warnings in one run), so the
    recipes with a constant learning rate keep a floor of at least one batch."""
    from ies_fast.app.train.config import TrainConfig, resolve
    from ies_fast.app.train.datasets import load_dataset

    for name, n in (("digits", load_dataset("digits").num_train), ("mnist1d", 4000)):  # mnist1d: its generator's
        c = resolve(TrainConfig(dataset=name))
        assert math.ceil(c.min_kept * n) >= c.batch_size, (name, c.min_kept, n, c.batch_size)


# ---- help texts --------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "compare", "sweep"])
def test_the_recipe_promised_in_help_is_listed(command, capsys):
    text = _help(capsys, command)
    assert "listed below" in text and "recipes (what a flag left out becomes" in text
    assert "mnist1d" in text.split("recipes (")[1]


def test_demo_help_shows_defaults_and_bench_help_its_budget(capsys):
    demo = _help(capsys, "demo")
    assert "(default: 60)" in demo and "(default: 0.0002)" in demo and "(default: ies_demo.png)" in demo
    assert "(default: 0 1 2)" in demo
    bench = _help(capsys, "bench")
    assert "the issue" not in bench and "570" in bench and "(default: auto)" in bench


# ---- --seeds: one meaning ------------------------------------------------------------------
@pytest.mark.parametrize("command", ["demo", "compare", "sweep"])
def test_seeds_is_a_list_and_num_seeds_a_count_everywhere(command):
    parser = build_parser()
    assert parser.parse_args([command]).seeds == [0, 1, 2]
    assert parser.parse_args([command, "--seeds", "4", "7"]).seeds == [4, 7]
    assert parser.parse_args([command, "--num-seeds", "2"]).seeds == [0, 1]


@pytest.mark.parametrize("argv", [["--seeds", "0", "--num-seeds", "2"], ["--num-seeds", "0"]])
def test_bad_seed_options_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["compare", *argv])
    assert exc.value.code == 2 and "error" in capsys.readouterr().err


def test_demo_says_what_a_single_seed_value_means_now(monkeypatch, capsys):
    import ies_fast.app.demo as demo

    seen = []
    monkeypatch.setattr(demo, "main", lambda config, plot_path: seen.append(config.seeds))
    assert main(["demo", "--seeds", "3", "--plot", ""]) == 0
    assert seen == [(3,)] and "--num-seeds 3 runs seeds 0 .. 2" in capsys.readouterr().err
    assert main(["demo", "--num-seeds", "3", "--plot", ""]) == 0
    assert seen[-1] == (0, 1, 2) and capsys.readouterr().err == ""


# ---- sweep wording -------------------------------------------------------------------------
def _sweep_rows(base_sd: bool = True):
    rows = []
    for seed in (0, 1):
        acc0 = 0.90 + (0.002 * seed if base_sd else 0.0)
        rows.append(dict(selector="none", param=None, seed=seed, accuracy=acc0, backward_saved=0.0, wall_time_s=10.0))
        for delta, acc, saved in ((1e-3, 0.899, 0.4), (1e-2, 0.897, 0.6)):
            rows.append(dict(selector="ies", param=delta, seed=seed, accuracy=acc, backward_saved=saved,
                             wall_time_s=10.0 * (1 - saved)))
        rows.append(dict(selector="random", param=0.5, seed=seed, accuracy=0.89, backward_saved=0.5, wall_time_s=5.0))
    return rows


def test_sweep_names_a_speed_up_not_a_wall_time():
    from ies_fast.app.train import sweep as sw

    text = sw.recommendation(_sweep_rows(), 0.5)
    assert "speed-up 2.50x over the baseline" in text and "x wall time" not in text


# ---- epoch lines and progress bars ---------------------------------------------------------
def test_epoch_line_times_have_enough_digits():
    from ies_fast.app.train.loop import _epoch_line

    row = dict(epoch=3, train_loss=0.5, test_acc=0.9, kept_fraction=0.5, backward_saved_fraction=0.2,
               time_train_s=0.0123, time_score_s=0.00042, time_eval_s=2.5)
    line = _epoch_line(row, 10, {})
    assert "train 12.3ms score 0.4ms eval 2.50s" in line


def test_bars_are_drawn_on_a_terminal_only(monkeypatch):
    from ies_fast.app.train import loop

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert loop._bar(3, True).disable
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not loop._bar(3, True).disable and loop._bar(3, False).disable


def test_redirected_output_has_plain_epoch_lines_and_no_escape_codes(tmp_path, monkeypatch):
    err = tmp_path / "err.txt"
    with open(err, "w") as f:  # a file, as with 2> log.txt: not a terminal
        monkeypatch.setattr(sys, "stderr", f)
        assert main(["train", "--dataset", "digits", "--epochs", "2", "--out", str(tmp_path / "run"), "--no-plot"]) == 0
    text = err.read_text()
    lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2") and "ms" in lines[0] + lines[1]
    assert "\x1b" not in text and "\r" not in text, text[:500]


def test_redirected_output_reports_progress_inside_an_epoch(tmp_path, monkeypatch):
    from ies_fast.app.train import progress_lines

    monkeypatch.setattr(progress_lines, "EVERY_S", 0.0)  # a line after every batch instead of every 30 s
    err = tmp_path / "err.txt"
    with open(err, "w") as f:
        monkeypatch.setattr(sys, "stderr", f)
        assert main(["train", "--dataset", "digits", "--epochs", "1", "--subset", "256", "--batch-size", "64",
                     "--out", str(tmp_path / "run"), "--no-plot"]) == 0
    lines = [line for line in err.read_text().splitlines() if line.startswith("epoch 1: ")]
    assert lines and lines[0].startswith("epoch 1: 1/") and "batches" in lines[0], err.read_text()[:500]


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_a_bad_choice_is_one_line_with_the_choices(capsys):
    err = _one_line_error(capsys, ["train", "--dataset", "fashoin-mnist", "--print-config"])
    assert "invalid choice: 'fashoin-mnist'" in err and "fashion-mnist" in err and "usage" not in err


def test_long_flags_must_be_spelled_out(capsys):
    err = _one_line_error(capsys, ["train", "--epoch", "3", "--print-config"])
    assert "--epoch" in err


def test_train_seeds_suggests_seed(capsys):
    assert "did you mean --seed" in _one_line_error(capsys, ["train", "--seeds", "1", "--print-config"])
    assert main(["train", "--seed", "1", "--print-config"]) == 0


def test_train_help_names_resnet8_the_dataset_default_and_a_quick_run(capsys):
    flat = " ".join(_help(capsys, "train").split())
    assert "resnet8" in flat and "(default: digits)" in flat and "takes minutes on a CPU" in flat


# ---- bench report --------------------------------------------------------------------------
def _bench_data(copy_gbps=31.5):
    kernel = dict(bench="kernel", variant="torch_eager", N=4096, C=10, dtype="fp32", direction="fwd", time_s=1e-4,
                  time_min_s=1e-4, gbps=5.0, copy_fraction=0.2, copy_gbps=copy_gbps, bytes_moved=500_000)
    epoch = dict(bench="epoch", variant="torch-B64", loader="torch", batch=64, N=256, kept_fraction=0.3, time_s=0.1,
                 time_min_s=0.1, speedup=3.1, ideal_speedup=2.9, efficiency=1.07, efficiency_min=1.05,
                 F_s=1e-4, B_s=2e-4, F_score_s=5e-5)
    return {"machine_info": {"ies_bench": {"device": "cpu"}},
            "benchmarks": [{"extra_info": kernel}, {"extra_info": epoch}]}


def test_bench_report_gives_one_bandwidth_and_explains_its_terms():
    from ies_fast.app import bench

    text = bench.render([_bench_data(31.5)], [("kernel", "ok", 1.0)], copy_gbps=44.9)
    assert "31.5 GB/s" in text and "44.9" not in text, "one copy bandwidth: the kernel phase's"
    assert "An efficiency above 1.0 is not an error" in text
    assert "Variants: `torch_eager`: F.cross_entropy" in text
    without_kernel = bench.render([], [("epoch", "ok", 1.0)], copy_gbps=44.9)
    assert "44.9 GB/s, read + write, measured before the phases" in without_kernel and without_kernel.count("GB/s") == 1


# ---- plots ---------------------------------------------------------------------------------
@pytest.fixture
def figures(monkeypatch):
    """Catch the figures the plot functions save, instead of closing them."""
    import matplotlib

    matplotlib.use("Agg")
    import ies_fast.app.plots as plots

    caught = []

    def save(fig, path, dpi=100, *, layout=True):
        if layout:
            fig.tight_layout()
        fig.canvas.draw()
        caught.append(fig)
        return path

    monkeypatch.setattr(plots, "save", save)
    yield caught
    import matplotlib.pyplot as plt

    plt.close("all")


def _inside(inner, outer) -> bool:
    return inner.x0 >= outer.x0 - 1 and inner.x1 <= outer.x1 + 1 and inner.y0 >= outer.y0 - 1 and inner.y1 <= outer.y1 + 1


def test_compare_plot_shows_ies_beside_random_removal_and_names_the_data(figures):
    from ies_fast.app.train import compare as cmp

    rows = [dict(selector=s, seed=k, accuracy=0.98, backward_saved=saved, wall_time_s=1.0)
            for s, saved in (("none", 0.0), ("ies", 0.74), ("infobatch", 0.35), ("random", 0.74)) for k in (0, 1)]
    cmp.plot(rows, "unused.png", "digits (mlp, 60 epochs), IES δ=0.0002")
    fig = figures[0]
    ax = fig.axes[0]
    means = {c.get_label(): c.lines[0] for c in ax.containers}  # each selector's mean ± sd
    assert means["IES"].get_xdata()[0] != means["random removal"].get_xdata()[0], "the same x hides one of them"
    assert means["IES"].get_marker() != means["random removal"].get_marker()
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(ax.get_window_extent()), "the legend sits outside the data"
    title = fig._suptitle.get_text()
    assert "digits" in title and "δ=0.0002" in title


def test_sweep_plot_keeps_its_labels_and_shows_a_zero_sd_baseline(figures):
    from ies_fast.app.train import sweep as sw

    sw.plot(_sweep_rows(base_sd=False), "unused.png", 0.5, "mnist1d (cnn1d, 60 epochs), IES δ from 0.001 to 0.01")
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        baseline = [line for line in ax.get_lines() if line.get_label() == "baseline mean ± sd"]
        assert baseline and list(baseline[0].get_ydata()) == [90.0, 90.0], "visible although its sd is 0"
        star = [line for line in ax.get_lines() if line.get_label().startswith("chosen")][0]
        labels = [t for t in ax.texts if t.get_text() in ("0.001", "0.01", "0.5")]
        assert len(labels) == 3
        for t in labels:
            assert _inside(t.get_window_extent(renderer), ax.get_window_extent(renderer)), t.get_text()
            assert t.get_zorder() > star.get_zorder(), "the chosen δ's star does not cover its label"
    assert "mnist1d" in fig._suptitle.get_text() and "δ from 0.001" in fig._suptitle.get_text()
    assert all(not fig.legends[0].get_window_extent().overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_compare_and_sweep_titles_name_the_data_and_delta(monkeypatch, tmp_path):
    import argparse

    from ies_fast.app.train import compare as cmp
    from ies_fast.app.train import sweep as sw
    from ies_fast.app.train.config import TrainConfig, resolve

    config = resolve(TrainConfig(dataset="digits", out=str(tmp_path)))
    assert cmp.describe(config, "IES δ=0.0002") == "digits (mlp, 60 epochs), IES δ=0.0002"
    titles = []
    monkeypatch.setattr(cmp, "plot", lambda rows, path, title="", clock="wall": titles.append(title) or path)
    monkeypatch.setattr(sw, "plot", lambda rows, path, tolerance, title="", clock="wall": titles.append(title) or path)
    fake = lambda c: {"test_acc": 0.9, "backward_saved_fraction": 0.0 if c.selector == "none" else 0.5,
                      "wall_time_s": 1.0}
    for module, argv in ((cmp, ["--selectors", "none", "ies"]), (sw, ["--deltas", "1e-3", "1e-2"])):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        args = parser.parse_args([*argv, "--seeds", "0", "--plot", str(tmp_path / "p.png")])
        module.run(args, config, train_fn=fake, print_fn=lambda *a: None)
    assert titles == ["digits (mlp, 60 epochs), IES δ=0.0002", "digits (mlp, 60 epochs), IES δ from 0.001 to 0.01"]
