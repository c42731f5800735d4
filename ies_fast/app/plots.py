"""Per-epoch panels shared by the demo's plot and a run's ``curves.png``: a curve
over one or several seeds (mean line, min–max band) on whole-number epoch ticks,
and the samples excluded per epoch with the total named and a fraction axis."""
from __future__ import annotations

from typing import Sequence


def whole_epochs(ax) -> None:
    """Epoch ticks on whole numbers only."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def seed_band(ax, epochs: Sequence[int], runs: Sequence[Sequence[float]], *, color: str, label: str = "") -> None:
    """The mean over ``runs`` (one sequence per seed) as a line and, with more than
    one run, their min–max as a shaded band."""
    columns = list(zip(*runs))
    mean = [sum(c) / len(c) for c in columns]
    n = len(runs)
    text = f"{label} (mean of {n} seeds, band: min–max)" if n > 1 and label else label
    ax.plot(epochs, mean, color=color, label=text or None)
    if n > 1:
        ax.fill_between(epochs, [min(c) for c in columns], [max(c) for c in columns], color=color, alpha=0.25, lw=0)
    whole_epochs(ax)


def excluded_panel(ax, epochs: Sequence[int], excluded_runs: Sequence[Sequence[float]], num_samples: int,
                   *, color: str = "C1") -> None:
    """Samples excluded from backpropagation per epoch (one sequence per seed):
    the count out of ``num_samples`` on the left axis, the fraction on the right."""
    seed_band(ax, epochs, excluded_runs, color=color)
    ax.set_ylim(0, num_samples)
    ax.set_ylabel(f"samples excluded (of {num_samples:,})")
    frac = ax.secondary_yaxis("right", functions=(lambda v: 100 * v / num_samples, lambda p: p * num_samples / 100))
    frac.set_ylabel("excluded (%)")


def save(fig, path: str, dpi: int = 100, *, layout: bool = True) -> str:
    """Lay out ``fig`` (unless the caller did: ``layout=False``), write it to ``path``
    (format from the extension; atomic, never through a symlink), close it; returns ``path``."""
    import matplotlib.pyplot as plt

    from ..io.run_folder import save_figure

    if layout:
        fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
    plt.close(fig)
    return path
