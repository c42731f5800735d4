"""What a run's ``samples.parquet`` says about noisy labels and classes.

    python tools/analyze_samples.py RUN_FOLDER [RUN_FOLDER ...] [--json OUT.json]

For each run (a folder holding ``samples.parquet`` or ``samples.csv``, written by
``ies-fast train``):

- flipped-label detection by "never mastered by the end of the run"
  (``first_mastered_epoch == -1``) and by "not mastered at the end"
  (``removed_at_end`` false): precision and recall for the flipped labels;
- AUROC for the flipped labels of IES's last score and of the plain loss ranking
  noisy-label tools use (mean loss over the run, last loss): 0.5 is chance;
- per true class: the fraction of sample-epochs removed, the fraction ever
  mastered, and the mean first mastered epoch.

Numbers only from the file; nothing is unpickled. The files are read like a run
folder's (regular files only, never through a link or from a FIFO, bounded sizes;
see docs/security.md): anything else ends in one line and exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ies_fast.app.train.samples import read_samples  # noqa: E402
from ies_fast.io import run_folder  # noqa: E402

#: the largest log.jsonl read (a row is ~1 KiB; 64 MiB is 60,000 epochs)
MAX_LOG_BYTES = 64 * 2**20


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` (higher = more likely positive) for the
    bool labels ``positive`` (Mann-Whitney U with tied scores sharing their mean
    rank); NaN scores are left out; NaN when one class is empty."""
    keep = ~np.isnan(score)
    score, positive = np.asarray(score[keep], dtype=np.float64), np.asarray(positive[keep], dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    # mean rank (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(score)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def precision_recall(predicted: np.ndarray, positive: np.ndarray) -> dict:
    tp = int((predicted & positive).sum())
    return {"predicted": int(predicted.sum()),
            "precision": tp / int(predicted.sum()) if predicted.any() else float("nan"),
            "recall": tp / int(positive.sum()) if positive.any() else float("nan")}


def per_class(cols: dict, epochs: int) -> list:
    """One dict per true class: sample count, removed fraction of its sample-epochs,
    fraction ever mastered, mean first mastered epoch of those that were."""
    out = []
    for c in np.unique(cols["true_label"]):
        m = cols["true_label"] == c
        first = cols["first_mastered_epoch"][m]
        ever = first >= 1
        out.append({"class": int(c), "samples": int(m.sum()),
                    "removed_fraction": float(cols["epochs_removed"][m].sum() / (m.sum() * epochs)),
                    "ever_mastered": float(ever.mean()),
                    "mean_first_mastered_epoch": float(first[ever].mean()) if ever.any() else float("nan")})
    return out


def analyze(cols: dict, epochs: int) -> dict:
    """Every number of the module docstring for one run's columns."""
    flipped = np.asarray(cols["flipped"], dtype=bool)
    never = cols["first_mastered_epoch"] < 1
    not_at_end = ~np.asarray(cols["removed_at_end"], dtype=bool)
    result = {
        "samples": int(len(flipped)), "flipped": int(flipped.sum()), "epochs": epochs,
        "never_mastered": precision_recall(never, flipped),
        "not_mastered_at_end": precision_recall(not_at_end, flipped),
        "auroc_last_score": auroc(np.asarray(cols["last_score"], dtype=np.float64), flipped),
        "auroc_mean_loss": auroc(np.asarray(cols["mean_loss"], dtype=np.float64), flipped),
        "auroc_last_loss": auroc(np.asarray(cols["last_loss"], dtype=np.float64), flipped),
        "removed_fraction": float(cols["epochs_removed"].sum() / (len(flipped) * epochs)),
        "removed_fraction_flipped": (float(cols["epochs_removed"][flipped].sum() / (flipped.sum() * epochs))
                                     if flipped.any() else float("nan")),
        "removed_fraction_clean": float(cols["epochs_removed"][~flipped].sum() / ((~flipped).sum() * epochs)),
        "per_class": per_class(cols, epochs),
    }
    return result


def read_run(folder: str) -> tuple:
    """``(columns, epochs run)`` of a run folder (its log.jsonl counts the epochs)."""
    for name in ("samples.parquet", "samples.csv"):
        path = os.path.join(folder, name)
        if os.path.lexists(path):
            break
    else:
        raise FileNotFoundError(f"{folder} holds no samples.parquet or samples.csv")
    log = run_folder.read_bytes(os.path.join(folder, "log.jsonl"), MAX_LOG_BYTES)
    epochs = sum(1 for line in log.splitlines() if line.strip())
    if epochs == 0:
        raise ValueError(f"{os.path.join(folder, 'log.jsonl')} records no epoch")
    return read_samples(path), epochs


def format_report(name: str, r: dict) -> str:
    lines = [f"{name}: {r['samples']} samples, {r['flipped']} flipped, {r['epochs']} epochs, "
             f"{100 * r['removed_fraction']:.1f}% of sample-epochs removed "
             f"(flipped {100 * r['removed_fraction_flipped']:.1f}%, clean {100 * r['removed_fraction_clean']:.1f}%)"]
    for key, label in (("never_mastered", "never mastered"), ("not_mastered_at_end", "not mastered at the end")):
        p = r[key]
        lines.append(f"  {label}: {p['predicted']} samples, precision {p['precision']:.3f}, recall {p['recall']:.3f}")
    lines.append(f"  AUROC for flipped: last score {r['auroc_last_score']:.3f}, mean loss {r['auroc_mean_loss']:.3f}, "
                 f"last loss {r['auroc_last_loss']:.3f}")
    lines.append("  class  removed%  ever mastered%  mean first epoch")
    for c in r["per_class"]:
        lines.append(f"  {c['class']:>5}  {100 * c['removed_fraction']:8.1f}  {100 * c['ever_mastered']:14.1f}  "
                     f"{c['mean_first_mastered_epoch']:16.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders holding samples.parquet (or samples.csv) and log.jsonl")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    results = {}
    try:
        for folder in args.runs:
            cols, epochs = read_run(folder)
            results[folder] = analyze(cols, epochs)
            print(format_report(folder, results[folder]))
        if args.json:
            run_folder.write_json(args.json, results, indent=2)
    except (OSError, ValueError, run_folder.RunFolderError) as exc:
        print(f"analyze_samples: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
