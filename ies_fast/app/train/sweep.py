"""``ies-fast sweep``: find the δ that fits your data and recipe.

Runs IES over a log-spaced δ grid, InfoBatch over prune ratios, random removal
over ratios and the baseline, each for several seeds, every (point, seed) in its
own resumable run folder ``OUT/<selector>[-<param><value>]-seed<k>`` (the runs
and the reading back of finished ones are :mod:`ies_fast.app.train.compare`'s).
Prints one table, writes a Pareto plot (test accuracy against backward samples
saved and against wall time, with the baseline's band) and names the δ that
saves the most backward samples while its mean accuracy stays within
``tolerance`` points of the baseline's.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Callable, Iterable, Optional

from ... import extras
from ...io.run_folder import RunFolderError
from .arguments import add_seed_arguments
from . import compare as cmp
from . import front
from .front import pareto_front  # noqa: F401 (sweep's name since the first Pareto plot)
from .out_checks import check_out_folder

#: the config field a sweep varies for each selector, and its folder-name prefix
PARAM_FIELDS = {"ies": "delta", "infobatch": "prune_ratio", "random": "random_ratio"}
FOLDER_PREFIX = {"ies": "delta", "infobatch": "prune", "random": "ratio"}
DEFAULT_DELTA_RANGE = (1e-5, 1e-1)
DEFAULT_DELTA_POINTS = 5
DEFAULT_PRUNE_RATIOS = (0.3, 0.5, 0.7)
DEFAULT_RANDOM_RATIOS = (0.3, 0.5, 0.7)
DEFAULT_TOLERANCE = 0.5  # accuracy points (percent)
FRONT_TOLERANCE = 0.2  # the front's "at the baseline's accuracy" (issue 27)


def log_grid(low: float, high: float, points: int) -> tuple:
    """``points`` values log-spaced from ``low`` to ``high`` (both included), rounded
    to 3 significant digits so that folder names and labels stay short."""
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 < low <= high < math.inf):
        raise ValueError(f"--delta-range must be two numbers 0 < LOW <= HIGH; got {low!r} {high!r}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 1 or (points == 1 and low != high):
        raise ValueError(f"--delta-points must be an integer >= 2 (1 when LOW == HIGH); got {points!r}")
    if points == 1:
        return (float(low),)
    step = (math.log10(high) - math.log10(low)) / (points - 1)
    return tuple(float(f"{10 ** (math.log10(low) + i * step):.3g}") for i in range(points))


def _check_values(option: str, values, low: float, high: float) -> list:
    values = list(values)
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low < v <= high
             for v in values)
    if not ok or len(set(values)) != len(values):
        raise ValueError(f"{option} must be distinct numbers in ({low:g}, {high:g}]; got {values!r}")
    return sorted(float(v) for v in values)


def points(deltas: Iterable[float], prune_ratios: Iterable[float], random_ratios: Iterable[float]) -> list:
    """The sweep's points ``[(selector, value)]``: the baseline, then each selector's
    values in ascending order. Raises ``ValueError`` naming the bad option."""
    out = [("none", None)]
    out += [("ies", v) for v in _check_values("--deltas", deltas, 0.0, math.inf)]
    out += [("infobatch", v) for v in _check_values("--prune-ratios", prune_ratios, 0.0, 0.9)]
    out += [("random", v) for v in _check_values("--random-ratios", random_ratios, 0.0, 0.999)]
    return out


def run_folder(config, variant: Optional[dict] = None) -> str:
    """The folder of one sweep run: ``none-seed0``, ``ies-delta0.001-seed0``,
    ``infobatch-prune0.5-seed0``, ``random-ratio0.3-seed0``; an IES variant's options
    follow δ: ``ies-delta0.3-anneal0.1-seed0``."""
    field = PARAM_FIELDS.get(config.selector)
    point = f"-{FOLDER_PREFIX[config.selector]}{getattr(config, field):g}" if field else ""
    return f"{config.selector}{point}{front.variant_folder(variant or {})}-seed{config.seed}"


def run_point(config, variant: Optional[dict] = None) -> dict:
    """The default ``train_fn``: the run in ``OUT/<run_folder>``, read back when finished."""
    return cmp.run_in_subfolder(config, run_folder(config, variant))


class NotFinished(Exception):
    """``--only-finished``: the point has no finished run (it is left out, not run)."""


def finished_point(config, variant: Optional[dict] = None) -> dict:
    """``--only-finished``'s ``train_fn``: the finished run in ``OUT/<run_folder>`` read
    back from its JSON files, or :class:`NotFinished`; nothing is trained."""
    folder = os.path.join(config.out, run_folder(config, variant))
    summary = cmp.read_finished_run(folder, config) if os.path.isdir(folder) else None
    if summary is None:
        raise NotFinished(f"{folder} has no finished run")
    return summary


def sweep(base_config, deltas: Iterable[float] = log_grid(*DEFAULT_DELTA_RANGE, DEFAULT_DELTA_POINTS),
          prune_ratios: Iterable[float] = DEFAULT_PRUNE_RATIOS, random_ratios: Iterable[float] = DEFAULT_RANDOM_RATIOS,
          seeds: Iterable[int] = (0, 1, 2), *, variants: Iterable[dict] = (), train_fn: Optional[Callable] = None,
          log: Optional[Callable[[str], None]] = None, only_finished: bool = False) -> list:
    """Run every point with every seed; returns one row per run, as
    :func:`ies_fast.app.train.compare.run_one` makes them, with the point's ``param``
    (``None`` for the baseline) and ``variant`` (``""``, or an IES variant's name).

    ``variants``: IES option overrides (:data:`front.VARIANT_FIELDS`), each run at every
    δ of ``deltas`` unless it sets its own ``delta``; after the plain IES points.
    ``only_finished``: read the finished runs back and leave the others out (the
    default ``train_fn`` only)."""
    deltas, variants = list(deltas), [dict(v) for v in variants]
    front.check_variants(variants)
    grid = [(selector, value, {}) for selector, value in points(deltas, prune_ratios, random_ratios)]
    at = max(i for i, (selector, _, _) in enumerate(grid) if selector in ("none", "ies")) + 1
    extra = [("ies", d, {k: v for k, v in variant.items() if k != "delta"})
             for variant in variants for d in ([variant["delta"]] if "delta" in variant else deltas)]
    grid[at:at] = extra
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct integers; got {seeds!r}")
    rows, total, done = [], len(grid) * len(seeds), 0
    for selector, value, variant in grid:
        changes = {"selector": selector} if value is None else {"selector": selector, PARAM_FIELDS[selector]: value}
        name = front.variant_name(variant)
        label = cmp.point_label(selector, value, name)
        run = train_fn or (lambda config, variant=variant: (finished_point if only_finished else run_point)(
            config, variant))
        for seed in seeds:
            done += 1
            if log:
                log(f"sweep: {label} seed {seed} ({done}/{total}) ...")
            try:
                row = cmp.run_one(cmp.with_changes(base_config, seed=seed, **changes, **variant), run)
            except (RunFolderError, NotFinished) as exc:  # a planted link or FIFO; not run (--only-finished)
                (log or print)(f"sweep: {label} seed {seed} skipped: {exc}")
                continue
            row["param"], row["variant"] = value, name
            rows.append(row)
    return rows


def best_within(rows: list, tolerance: float = DEFAULT_TOLERANCE, selector: str = "ies",
                clock: str = "wall") -> Optional[dict]:
    """Of ``selector``'s points whose mean accuracy is at least the baseline's mean
    minus ``tolerance`` points, the one that saves the most backward samples (ties:
    the more accurate); its aggregate (see :func:`compare.aggregate`) or ``None``."""
    agg = cmp.aggregate(rows, clock)
    base = [a for a in agg if a["selector"] == "none"]
    if not base:
        raise ValueError("the sweep has no baseline run")
    floor = base[0]["accuracy"] - tolerance / 100
    fits = [a for a in agg if a["selector"] == selector and not a["variant"] and a["accuracy"] >= floor - 1e-12]
    return max(fits, key=lambda a: (a["backward_saved"], a["accuracy"]), default=None)


def recommendation(rows: list, tolerance: float = DEFAULT_TOLERANCE, clock: str = "wall") -> str:
    """The lines under the table: the baseline's accuracy and, for each selector
    swept, its point that saves the most within the tolerance (δ first); speed-ups
    in ``clock`` time."""
    base = next(a for a in cmp.aggregate(rows, clock) if a["selector"] == "none")
    lines = [f"baseline: {cmp.spread_text(base['accuracy'], base['accuracy_sd'], base['seeds'], 2, 100)}% "
             f"({cmp.seeds_text(base['seeds'])}); "
             f"tolerance {tolerance:g} points: accuracy >= {100 * base['accuracy'] - tolerance:.2f}%"]
    for selector in PARAM_FIELDS:
        if not any(r["selector"] == selector for r in rows):
            continue
        best = best_within(rows, tolerance, selector, clock)
        what = "δ" if selector == "ies" else f"{cmp.LABELS[selector]} {cmp.PARAM_NAMES[selector]}"
        if best is None:
            lines.append(f"{what}: no point stays within {tolerance:g} points of the baseline")
            continue
        speed = (f", speed-up {best['speedup']:.2f}x over the baseline ({cmp._CLOCK_LABEL[clock]})"
                 if best["speedup"] else "")
        lines.append(f"{what} that saves most within {tolerance:g} points: {cmp.PARAM_NAMES[selector]}={best['param']:g} "
                     f"({cmp.spread_text(best['accuracy'], best['accuracy_sd'], best['seeds'], 2, 100)}%, "
                     f"{100 * best['backward_saved']:.1f}% backward saved{speed})")
    return "\n".join(lines)


def plot(rows: list, path: str, tolerance: float = DEFAULT_TOLERANCE, title: str = "", clock: str = "wall") -> str:
    """Two panels, test accuracy against backward samples saved and against wall
    time: each selector's points (mean ± sd over seeds, labelled with their
    parameter), the baseline's mean (a line, visible also when its sd is 0) and
    ± sd band, the tolerance line, the Pareto front over all points and the chosen
    δ (a star, drawn under the labels). The legend sits below the panels; ``title``
    names the data. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plots import save

    agg = [a for a in cmp.aggregate(rows, clock) if not a["variant"]]  # IES variants: the front's plot
    base = next(a for a in agg if a["selector"] == "none")
    best = best_within(rows, tolerance, clock=clock)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
    panels = (("backward_saved", 100, "backward samples saved (%)", True), ("wall_time_s", 1, f"{cmp._CLOCK_LABEL[clock]} (s)", False))
    for ax, (key, scale, xlabel, larger_better) in zip(axes, panels):
        acc0, sd0 = 100 * base["accuracy"], 100 * base["accuracy_sd"]
        ax.axhline(acc0, color="tab:gray", lw=1.2, label="baseline mean ± sd")
        if sd0 > 0:
            ax.axhspan(acc0 - sd0, acc0 + sd0, color="tab:gray", alpha=0.2)
        ax.axhline(acc0 - tolerance, color="tab:gray", ls="--", lw=1, label=f"baseline − {tolerance:g} points")
        if best is not None:
            ax.plot(scale * best[key], 100 * best["accuracy"], marker="*", ms=16, color="tab:red", ls="none",
                    alpha=0.6, zorder=2, label=f"chosen δ={best['param']:g}")
        for selector, color in cmp.COLORS.items():
            pts = [a for a in agg if a["selector"] == selector]
            if not pts:
                continue
            xs = [scale * a[key] for a in pts]
            xerr = [scale * a["backward_saved_sd" if key == "backward_saved" else "wall_time_sd"] for a in pts]
            marker = cmp.MARKERS[selector]
            ax.errorbar(xs, [100 * a["accuracy"] for a in pts], xerr=xerr, yerr=[100 * a["accuracy_sd"] for a in pts],
                        fmt=marker + ("-" if selector != "none" else ""), color=color, capsize=2, ms=4, zorder=3,
                        label=cmp.LABELS[selector])
            for a, x in zip(pts, xs):
                if a["param"] is not None:
                    ax.annotate(f"{a['param']:g}", (x, 100 * a["accuracy"]), textcoords="offset points",
                                xytext=(4, 5), fontsize=7, color=color, zorder=5,
                                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7))
        xs, ys = [scale * a[key] for a in agg], [100 * a["accuracy"] for a in agg]
        front = pareto_front(xs, ys, larger_x_better=larger_better)
        ax.plot([xs[i] for i in front], [ys[i] for i in front], color="black", lw=0.8, ls=":", label="Pareto front")
        ax.margins(x=0.1, y=0.1)  # room for the labels of the outermost points
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    seeds = cmp.seeds_text(base["seeds"])
    fig.suptitle(f"sweep on {title}: {seeds}" if title else f"sweep: {seeds}", fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save(fig, path, dpi=90, layout=False)


# ---- command line ---------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``sweep`` subcommand's own options (the training flags come from ``train``'s)."""
    g = parser.add_argument_group("sweep")
    g.add_argument("--deltas", nargs="+", type=float, default=None,
                   help="the IES δ values the sweep runs (default: --delta-points values log-spaced over "
                        "--delta-range); the training option --delta (one run's δ) is not used by a sweep")
    g.add_argument("--delta-range", nargs=2, type=float, default=list(DEFAULT_DELTA_RANGE), metavar=("LOW", "HIGH"),
                   help="the δ grid's ends")
    g.add_argument("--delta-points", type=int, default=DEFAULT_DELTA_POINTS, help="values in the δ grid")
    g.add_argument("--prune-ratios", nargs="*", type=float, default=list(DEFAULT_PRUNE_RATIOS),
                   help="InfoBatch prune ratios (none given: no InfoBatch)")
    g.add_argument("--random-ratios", nargs="*", type=float, default=list(DEFAULT_RANDOM_RATIOS),
                   help="random removal ratios (none given: no random removal)")
    add_seed_arguments(g)
    g.add_argument("--ies-variant", dest="ies_variants", action="append", default=[], metavar="KEY=VALUE[,...]",
                   help="also run IES with these options changed (a lever: anneal=0.1; order=1,window=2; "
                        "threshold=relative,delta=1), at every --deltas value unless it sets delta; repeatable")
    g.add_argument("--only-finished", action="store_true",
                   help="train nothing: read back the points' finished runs and leave out the rest (a report "
                        "while a sweep is still running elsewhere)")
    g.add_argument("--front", action="store_true",
                   help="print each method's accuracy-versus-time Pareto front (training-only and total time) "
                        "and plot it, one line per method (OUT/front.png), instead of the δ table")
    g.add_argument("--tolerance", type=float, default=None,
                   help=f"accuracy points below the baseline's mean a chosen point may lose (default "
                        f"{DEFAULT_TOLERANCE:g}; with --front {FRONT_TOLERANCE:g})")
    g.add_argument("--clock", choices=cmp.CLOCKS, default=None,
                   help="the time compared: cpu (each run's CPU seconds, which neighbours on a shared machine do "
                        "not inflate; the default when every run recorded it) or wall")
    g.add_argument("--plot", default=None, help="Pareto plot (default: OUT/sweep.png, with --front OUT/front.png; "
                                                "'' for none)")
    g.add_argument("--json", default=None, help="also write the rows (each with its run's summary) as JSON here")


def check_args(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming the first bad sweep option (before any run); fills
    the defaults of ``--tolerance`` and ``--ies-variant``'s parsed ``variants``."""
    if args.tolerance is None:
        args.tolerance = FRONT_TOLERANCE if args.front else DEFAULT_TOLERANCE
    args.variants = [front.parse_variant(v) for v in args.ies_variants]
    front.check_variants(args.variants)
    if not (isinstance(args.tolerance, (int, float)) and math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise ValueError(f"--tolerance must be a number of accuracy points >= 0; got {args.tolerance!r}")
    deltas = args.deltas if args.deltas is not None else log_grid(*args.delta_range, args.delta_points)
    points(deltas, args.prune_ratios, args.random_ratios)
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct; got {args.seeds!r}")


def run(args: argparse.Namespace, base_config, *, train_fn: Optional[Callable] = None, print_fn=print) -> list:
    """What ``ies-fast sweep`` does once its training config is built: check the
    options, run the grid, print the table and the recommendation, write the plot
    (and JSON). Returns the rows."""
    check_args(args)
    check_out_folder(getattr(base_config, "out", None))
    deltas = args.deltas if args.deltas is not None else log_grid(*args.delta_range, args.delta_points)
    default_plot = "front.png" if args.front else "sweep.png"
    plot_path = os.path.join(base_config.out, default_plot) if args.plot is None else args.plot
    plot_path = plot_path if extras.can_plot(plot_path, print_fn) else ""  # said before any run
    cmp.check_output("--json", args.json)
    cmp.check_output("--plot", plot_path)
    rows = sweep(base_config, deltas, args.prune_ratios, args.random_ratios, args.seeds, variants=args.variants,
                 train_fn=train_fn, log=print_fn, only_finished=args.only_finished)
    if not any(r["selector"] == "none" for r in rows):
        raise ValueError("every baseline run was skipped: the sweep has nothing to compare against")
    clock = cmp.pick_clock(rows, args.clock, print_fn)
    if args.front:
        print_fn(front.format_table(rows, clock, args.tolerance, front_title(base_config)))
    else:
        print_fn(cmp.format_table(rows, clock))
        print_fn(recommendation(rows, args.tolerance, clock))
    if plot_path:
        os.makedirs(os.path.dirname(plot_path) or ".", exist_ok=True)
        if args.front:
            print_fn(f"plot: {front.plot(rows, plot_path, clock, front_title(base_config))}")
        else:
            title = cmp.describe(base_config, f"IES δ from {min(deltas):g} to {max(deltas):g}")
            print_fn(f"plot: {plot(rows, plot_path, args.tolerance, title, clock)}")
    if args.json:
        print_fn(f"rows: {cmp.write_json(rows, args.json)}")
    return rows


def front_title(config) -> str:
    """``fashion-mnist (resnet8, 15 epochs), 10000 samples, test pass every 15 epochs``."""
    subset = getattr(config, "subset", None)
    every = getattr(config, "eval_every", 1)
    parts = [cmp.describe(config)] + ([f"{subset} samples"] if subset else [])
    parts.append("test pass every epoch" if every == 1 else f"test pass every {every} epochs and after the last")
    return ", ".join(parts)
