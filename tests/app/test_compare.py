"""ies_fast.app.train.compare with a stand-in train(): the runs, the matching of random
removal to IES's savings, the table and the plot."""
import argparse
import dataclasses
import json

import pytest

from ies_fast.app.train import compare as cmp


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    dataset: str = "digits"
    epochs: int = 3
    seed: int = 0
    selector: str = "ies"
    random_ratio: float = 0.3


def fake_train(calls):
    saved = {"none": 0.0, "ies": 0.4, "infobatch": 0.3}

    def train(config):
        calls.append(config)
        s = saved.get(config.selector, config.random_ratio)
        return {"test_acc": 0.9 - 0.01 * config.seed - 0.05 * s, "backward_saved_fraction": s,
                "wall_time_s": 10.0 * (1 - s) + config.seed}

    return train


def test_compare_runs_every_selector_and_seed_and_matches_random_to_ies():
    calls = []
    rows = cmp.compare(FakeConfig(), seeds=(0, 1), train_fn=fake_train(calls))
    assert [(r["selector"], r["seed"]) for r in rows] == [
        (s, seed) for s in ("none", "ies", "infobatch", "random") for seed in (0, 1)
    ]
    assert calls[0].selector == "ies", "IES runs first so random removal can be matched"
    random_rows = [r for r in rows if r["selector"] == "random"]
    assert all(r["random_ratio"] == 0.4 and r["backward_saved"] == 0.4 for r in random_rows)
    assert all(c.epochs == 3 and c.dataset == "digits" for c in calls)
    rows = cmp.compare(FakeConfig(), selectors=["random"], seeds=[0], train_fn=fake_train([]))
    assert rows[0]["random_ratio"] == 0.3, "without IES the config's ratio is used"


def test_table_and_plot(tmp_path):
    rows = cmp.compare(FakeConfig(), seeds=(0, 1, 2), train_fn=fake_train([]))
    table = cmp.format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert lines[2].startswith("baseline") and "IES" in lines[3] and "InfoBatch" in lines[4] and "random removal" in lines[5]
    # baseline: acc mean 0.89 sd 0.01; time mean 11
    assert "89.00 ± 1.00" in lines[2] and "11.00 ± 1.00" in lines[2] and "1.00x" in lines[2]
    agg = {a["selector"]: a for a in cmp.aggregate(rows)}
    assert agg["ies"]["speedup"] == pytest.approx(11.0 / 7.0)
    assert agg["ies"]["backward_saved"] == pytest.approx(0.4)
    path = cmp.plot(rows, str(tmp_path / "cmp.png"))
    assert (tmp_path / "cmp.png").stat().st_size > 1000 and path.endswith("cmp.png")


def test_run_prints_table_and_writes_files(tmp_path):
    parser = argparse.ArgumentParser()
    cmp.add_arguments(parser)
    args = parser.parse_args(["--selectors", "none", "ies", "--seeds", "0", "--plot", str(tmp_path / "p.png"),
                              "--json", str(tmp_path / "rows.json")])
    out = []
    rows = cmp.run(args, FakeConfig(), train_fn=fake_train([]), print_fn=out.append)
    assert len(rows) == 2 and any("backward saved" in o for o in out)
    assert json.loads((tmp_path / "rows.json").read_text())[1]["selector"] == "ies"


def test_errors():
    with pytest.raises(ValueError, match="selectors"):
        cmp.compare(FakeConfig(), selectors=["greedy"], train_fn=fake_train([]))
    with pytest.raises(ValueError, match="seeds"):
        cmp.compare(FakeConfig(), seeds=[], train_fn=fake_train([]))
    with pytest.raises(KeyError, match="accuracy"):
        cmp.compare(FakeConfig(), selectors=["none"], seeds=[0], train_fn=lambda c: {"loss": 1.0})


def test_compare_with_the_real_loop_runs_each_pair_in_its_own_folder(tmp_path):
    from ies_fast.app.train.config import TrainConfig

    base = TrainConfig(dataset="digits", epochs=3, out=str(tmp_path), progress=False, plot=False)
    rows = cmp.compare(base, seeds=(0,))
    assert [r["selector"] for r in rows] == list(cmp.SELECTORS)
    for s in cmp.SELECTORS:
        assert (tmp_path / f"{s}-seed0" / "checkpoint.pt").exists()
    for s in ("none", "infobatch"):  # finished runs are read back from JSON: no checkpoint is loaded
        (tmp_path / f"{s}-seed0" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "ies-seed0" / "summary.json").write_text('{"test_acc": 7}')  # untrusted: rebuilt from the checkpoint
    again = cmp.compare(base, seeds=(0,))
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    assert json.loads((tmp_path / "ies-seed0" / "summary.json").read_text())["test_acc"] == rows[1]["accuracy"]


def test_run_without_matplotlib_says_so_before_the_first_run_and_still_prints_the_table(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    parser = argparse.ArgumentParser()
    cmp.add_arguments(parser)
    args = parser.parse_args(["--selectors", "none", "ies", "--seeds", "0", "--plot", str(tmp_path / "p.png")])
    out = []
    cmp.run(args, FakeConfig(), train_fn=fake_train([]), print_fn=out.append)
    assert "skipped" in out[0] and "matplotlib" in out[0]
    assert any("backward saved" in o for o in out) and not (tmp_path / "p.png").exists()


def _finished_run(tmp_path, **summary_changes):
    """A run folder as ies-fast train leaves it (JSON files only), and its config."""
    from ies_fast.app.train.config import TrainConfig, resolve

    config = TrainConfig(dataset="digits", epochs=3, out=str(tmp_path), progress=False, plot=False)
    out = tmp_path / "ies-seed0"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(resolve(config).to_dict()))
    summary = {"epochs_run": 3, "stopped_early": False, "test_acc": 0.93, "backward_saved_fraction": 0.4,
               "wall_time_s": 1.5, **summary_changes}
    (out / "summary.json").write_text(json.dumps(summary))
    return config, str(out)


@pytest.mark.parametrize("changes,trusted", [
    ({}, True),
    ({"epochs_run": 2}, False),                       # interrupted (--stop-after)
    ({"epochs_run": 2, "stopped_early": True}, True),  # early stop: finished
    ({"test_acc": 93.0}, False),                      # out of range
    ({"test_acc": float("nan")}, False),
    ({"wall_time_s": -1.0}, False),
    ({"backward_saved_fraction": "0.4"}, False),
    ({"epochs_run": True}, False),
])
def test_read_finished_run_trusts_only_a_finished_valid_summary(tmp_path, changes, trusted):
    config, out = _finished_run(tmp_path, **changes)
    got = cmp.read_finished_run(out, config)
    assert (got is not None) == trusted
    if trusted:
        assert got["test_acc"] == 0.93


def test_read_finished_run_rejects_another_runs_config_and_broken_files(tmp_path):
    config, out = _finished_run(tmp_path)
    assert cmp.read_finished_run(out, dataclasses.replace(config, delta=0.5)) is None, "another δ: not this run"
    assert cmp.read_finished_run(out, dataclasses.replace(config, epochs=4)) is None
    assert cmp.read_finished_run(out, dataclasses.replace(config, progress=True)) is not None, "how it runs: same run"
    (tmp_path / "ies-seed0" / "config.json").write_text("[1, 2")
    assert cmp.read_finished_run(out, config) is None
    assert cmp.read_finished_run(str(tmp_path / "missing"), config) is None


def test_cpu_clock_compares_the_runs_cpu_seconds(tmp_path):
    """``--clock cpu``: on a shared machine the wall time measures the neighbours; the
    table, speed-up and plot then use each run's ``cpu_time_s``."""
    base = fake_train([])

    def train(config):
        summary = base(config)
        summary["cpu_time_s"] = 100.0 * (1 - summary["backward_saved_fraction"]) + 3 * config.seed  # not the wall time
        return summary

    rows = cmp.compare(FakeConfig(), seeds=(0, 1, 2), train_fn=train)
    agg = {a["selector"]: a for a in cmp.aggregate(rows, "cpu")}
    assert agg["none"]["wall_time_s"] == pytest.approx(103.0)
    assert agg["ies"]["speedup"] == pytest.approx(103.0 / 63.0)
    lines = cmp.format_table(rows, "cpu").splitlines()
    assert "CPU time (s)" in lines[0] and "103.00 ± 3.00" in lines[2]
    assert "wall time (s)" in cmp.format_table(rows).splitlines()[0]
    assert cmp.plot(rows, str(tmp_path / "cpu.png"), clock="cpu").endswith("cpu.png")
    old = cmp.compare(FakeConfig(), seeds=(0,), train_fn=base)  # runs from before cpu_time_s was recorded
    with pytest.raises(ValueError, match="--clock cpu: a run's summary has no cpu_time_s"):
        cmp.format_table(old, "cpu")


# the options of `ies-fast train` when the first runs were recorded (before --eval-every)
_RECORDED_OPTIONS = frozenset((
    "amp", "anneal", "backend", "batch_size", "compile", "data_dir", "dataset", "delta", "deterministic", "device",
    "dist_timeout", "early_stop", "eligibility", "epochs", "eval_batch_size", "image_size", "k", "label_noise", "loader",
    "lr", "lr_gamma", "lr_milestones", "lr_schedule", "min_kept", "model", "momentum", "optimizer", "order", "out",
    "patience", "plot", "progress", "prune_ratio", "random_ratio", "resume", "score_every", "score_max_interval",
    "score_policy", "seed", "selector", "stop_after", "subset", "synthetic_classes", "synthetic_size", "weight_decay",
    "window", "workers"))


def test_every_option_added_since_has_the_value_that_reads_old_runs_back():
    from ies_fast.app.train.config import ADDED_OPTIONS, TrainConfig

    new = {f.name for f in dataclasses.fields(TrainConfig)} - _RECORDED_OPTIONS
    assert new == set(ADDED_OPTIONS), (
        f"options {sorted(new - set(ADDED_OPTIONS))} are new: list each in config.ADDED_OPTIONS with the value "
        "that reproduces runs recorded without it, or old run folders no longer read back")


def test_a_run_recorded_before_on_bad_image_reads_back(tmp_path):
    from ies_fast.app.train.compare import read_finished_run
    from ies_fast.app.train.config import TrainConfig, resolve

    config = TrainConfig(dataset="digits", selector="none", epochs=2, out=str(tmp_path))
    saved = resolve(config).to_dict()
    del saved["on_bad_image"], saved["eval_every"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "summary.json").write_text(json.dumps({"epochs_run": 2, "test_acc": 0.9, "backward_saved_fraction": 0.0,
                                                       "wall_time_s": 1.0, "cpu_time_s": 1.0}))
    assert read_finished_run(str(tmp_path), config)["test_acc"] == 0.9
    assert read_finished_run(str(tmp_path), dataclasses.replace(config, on_bad_image="skip")) is None
