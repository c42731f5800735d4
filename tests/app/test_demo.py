import pytest

from ies_fast.app.cli import main
from ies_fast.app.demo import DemoConfig, format_table, load_digits_split, run


def test_demo_ies_saves_backward_passes_at_equal_accuracy():
    data = load_digits_split()
    config = DemoConfig(epochs=40)
    base = [run(config, 0.0, s, data) for s in (0, 1)]
    ies = [run(config, config.delta, s, data) for s in (0, 1)]
    total = config.epochs * len(data[1])
    saved = 1 - sum(r.backward_samples for r in ies) / (2 * total)
    assert saved >= 0.25
    assert all(r.backward_samples == total for r in base)
    acc_base = sum(r.test_acc for r in base) / 2
    acc_ies = sum(r.test_acc for r in ies) / 2
    assert acc_ies >= acc_base - 0.01
    assert all(r.scored_samples > 0 for r in ies)
    assert "IES" in format_table(base, ies, config.epochs, len(data[1]))


def test_cli_demo_writes_table_and_plot(tmp_path, capsys):
    plot = tmp_path / "demo.png"
    assert main(["demo", "--epochs", "8", "--seeds", "1", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "IES" in out
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("argv", [["demo", "--epochs", "0"], ["demo", "--epochs", "x"], ["nope"]])
def test_cli_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_negative_delta(capsys):
    assert main(["demo", "--delta", "-1", "--plot", ""]) == 2
    assert "--delta" in capsys.readouterr().err


def test_cli_compare_digits_prints_every_selector(tmp_path, capsys):
    plot = tmp_path / "compare.png"
    argv = ["compare", "--dataset", "digits", "--epochs", "6", "--seeds", "0", "--plot", str(plot),
            "--out", str(tmp_path / "runs")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for name in ("baseline", "IES", "InfoBatch", "random removal"):
        assert name in out
    assert plot.stat().st_size > 1000


def _hide(monkeypatch, *modules):
    """Make ``modules`` look uninstalled (import fails, find_spec is None)."""
    import sys

    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_demo_without_matplotlib_prints_the_table_and_says_the_plot_was_skipped(tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "matplotlib", "matplotlib.pyplot")
    plot = tmp_path / "demo.png"
    assert main(["demo", "--epochs", "2", "--seeds", "1", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    first, table = out.splitlines()[0], out.split("\n", 1)[1]
    assert "skipped" in first and "matplotlib" in first and ".[demo]" in first, "said up front, before training"
    assert "baseline" in table and "IES" in table
    assert not plot.exists()


def test_demo_without_scikit_learn_fails_in_one_line_before_any_training(monkeypatch, capsys):
    import ies_fast.app.demo as demo

    _hide(monkeypatch, "sklearn", "sklearn.datasets")
    monkeypatch.setattr(demo, "run", lambda *a, **k: pytest.fail("trained without scikit-learn"))
    with pytest.raises(ImportError) as exc:
        demo.main(DemoConfig(epochs=2, seeds=(0,)), plot_path="")
    message = str(exc.value)
    assert len(message.splitlines()) == 1 and "scikit-learn" in message and ".[demo]" in message


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots()


def test_excluded_panel_names_the_total_has_a_fraction_axis_and_the_spread_over_seeds():
    from ies_fast.app.plots import excluded_panel

    plt, (fig, ax) = _figure()
    excluded_panel(ax, [1, 2, 3], [[0, 10, 20], [0, 30, 40], [0, 20, 60]], 200)
    fig.canvas.draw()
    assert "of 200" in ax.get_ylabel() and ax.get_ylim() == (0, 200)
    (line,) = ax.get_lines()
    assert list(line.get_ydata()) == [0, 20, 40], "the mean over seeds"
    (band,) = ax.collections  # min-max over seeds
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == 0 and ys.max() == 60
    (frac,) = ax.child_axes
    assert "%" in frac.get_ylabel()
    assert all(float(t).is_integer() for t in ax.get_xticks()), "whole-number epoch ticks"
    plt.close(fig)


def test_one_run_draws_no_band_and_whole_epoch_ticks():
    from ies_fast.app.plots import seed_band

    plt, (fig, ax) = _figure()
    seed_band(ax, [1, 2, 3, 4], [[90.0, 91.0, 92.5, 93.0]], color="C0")
    fig.canvas.draw()
    assert not ax.collections and all(float(t).is_integer() for t in ax.get_xticks())
    plt.close(fig)


def test_demo_plot_shows_the_excluded_fraction_and_seed_spread(tmp_path, monkeypatch):
    import ies_fast.app.demo as demo
    import ies_fast.app.plots as plots

    drawn = {}
    real = plots.excluded_panel
    monkeypatch.setattr(plots, "excluded_panel", lambda ax, e, runs, n, **k: (drawn.update(runs=runs, n=n),
                                                                             real(ax, e, runs, n, **k)))
    data = load_digits_split()
    config = DemoConfig(epochs=7)
    runs = [run(config, config.delta, s, data) for s in (0, 1)]
    demo.plot([run(config, 0.0, 0, data)], runs, str(tmp_path / "d.png"))
    assert drawn["n"] == len(data[1]) and drawn["runs"] == [r.removed_curve for r in runs]
    assert (tmp_path / "d.png").stat().st_size > 1000


def test_cli_demo_without_scikit_learn_exits_2_with_one_line(monkeypatch, capsys):
    import ies_fast.app.demo as demo

    _hide(monkeypatch, "sklearn", "sklearn.datasets")
    monkeypatch.setattr(demo, "run", lambda *a, **k: pytest.fail("trained without scikit-learn"))
    assert main(["demo", "--plot", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ies-fast: error:") and "scikit-learn" in err
