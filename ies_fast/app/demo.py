"""``ies-fast demo``: baseline (δ=0) vs IES on scikit-learn's bundled handwritten
digits (1,797 real 8x8 images), a few seeds, one side-by-side table and a plot.

The data lives on the device; each epoch trains on ``selector.kept_indices()``
and scores the removed samples in one forward-only pass, as the library intends.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from .. import IES, cross_entropy, extras


@dataclass
class DemoConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 0.05
    delta: float = 2e-4
    seeds: tuple = (0, 1, 2)
    hidden: int = 128


@dataclass
class RunResult:
    test_acc: float
    backward_samples: int
    scored_samples: int
    wall_time: float
    acc_curve: list = field(default_factory=list)
    removed_curve: list = field(default_factory=list)
    num_train: int = 0


def digits_arrays():
    """``(pixels, labels)`` of scikit-learn's bundled digits, as ``load_digits()``
    returns them (float64 ``(1797, 64)``, int ``(1797,)``), read straight from the
    package's ``datasets/data/digits.csv.gz`` the way it reads it: importing
    ``sklearn.datasets`` costs about 1 CPU s per process (scipy, sklearn.utils),
    more than a whole digits run's training. Falls back to ``load_digits()`` when
    the file is not where this scikit-learn keeps it."""
    import gzip
    import importlib.util
    import os

    import numpy as np

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, mode="rt", encoding="utf-8") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1], data[:, -1].astype(int, copy=False)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data, digits.target


def load_digits_split(seed: int = 0):
    """Standardised digits, fixed 80/20 split (the split does not depend on the run seed)."""
    pixels, labels = digits_arrays()
    x = torch.tensor(pixels, dtype=torch.float32) / 16.0
    y = torch.tensor(labels, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-3
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def run(config: DemoConfig, delta: float, seed: int, data, selector=None) -> RunResult:
    """Train one MLP with IES at ``delta`` (0 = baseline), or with the given ``selector``
    (any :class:`ies_fast.Selector`: InfoBatch, RandomRemoval, ...)."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, config.hidden), torch.nn.ReLU(), torch.nn.Linear(config.hidden, 10))
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    sel = selector if selector is not None else IES(len(y_train), delta=delta)
    gen = torch.Generator().manual_seed(seed)
    result = RunResult(0.0, 0, 0, 0.0, num_train=len(y_train))
    start = time.perf_counter()
    for _ in range(config.epochs):
        kept = sel.kept_indices()
        order = kept[torch.randperm(len(kept), generator=gen)]
        model.train()
        for batch in order.split(config.batch_size):
            weight = sel.loss_weights(batch)
            loss = cross_entropy(model(x_train[batch]), y_train[batch], batch, selector=sel, sample_weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        result.backward_samples += len(kept)
        removed = torch.nonzero(sel.scoring_mask()).squeeze(1)
        if sel.needs_scoring() and len(removed):
            model.eval()
            with torch.no_grad():
                cross_entropy(model(x_train[removed]), y_train[removed], removed, selector=sel, scoring=True)
        sel.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        result.acc_curve.append(acc)
        result.removed_curve.append(int(sel.removed_mask().sum()))
    result.wall_time = time.perf_counter() - start
    result.test_acc = result.acc_curve[-1]
    result.scored_samples = sel.stats()["scored_total"]
    return result


def _mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_table(baseline: list, ies: list, epochs: int, num_train: int) -> str:
    total = epochs * num_train
    rows = [("method", "test acc (%)", "backward saved", "scoring fwd", "wall (s)", "speedup")]
    base_time = statistics.mean(r.wall_time for r in baseline)
    for name, runs in (("baseline (δ=0)", baseline), ("IES", ies)):
        m, s = _mean_std([100 * r.test_acc for r in runs])
        saved = 1 - statistics.mean(r.backward_samples for r in runs) / total
        scored = statistics.mean(r.scored_samples for r in runs)
        wall = statistics.mean(r.wall_time for r in runs)
        rows.append((name, f"{m:.2f} ± {s:.2f}", f"{100 * saved:.1f}%", f"{scored:.0f}", f"{wall:.2f}", f"{base_time / wall:.2f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(baseline: list, ies: list, path: str, delta: float = DemoConfig.delta) -> None:
    """Test accuracy per epoch of both arms and the samples IES excluded per epoch
    (count of the training set and fraction), each the mean over seeds with its
    min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import excluded_panel, save, seed_band

    epochs = list(range(1, len(ies[0].acc_curve) + 1))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    for name, runs, color in (("No removal", baseline, "C0"), ("IES", ies, "C1")):
        seed_band(top, epochs, [[100 * a for a in r.acc_curve] for r in runs], color=color, label=name)
    top.set_ylabel("test accuracy (%)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    excluded_panel(bottom, epochs, [r.removed_curve for r in ies], ies[0].num_train)
    bottom.set_xlabel("epoch")
    bottom.grid(alpha=0.3)
    fig.suptitle(f"IES (δ={delta:g}) on sklearn digits ({len(ies)} seed{'s' if len(ies) != 1 else ''})")
    save(fig, path, dpi=100)  # atomic, never through a planted link (ies_fast.io.run_folder)


def main(config: DemoConfig = DemoConfig(), plot_path: str = "ies_demo.png") -> tuple[list, list]:
    """Run the demo and print its table. Checks the optional packages first: without
    scikit-learn it raises ``ImportError`` (one line naming the extra) before any
    training; without matplotlib it says up front that the plot is skipped."""
    extras.require(["sklearn"], "ies-fast demo")
    plot_path = plot_path if extras.can_plot(plot_path) else ""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_digits_split()
    baseline = [run(config, 0.0, s, data) for s in config.seeds]
    ies = [run(config, config.delta, s, data) for s in config.seeds]
    print(format_table(baseline, ies, config.epochs, len(data[1])))
    if plot_path:
        plot(baseline, ies, plot_path, config.delta)
        print(f"plot written to {plot_path}")
    return baseline, ies
