"""The accuracy-versus-time front (``ies-fast sweep --front``): per method, the points
no other point of that method beats on both test accuracy and time, in a table and
one plot.

A *method* is a selector with its fixed options: the baseline, random removal,
InfoBatch, IES, and IES with a lever (``--ies-variant anneal=0.1``: a
:data:`VARIANT_FIELDS` override, run at every ``--deltas`` value unless it sets its
own ``delta``). Its *points* are its budgets (δ, prune ratio, removed fraction), each
run with the same seeds. The rows come from :func:`ies_fast.app.train.sweep.sweep`;
this module only reads them.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from . import compare as cmp

#: the options an ``--ies-variant`` may set, and how their values are read
VARIANT_FIELDS = {"anneal": float, "order": int, "window": int, "k": int, "threshold": str, "score_policy": str,
                  "score_max_interval": int, "score_every": int, "min_kept": float, "eligibility": str,
                  "delta": float}
#: colours of the IES variants' lines (the selectors keep :data:`compare.COLORS`)
VARIANT_COLORS = ("tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def parse_variant(text: str) -> dict:
    """``"anneal=0.1,order=1"`` -> ``{"anneal": 0.1, "order": 1}``; ``ValueError`` naming
    ``--ies-variant`` for an unknown key, a bad value or a repeated key."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"--ies-variant must be KEY=VALUE[,KEY=VALUE...]; got {text!r}")
    out = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in VARIANT_FIELDS or key in out:
            raise ValueError(f"--ies-variant {text!r}: each part must be KEY=VALUE with a distinct KEY of "
                             f"{', '.join(VARIANT_FIELDS)}")
        try:
            out[key] = VARIANT_FIELDS[key](value.strip())
        except ValueError:
            raise ValueError(f"--ies-variant {text!r}: {key} must be {VARIANT_FIELDS[key].__name__}") from None
    return out


def _value_text(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def variant_name(variant: dict) -> str:
    """``"anneal=0.1 order=1"``: a variant's options but δ, sorted; ``""`` for plain IES."""
    return " ".join(f"{k}={_value_text(v)}" for k, v in sorted(variant.items()) if k != "delta")


def variant_folder(variant: dict) -> str:
    """``"-anneal0.1-order1-window2"``: the variant's part of a run folder's name."""
    return "".join(f"-{k.replace('_', '')}{_value_text(v)}" for k, v in sorted(variant.items()) if k != "delta")


def method_label(selector: str, variant: str = "") -> str:
    """``IES``, ``IES anneal=0.1``, ``InfoBatch`` ...: one line of the plot."""
    return f"{cmp.LABELS[selector]} {variant}".strip()


def pareto_front(xs: list, ys: list, *, larger_x_better: bool) -> list:
    """Indices of the points no other point beats in both x and y (y larger is
    better), ordered by x."""
    sign = 1 if larger_x_better else -1
    front = [i for i in range(len(xs))
             if not any(sign * xs[j] >= sign * xs[i] and ys[j] >= ys[i] and (xs[j], ys[j]) != (xs[i], ys[i])
                        for j in range(len(xs)))]
    return sorted(front, key=lambda i: xs[i])


def beyond_spread(a: dict, b: dict, key: str = "accuracy") -> Optional[bool]:
    """Whether the means of ``a`` and ``b`` differ by more than the seeds' spread
    (the sd of a difference of one draw of each, ``sqrt(sd_a² + sd_b²)``); ``None``
    when either has a single seed (no spread to compare with)."""
    if a["seeds"] < 2 or b["seeds"] < 2:
        return None
    return abs(a[key] - b[key]) > math.hypot(a[f"{key}_sd"], b[f"{key}_sd"])


def points(rows: list, clock: str = "cpu") -> list:
    """The aggregated points (:func:`compare.aggregate`) with ``method`` (its label),
    ``on_front`` (no point of the same method is as fast and more accurate, or
    faster and as accurate: total ``clock`` time) and ``train_speedup`` (the
    speed-up of the training-only CPU time, ``None`` without it)."""
    agg = cmp.aggregate(rows, clock)
    base = next((a for a in agg if a["selector"] == "none"), None)
    for a in agg:
        a["method"] = method_label(a["selector"], a["variant"])
        a["train_speedup"] = (base["train_time_s"] / a["train_time_s"]
                              if base and base.get("train_time_s") and a.get("train_time_s") else None)
    for method in dict.fromkeys(a["method"] for a in agg):
        pts = [a for a in agg if a["method"] == method]
        front = set(pareto_front([a["wall_time_s"] for a in pts], [a["accuracy"] for a in pts], larger_x_better=False))
        for i, a in enumerate(pts):
            a["on_front"] = i in front
    return agg


def fastest_within(pts: list, tolerance: float, method: str) -> Optional[dict]:
    """``method``'s fastest point whose mean accuracy is at least the baseline's
    minus ``tolerance`` points, or ``None``."""
    base = next(a for a in pts if a["selector"] == "none")
    fits = [a for a in pts if a["method"] == method and a["accuracy"] >= base["accuracy"] - tolerance / 100 - 1e-12]
    return min(fits, key=lambda a: a["wall_time_s"], default=None)


def format_table(rows: list, clock: str = "cpu", tolerance: float = 0.2, title: str = "") -> str:
    """The front's table: per method (in first-seen order) its points, with accuracy,
    the difference to the baseline (and whether it exceeds the seeds' spread),
    backward passes saved, training-only CPU time (train + scoring + the selector's
    step), total ``clock`` time with the test passes, the speed-ups of both, and
    ``*`` on the method's Pareto front. Then, per method, its fastest point within
    ``tolerance`` points of the baseline."""
    pts = points(rows, clock)
    base = next(a for a in pts if a["selector"] == "none")
    seeds = sorted({a["seeds"] for a in pts})
    clock_name = cmp._CLOCK_LABEL[clock]
    header = ("method", "point", "seeds", "accuracy (%)", "vs baseline", "saved (%)", "train CPU (s)",
              f"total {clock_name} (s)", "speed-up train / total", "front")
    lines = [header]
    for a in sorted(pts, key=lambda a: ([p["method"] for p in pts].index(a["method"]), a["wall_time_s"])):
        n = a["seeds"]
        if a is base:
            diff = "-"
        else:
            d, verdict = 100 * (a["accuracy"] - base["accuracy"]), beyond_spread(a, base)
            diff = f"{d:+.2f}" + {None: "", True: " (beyond spread)", False: " (within spread)"}[verdict]
        digits = 1 if a["wall_time_s"] >= 10 else 2
        train = ("-" if a.get("train_time_s") is None
                 else cmp.spread_text(a["train_time_s"], a["train_time_sd"], n, digits))
        speed = lambda s: "-" if s is None else f"{s:.2f}x"
        point = "-" if a["param"] is None else f"{cmp.PARAM_NAMES[a['selector']]}={a['param']:g}"
        lines.append((a["method"], point, str(n), cmp.spread_text(a["accuracy"], a["accuracy_sd"], n, 2, 100), diff,
                      cmp.spread_text(a["backward_saved"], a["backward_saved_sd"], n, 1, 100), train,
                      cmp.spread_text(a["wall_time_s"], a["wall_time_sd"], n, digits),
                      f"{speed(a['train_speedup'])} / {speed(a['speedup'])}", "*" if a["on_front"] else ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
    seed_text = (f"{seeds[0]} seed{'s' if seeds[0] != 1 else ''}" if len(seeds) == 1
                 else f"{seeds[0]}-{seeds[-1]} seeds per point")
    spread = " mean ± sd over seeds;" if seeds[-1] > 1 else ""
    head = [f"front{' on ' + title if title else ''}: {seed_text};{spread} times in {clock_name} "
            f"(train: training + scoring, no test pass; total: with the test passes)"]
    out = head + [fmt(lines[0]), "  ".join("-" * w for w in widths)] + [fmt(line) for line in lines[1:]]
    out.append(f"fastest point within {tolerance:g} accuracy points of the baseline "
               f"({100 * base['accuracy']:.2f}%), per method:")
    for method in dict.fromkeys(a["method"] for a in pts if a is not base):
        best = fastest_within(pts, tolerance, method)
        if best is None:
            out.append(f"  {method}: none")
            continue
        train = "-" if best["train_speedup"] is None else f"{best['train_speedup']:.2f}x"
        out.append(f"  {method}: {cmp.PARAM_NAMES[best['selector']]}={best['param']:g}, "
                   f"{100 * best['accuracy']:.2f}%, {best['wall_time_s']:.1f} s ({best['speedup']:.2f}x; "
                   f"training only {train})")
    return "\n".join(out)


def method_colors(pts: list) -> dict:
    """A colour per method: the selectors' own, one of :data:`VARIANT_COLORS` per IES variant."""
    colors, spare = {}, iter(VARIANT_COLORS * 4)
    for a in pts:
        if a["method"] not in colors:
            colors[a["method"]] = cmp.COLORS[a["selector"]] if not a["variant"] else next(spare)
    return colors


def draw(ax, pts: list) -> list:
    """Draw the front on ``ax``: the baseline's mean accuracy (a line) and ± sd band,
    and one line per other method through its points ordered by time, with error
    bars (sd over seeds) in both directions; front points filled. Returns the
    methods drawn, in order."""
    base = next(a for a in pts if a["selector"] == "none")
    acc0, sd0 = 100 * base["accuracy"], 100 * base["accuracy_sd"]
    ax.axhline(acc0, color=cmp.COLORS["none"], lw=1.2, label=f"baseline ({base['wall_time_s']:.3g} s)")
    if sd0 > 0:
        ax.axhspan(acc0 - sd0, acc0 + sd0, color=cmp.COLORS["none"], alpha=0.2)
    ax.plot([base["wall_time_s"]], [acc0], cmp.MARKERS["none"], color=cmp.COLORS["none"], ms=6)  # its time
    colors, drawn = method_colors(pts), []
    for method, color in colors.items():
        mine = sorted((a for a in pts if a["method"] == method), key=lambda a: a["wall_time_s"])
        if mine[0]["selector"] == "none":
            continue
        marker = cmp.MARKERS[mine[0]["selector"]]
        ax.errorbar([a["wall_time_s"] for a in mine], [100 * a["accuracy"] for a in mine],
                    xerr=[a["wall_time_sd"] for a in mine], yerr=[100 * a["accuracy_sd"] for a in mine],
                    fmt=marker + "-", color=color, capsize=2, ms=5, mfc="white", lw=1.2, label=method, zorder=3)
        front = [a for a in mine if a["on_front"]]
        ax.plot([a["wall_time_s"] for a in front], [100 * a["accuracy"] for a in front], marker, color=color, ms=5,
                ls="none", zorder=4)
        for a in mine:
            ax.annotate(f"{a['param']:g}", (a["wall_time_s"], 100 * a["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=color)
        drawn.append(method)
    return drawn


def plot(rows: list, path: str, clock: str = "cpu", title: str = "") -> str:
    """One panel, test accuracy against total ``clock`` time (:func:`draw`); the
    legend below. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plots import save

    pts = points(rows, clock)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    draw(ax, pts)
    ax.set_xlabel(f"{cmp._CLOCK_LABEL[clock]} per run (s), with the test passes")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    seeds = sorted({a["seeds"] for a in pts})
    spread = cmp.seeds_text(seeds[-1]) if len(seeds) == 1 else f"mean ± sd over {seeds[0]}-{seeds[-1]} seeds per point"
    fig.suptitle(f"accuracy against {cmp._CLOCK_LABEL[clock]}{':' if title else ''}\n{title}\n{spread}; "
                 f"numbers: δ / prune ratio / removed fraction; filled: the method's Pareto front", fontsize=9)
    fig.tight_layout()
    return save(fig, path, dpi=110, layout=False)


def check_variants(variants: Sequence[dict]) -> None:
    """Raise ``ValueError`` for two ``--ies-variant`` values naming the same method and δ."""
    seen = set()
    for v in variants:
        key = (variant_name(v), v.get("delta"))
        if not variant_name(v) or key in seen:
            raise ValueError(f"--ies-variant {variant_name(v) or v!r}: each variant must change an option other "
                             f"than delta, and appear once")
        seen.add(key)
