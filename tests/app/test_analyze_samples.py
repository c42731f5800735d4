"""tools/analyze_samples.py: AUROC equals the pairwise definition (ties count half),
precision/recall and per-class removal rates on a hand-made table."""
import importlib.util
from pathlib import Path

import numpy as np

_path = Path(__file__).resolve().parents[2] / "tools" / "analyze_samples.py"
_spec = importlib.util.spec_from_file_location("analyze_samples", _path)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def pairwise_auroc(score, positive):
    pos, neg = score[positive], score[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_auroc_matches_pairwise_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        score = rng.integers(0, 6, 60).astype(float)  # many ties
        positive = rng.random(60) < 0.3
        assert abs(tool.auroc(score, positive) - pairwise_auroc(score, positive)) < 1e-12
    assert tool.auroc(np.array([1.0, 2.0, 3.0, np.nan]), np.array([False, True, True, False])) == 1.0
    assert np.isnan(tool.auroc(np.array([1.0, 2.0]), np.array([True, True])))


def test_analyze_hand_made_table():
    cols = {
        "index": np.arange(6), "label": np.array([0, 0, 1, 1, 1, 0]), "true_label": np.array([0, 0, 1, 1, 0, 1]),
        "flipped": np.array([False, False, False, False, True, True]),
        "first_mastered_epoch": np.array([2, 3, 2, -1, -1, 4]),
        "epochs_removed": np.array([3, 2, 3, 0, 0, 1]), "times_came_back": np.zeros(6, int),
        "removed_at_end": np.array([True, True, True, False, False, False]),
        "last_score": np.array([0.1, 0.2, 0.1, 0.5, 0.9, 0.8]),
        "mean_loss": np.array([0.1, 0.1, 0.1, 0.3, 2.0, 1.5]), "last_loss": np.array([0.0, 0.1, 0.0, 0.2, 3.0, 0.1]),
    }
    r = tool.analyze(cols, epochs=5)
    assert r["never_mastered"] == {"predicted": 2, "precision": 0.5, "recall": 0.5}
    assert r["not_mastered_at_end"] == {"predicted": 3, "precision": 2 / 3, "recall": 1.0}
    assert r["auroc_last_score"] == 1.0 and r["auroc_mean_loss"] == 1.0
    assert r["auroc_last_loss"] == pairwise_auroc(cols["last_loss"], cols["flipped"])
    assert abs(r["removed_fraction"] - 9 / 30) < 1e-12
    assert abs(r["removed_fraction_flipped"] - 1 / 10) < 1e-12
    by_class = {c["class"]: c for c in r["per_class"]}
    assert by_class[0]["samples"] == 3 and abs(by_class[0]["removed_fraction"] - 5 / 15) < 1e-12
    assert by_class[0]["ever_mastered"] == 2 / 3 and by_class[0]["mean_first_mastered_epoch"] == 2.5
    assert by_class[1]["ever_mastered"] == 2 / 3
