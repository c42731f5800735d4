"""A run's files in ``--out``: one row per epoch as JSON lines (``log.jsonl``) and CSV
(``log.csv``), the summary (``summary.json``), the config (``config.json``) and
the plot (``curves.png``). A row's ``epoch`` counts from 1, as on the console.
The logs are rewritten whole from the run's history at
every epoch, so after ``--resume`` they hold exactly the epochs the checkpoint
holds (an epoch cut short by a crash leaves no row)."""
from __future__ import annotations

import csv
import io
import json
import os

from ...io import run_folder

#: the columns of a log row, in order
COLUMNS = (
    "epoch", "lr", "num_samples", "train_loss", "train_acc", "test_loss", "test_acc", "kept", "kept_fraction", "mastered",
    "reincluded", "scored", "backward_samples", "backward_saved", "backward_saved_fraction", "removal_enabled",
    "time_train_s", "time_score_s", "time_eval_s", "time_epoch_s",
    "files_read", "bytes_read", "files_skipped",  # image folders: the training + scoring passes' file reads
)


class RunFiles:
    """Paths of a run's files and the writers for them (call on the main process only)."""

    def __init__(self, out: str):
        self.out = out
        self.checkpoint = os.path.join(out, "checkpoint.pt")
        self.jsonl = os.path.join(out, "log.jsonl")
        self.csv = os.path.join(out, "log.csv")
        self.summary = os.path.join(out, "summary.json")
        self.config = os.path.join(out, "config.json")
        self.plot = os.path.join(out, "curves.png")
        #: the per-sample table (:func:`..samples.write_samples`; CSV when pyarrow is missing)
        self.samples = (os.path.join(out, "samples.parquet"), os.path.join(out, "samples.csv"))

    def check(self) -> None:
        """Raise :class:`~ies_fast.io.run_folder.RunFolderError` when one of the run's
        file names (``run.lock`` and the checkpoint's ``.prev`` included) holds a
        symlink, folder, FIFO or anything but a regular file: said before any work."""
        run_folder.check_folder(self.out)
        for path in (self.checkpoint, self.checkpoint + ".prev", self.jsonl, self.csv, self.summary, self.config,
                     self.plot, *self.samples, os.path.join(self.out, "run.lock")):
            run_folder.check_slot(path)

    def _write(self, path: str, write, durable: bool = True) -> None:
        """Write what ``write(f)`` writes to a text buffer into ``path`` (atomic, never
        through a symlink: :mod:`ies_fast.io.run_folder`)."""
        os.makedirs(self.out, exist_ok=True)
        buf = io.StringIO(newline="")
        write(buf)
        run_folder.write_text(path, buf.getvalue(), durable=durable)

    def write_rows(self, rows: list) -> None:
        """Rewrite both logs from ``rows``. Not fsynced (four fsyncs an epoch): the
        checkpoint, fsynced at the same epoch, holds the rows, and ``--resume``
        rewrites the logs from it."""
        self._write(self.jsonl, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows), durable=False)

        def write_csv(f):
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

        self._write(self.csv, write_csv, durable=False)

    def write_json(self, path: str, obj) -> None:
        self._write(path, lambda f: json.dump(obj, f, indent=2))


def read_rows(path: str) -> list:
    """The rows of a ``log.jsonl``."""
    text = run_folder.read_bytes(path, run_folder.MAX_JSON_BYTES).decode("utf-8")
    return [run_folder.parse_json(line, path) for line in text.splitlines() if line.strip()]


def plot_history(rows: list, path: str, title: str = "") -> str:
    """Two panels like the paper's Figure 1: test accuracy per epoch, and samples
    excluded from backpropagation per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plots import excluded_panel, seed_band

    epochs = [r["epoch"] for r in rows]  # counted from 1, as on the console
    by_class = all(r.get("kept_fraction_by_class") for r in rows)
    fig, axes = plt.subplots(3 if by_class else 2, 1, figsize=(6, 8.5 if by_class else 6), sharex=True)
    top, bottom = axes[0], axes[1]
    if by_class:
        class_kept_panel(axes[2], rows)
    seed_band(top, epochs, [[100 * r["test_acc"] for r in rows]], color="C0")
    top.set_ylabel("test accuracy (%)")
    top.grid(alpha=0.3)
    excluded_panel(bottom, epochs, [[r["num_samples"] - r["kept"] for r in rows]], rows[0]["num_samples"])
    axes[-1].set_xlabel("epoch")
    bottom.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    run_folder.save_figure(fig, path, dpi=100)  # savefig(path) would follow a planted link
    plt.close(fig)
    return path


def class_kept_panel(ax, rows: list) -> None:
    """One line per class: the fraction of its samples trained in each epoch
    (the rows' ``kept_fraction_by_class``)."""
    epochs = [r["epoch"] for r in rows]
    fractions = [r["kept_fraction_by_class"] for r in rows]
    for c in range(len(fractions[0])):
        ax.plot(epochs, [100 * f[c] for f in fractions], label=str(c), lw=1.2)
    ax.set_ylabel("kept per class (%)")
    ax.set_ylim(0, 105)
    ax.legend(ncol=5, fontsize=7, title="class", title_fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
