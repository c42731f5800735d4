"""``ies-fast compare``: several selectors on the same data and seeds, one table and
one plot, so users can choose a sample-selection method on their own runs.

Each (selector, seed) pair is one call of :func:`ies_fast.app.train.loop.train` with the
base configuration's ``selector`` and ``seed`` replaced. By default random removal
is run at the backward-saved fraction that IES reached with the same seed (its
``random_ratio`` is matched), so it is the control at equal savings.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from typing import Callable, Iterable, Optional, Sequence

from ... import extras
from ...io import run_folder
from ...io.run_folder import RunFolderError
from .arguments import add_seed_arguments
from .out_checks import check_out_folder, valid_time

SELECTORS = ("none", "ies", "infobatch", "random")
LABELS = {"none": "baseline", "ies": "IES", "infobatch": "InfoBatch", "random": "random removal"}
#: the parameter a sweep varies per selector, as labels show it
PARAM_NAMES = {"none": "", "ies": "δ", "infobatch": "prune", "random": "ratio"}

#: where each column is looked up in the training summary (first key present wins)
ACCURACY_KEYS = ("test_acc", "test_accuracy", "accuracy", "acc", "val_acc", "final_test_acc")
SAVED_KEYS = ("backward_saved_fraction", "backward_saved")
TIME_KEYS = ("wall_time_s", "wall_time", "train_time_s", "train_time", "wall_s", "time_s")
CPU_TIME_KEYS = ("cpu_time_s",)
#: CPU seconds of training + scoring + the selector's step, without the test passes
TRAIN_CPU_TIME_KEYS = ("train_cpu_time_s",)
#: ``--clock``: which time the table and plot compare (cpu: the process's CPU seconds,
#: which neighbours on a shared machine do not inflate)
CLOCKS = ("wall", "cpu")
_CLOCK_LABEL = {"wall": "wall time", "cpu": "CPU time"}


def _pick(summary: dict, keys: Sequence[str]):
    for k in keys:
        v = summary.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def with_changes(config, **changes):
    """A copy of ``config`` with ``changes`` (a dataclass, or any object with attributes)."""
    if dataclasses.is_dataclass(config):
        return dataclasses.replace(config, **changes)
    import copy

    new = copy.copy(config)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def _finite(value, low: float, high: float = math.inf) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high


def _read_json(path: str):
    """The JSON in ``path``; ``None`` when it is missing or its content is not
    valid (said in one line: the point is run again). Raises
    :class:`~ies_fast.io.run_folder.RunFolderError` for a link, FIFO, folder or
    device at ``path``: that point is skipped."""
    run_folder.check_slot(path)
    try:
        return run_folder.read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, RunFolderError) as exc:
        print(f"ies-fast: {exc}; that run is started again", file=sys.stderr)
        return None


def read_finished_run(out: str, config) -> Optional[dict]:
    """The summary of the run finished in ``out`` with ``config``'s options, read
    from its JSON files only (a run folder is untrusted: nothing is unpickled), or
    ``None`` when there is none, it is unfinished, or its files do not validate:
    ``config.json`` must hold the same run-defining options as ``config``,
    ``summary.json`` an accuracy, a saved fraction, and wall and CPU times in range
    (:func:`~ies_fast.app.train.out_checks.valid_time`)."""
    from .config import ADDED_OPTIONS, CHANGEABLE_ON_RESUME, resolve

    summary, saved = _read_json(os.path.join(out, "summary.json")), _read_json(os.path.join(out, "config.json"))
    if not isinstance(summary, dict) or not isinstance(saved, dict):
        return None
    wanted = resolve(config).to_dict()
    saved = {**{k: v for k, v in ADDED_OPTIONS.items() if k not in saved}, **saved}  # runs from before them
    if any(k not in saved or _jsonable(saved[k]) != _jsonable(v) for k, v in wanted.items()
           if k not in CHANGEABLE_ON_RESUME):
        return None
    epochs_run = summary.get("epochs_run")
    finished = isinstance(epochs_run, int) and (epochs_run == wanted["epochs"] or summary.get("stopped_early") is True)
    valid = (_finite(summary.get("test_acc"), 0.0, 1.0) and _finite(summary.get("backward_saved_fraction"), 0.0, 1.0)
             and valid_time(summary.get("wall_time_s")) and valid_time(summary.get("cpu_time_s", 0.0)))
    return summary if finished and valid else None


def _jsonable(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def run_in_subfolder(config, folder: Optional[str] = None) -> dict:
    """The default ``train_fn``: :func:`ies_fast.app.train.loop.train` with each run in its
    own folder ``OUT/<folder>`` (default ``<selector>-seed<seed>``). A run finished
    there is read back from its JSON files (:func:`read_finished_run`), an
    interrupted one is resumed from its checkpoint, otherwise a new one starts."""
    from .logs import RunFiles
    from .loop import train

    out = os.path.join(config.out, folder or f"{config.selector}-seed{config.seed}")
    RunFiles(out).check()  # a planted link or FIFO: the point is skipped (RunFolderError)
    finished = read_finished_run(out, config)
    if finished is not None:
        return finished
    checkpoint = os.path.join(out, "checkpoint.pt")
    resume = os.path.exists(checkpoint) or os.path.exists(checkpoint + ".prev")
    return train(with_changes(config, out=out, resume=resume))


def run_one(config, train_fn: Callable) -> dict:
    """Run one configuration with ``train_fn`` and read its summary into a row:
    ``selector, seed, accuracy, backward_saved, wall_time_s, cpu_time_s, random_ratio, summary``
    (``accuracy`` and ``backward_saved`` are fractions in [0, 1]; ``wall_time_s`` the
    summary's training time when it has one, else the measured duration of the call;
    ``cpu_time_s`` the run's CPU seconds, None when the summary has none)."""
    start = time.perf_counter()
    summary = train_fn(config)
    elapsed = time.perf_counter() - start
    if not isinstance(summary, dict):
        raise TypeError(f"train() must return a summary dict, got {type(summary).__name__}")
    accuracy = _pick(summary, ACCURACY_KEYS)
    if accuracy is None:
        raise KeyError(f"the training summary has no accuracy (looked for {ACCURACY_KEYS}); keys: {sorted(summary)}")
    wall = _pick(summary, TIME_KEYS)
    return {
        "selector": config.selector,
        "seed": config.seed,
        "accuracy": accuracy / 100 if accuracy > 1.0 else accuracy,
        "backward_saved": _pick(summary, SAVED_KEYS) or 0.0,
        "wall_time_s": wall if wall is not None else elapsed,
        "cpu_time_s": _pick(summary, CPU_TIME_KEYS),
        "train_cpu_time_s": _pick(summary, TRAIN_CPU_TIME_KEYS),
        "random_ratio": getattr(config, "random_ratio", None) if config.selector == "random" else None,
        "summary": summary,
    }


def compare(
    base_config,
    selectors: Iterable[str] = SELECTORS,
    seeds: Iterable[int] = (0, 1, 2),
    *,
    match_random: bool = True,
    train_fn: Optional[Callable] = None,
    log: Optional[Callable[[str], None]] = None,
) -> list:
    """Run every selector with every seed; returns one row (a dict) per run:
    ``selector, seed, accuracy, backward_saved, wall_time_s, random_ratio, summary``.

    ``accuracy`` and ``backward_saved`` are fractions in [0, 1]; ``wall_time_s`` is
    the summary's training time when it reports one, else the measured duration
    of the call. ``match_random``: run ``random`` at the IES run's saved fraction
    (same seed) when IES is in ``selectors``; otherwise the config's ``random_ratio``.
    """
    selectors, seeds = list(selectors), list(seeds)
    bad = [s for s in selectors if s not in SELECTORS]
    if bad or not selectors:
        raise ValueError(f"selectors must be a non-empty subset of {SELECTORS}, got {selectors!r}")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints, got {seeds!r}")
    train_fn = train_fn or run_in_subfolder
    # IES first, so random removal can be matched to its savings
    order = sorted(selectors, key=lambda s: (s != "ies" if match_random else 0, selectors.index(s)))
    ies_saved: dict = {}
    rows = []
    for selector in order:
        for seed in seeds:
            changes = {"selector": selector, "seed": seed}
            if selector == "random" and match_random and seed in ies_saved:
                changes["random_ratio"] = ies_saved[seed]
            config = with_changes(base_config, **changes)
            if log:
                log(f"compare: {LABELS[selector]} seed {seed} ...")
            try:
                row = run_one(config, train_fn)
            except RunFolderError as exc:
                (log or print)(f"compare: {LABELS[selector]} seed {seed} skipped: {exc}")
                continue
            if selector == "ies":
                ies_saved[seed] = round(row["backward_saved"], 4)
            rows.append(row)
    rank = {s: i for i, s in enumerate(selectors)}
    rows.sort(key=lambda r: (rank[r["selector"]], seeds.index(r["seed"])))
    return rows


def _mean_sd(values: list) -> tuple:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, sd


def spread_text(mean: float, sd: float, seeds: int, digits: int = 2, scale: float = 1.0) -> str:
    """``"88.76 ± 0.06"``; one seed has no spread: ``"88.76"``."""
    text = f"{scale * mean:.{digits}f}"
    return text if seeds < 2 else f"{text} ± {scale * sd:.{digits}f}"


def seeds_text(seeds: int) -> str:
    """``"mean ± sd over 3 seeds"``, ``"1 seed"``."""
    return f"mean ± sd over {seeds} seeds" if seeds > 1 else f"{seeds} seed"


def point_label(selector: str, param=None, variant: str = "") -> str:
    """``IES``, or with a sweep's parameter ``IES δ=0.001``, ``InfoBatch prune=0.5``, and
    an IES variant's options before it: ``IES anneal=0.1 δ=0.3``."""
    name = f"{LABELS[selector]} {variant}".strip()
    return name if param is None else f"{name} {PARAM_NAMES[selector]}={param:g}"


def _times(rows: list, clock: str) -> list:
    """The ``clock`` time of each row (``ValueError`` when a run did not record it)."""
    key = f"{clock}_time_s"
    times = [r.get(key) for r in rows]
    if any(t is None for t in times):
        raise ValueError(f"--clock {clock}: a run's summary has no {key} (written by ies-fast train since issue 24)")
    return times


def pick_clock(rows: list, clock: Optional[str], print_fn=print) -> str:
    """``clock`` when given; otherwise ``"cpu"`` when every run recorded its CPU seconds,
    else ``"wall"`` (said in one line): runs are one thread each, so CPU time is what
    neighbours on a shared machine do not inflate."""
    if clock is not None:
        return clock
    if all(r.get("cpu_time_s") is not None for r in rows):
        return "cpu"
    print_fn("clock: wall time (a run did not record its CPU time; --clock cpu needs runs from ies-fast train "
             "since issue 24)")
    return "wall"


def aggregate(rows: list, clock: str = "wall") -> list:
    """One dict per selector, or per (selector, ``param``) for a sweep's rows, in
    first-seen order: mean and sd over seeds of each column, and the speed-up in
    ``clock`` time (wall or cpu; the keys stay ``wall_time_s``/``wall_time_sd``) over
    the baseline when it ran. Rows of an IES variant (``row["variant"]``, e.g.
    ``"anneal=0.1"``) are their own groups; ``train_time_s``/``train_time_sd``: the
    training-only CPU time, ``None`` unless every run of the group recorded it."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["selector"], r.get("variant") or "", r.get("param")), []).append(r)
    base = [t for (selector, _, _), rs in groups.items() if selector == "none" for t in _times(rs, clock)]
    base_time = statistics.fmean(base) if base else None
    out = []
    for (selector, variant, param), rs in groups.items():
        acc, acc_sd = _mean_sd([r["accuracy"] for r in rs])
        train = [r.get("train_cpu_time_s") for r in rs]
        train, train_sd = _mean_sd(train) if None not in train else (None, None)
        saved, saved_sd = _mean_sd([r["backward_saved"] for r in rs])
        wall, wall_sd = _mean_sd(_times(rs, clock))
        out.append(
            {
                "selector": selector,
                "param": param,
                "variant": variant,
                "label": point_label(selector, param, variant),
                "seeds": len(rs),
                "accuracy": acc,
                "accuracy_sd": acc_sd,
                "backward_saved": saved,
                "backward_saved_sd": saved_sd,
                "wall_time_s": wall,
                "wall_time_sd": wall_sd,
                "train_time_s": train,
                "train_time_sd": train_sd,
                "speedup": base_time / wall if base_time and wall > 0 else None,
            }
        )
    return out


def format_table(rows: list, clock: str = "wall") -> str:
    """A plain-text table, one line per selector: accuracy, backward passes saved and
    ``clock`` time (wall or CPU) as mean ± sd over the seeds, and the speed-up in that
    time over the baseline."""
    agg = aggregate(rows, clock)
    header = ("selector", "seeds", "test accuracy (%)", "backward saved (%)", f"{_CLOCK_LABEL[clock]} (s)", "speed-up")
    lines = [header]
    for a in agg:
        lines.append(
            (
                a["label"],
                str(a["seeds"]),
                spread_text(a["accuracy"], a["accuracy_sd"], a["seeds"], 2, 100),
                spread_text(a["backward_saved"], a["backward_saved_sd"], a["seeds"], 1, 100),
                spread_text(a["wall_time_s"], a["wall_time_sd"], a["seeds"], 2),
                "-" if a["speedup"] is None else f"{a['speedup']:.2f}x",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
    out = [fmt(lines[0]), "  ".join("-" * w for w in widths)] + [fmt(line) for line in lines[1:]]
    return "\n".join(out)


#: one colour and marker per selector, shared by the compare and sweep plots
COLORS = {"none": "tab:gray", "ies": "tab:blue", "infobatch": "tab:orange", "random": "tab:green"}
MARKERS = {"none": "s", "ies": "o", "infobatch": "^", "random": "D"}


def describe(config, delta_text: str = "") -> str:
    """``digits (mlp, 60 epochs), IES δ=0.0002``: what a plot's title says the runs
    trained on (from whichever of these fields ``config`` has)."""
    model, epochs = getattr(config, "model", None), getattr(config, "epochs", None)
    details = ", ".join(str(v) for v in (model, epochs and f"{epochs} epochs") if v)
    text = f"{getattr(config, 'dataset', 'the data')}" + (f" ({details})" if details else "")
    return f"{text}, {delta_text}" if delta_text else text


def plot(rows: list, path: str, title: str = "", clock: str = "wall") -> str:
    """One figure, two panels: test accuracy against backward passes saved (one point
    per run, the selector's mean marked), and mean ``clock`` time per selector. Each
    selector has its own marker and a small sideways offset, so that selectors at the
    same saving (random removal is matched to IES's) stay visible; the legend sits
    below the panels. ``title`` names the data and δ. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plots import save

    agg = aggregate(rows, clock)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.6))
    spread = max((100 * r["backward_saved"] for r in rows), default=0.0) or 1.0
    for i, a in enumerate(agg):
        rs = [r for r in rows if r["selector"] == a["selector"]]
        c, m = COLORS[a["selector"]], MARKERS[a["selector"]]
        dx = (i - (len(agg) - 1) / 2) * 0.015 * spread  # dodge: the same x would hide one selector behind another
        ax1.scatter([100 * r["backward_saved"] + dx for r in rs], [100 * r["accuracy"] for r in rs], color=c,
                    marker=m, alpha=0.4, s=18, zorder=3)
        ax1.errorbar(
            100 * a["backward_saved"] + dx, 100 * a["accuracy"], xerr=100 * a["backward_saved_sd"],
            yerr=100 * a["accuracy_sd"], fmt=m, color=c, capsize=3, ms=7, mfc="white", mew=1.5, zorder=4,
            label=a["label"],
        )
    ax1.set_xlabel("backward passes saved (%; selectors offset sideways)")
    ax1.set_ylabel("test accuracy (%)")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(4, max(1, len(agg))), fontsize=8,
               frameon=False)
    ax1.grid(alpha=0.3)
    labels = [a["label"] for a in agg]
    ax2.bar(labels, [a["wall_time_s"] for a in agg], yerr=[a["wall_time_sd"] for a in agg],
            color=[COLORS[a["selector"]] for a in agg], capsize=3)
    ax2.set_ylabel(f"{_CLOCK_LABEL[clock]} (s)")
    ax2.grid(alpha=0.3, axis="y")
    seeds = max((a["seeds"] for a in agg), default=0)
    head = f"selectors compared on {title}" if title else "selectors compared"
    fig.suptitle(f"{head}\n{seeds_text(seeds)}", fontsize=11)
    return save(fig, path, dpi=120)


# ---- command line ---------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``compare`` subcommand's own options (the training options, ``--dataset``,
    ``--epochs`` ..., come from the ``train`` subcommand's parser)."""
    parser.add_argument("--selectors", nargs="+", choices=SELECTORS, default=list(SELECTORS),
                        help="selectors to compare (default: all)")
    add_seed_arguments(parser)
    parser.add_argument("--no-match-random", dest="match_random", action="store_false",
                        help="run random removal at --random-ratio instead of IES's saved fraction")
    parser.add_argument("--clock", choices=CLOCKS, default=None,
                        help="the time the table and plot compare: cpu (the runs' CPU seconds: what neighbours on a "
                             "shared machine do not inflate; one thread per run; the default when every run "
                             "recorded it) or wall")
    parser.add_argument("--plot", default=None, help="where to write the plot (default: OUT/compare.png; '' for none)")
    parser.add_argument("--json", default=None, help="also write the rows (with each run's summary) as JSON here")


def run(args: argparse.Namespace, base_config, *, train_fn: Optional[Callable] = None, print_fn=print) -> list:
    """What ``ies-fast compare`` does once its training config is built: run,
    print the table, write the plot (and JSON). Returns the rows."""
    check_out_folder(getattr(base_config, "out", None))
    check_output("--json", args.json)
    plot_path = os.path.join(base_config.out, "compare.png") if args.plot is None else args.plot
    plot_path = plot_path if extras.can_plot(plot_path, print_fn) else ""  # before any run
    check_output("--plot", plot_path)
    rows = compare(base_config, args.selectors, args.seeds, match_random=args.match_random, train_fn=train_fn,
                   log=lambda m: print_fn(m))
    clock = pick_clock(rows, getattr(args, "clock", None), print_fn)
    print_fn(format_table(rows, clock))
    if plot_path:
        os.makedirs(os.path.dirname(plot_path) or ".", exist_ok=True)
        delta = getattr(base_config, "delta", None)
        title = describe(base_config, f"IES δ={delta:g}" if isinstance(delta, (int, float)) else "")
        print_fn(f"plot: {plot(rows, plot_path, title, clock=clock)}")
    if args.json:
        print_fn(f"rows: {write_json(rows, args.json)}")
    return rows


def write_json(rows: list, path: str) -> str:
    """Write ``rows`` (each with its run's summary) as JSON to ``path``; returns ``path``."""
    return run_folder.write_json(path, rows, indent=2,
                                 default=lambda o: o if isinstance(o, (int, float, str)) else repr(o))


def check_output(option: str, path: Optional[str]) -> None:
    """Raise ``ValueError`` naming ``option`` when the file ``path`` cannot be written
    there (a folder, a link, a missing or read-only folder): before any run."""
    if not path:
        return
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a folder; it must name a file")
    try:
        run_folder.check_slot(path)
    except RunFolderError as exc:
        raise ValueError(f"{option} {exc}") from None
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(directory):  # made when the file is written
        directory = os.path.dirname(directory)
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise ValueError(f"{option} {path}: {directory} is not a writable folder")
