"""tools/analyze_samples.py: AUROC equals the pairwise definition (ties count half),
precision/recall and per-class removal rates on a hand-made table."""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

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


def hand_made_columns():
    return {
        "index": np.arange(6), "label": np.array([0, 0, 1, 1, 1, 0]), "true_label": np.array([0, 0, 1, 1, 0, 1]),
        "flipped": np.array([False, False, False, False, True, True]),
        "first_mastered_epoch": np.array([2, 3, 2, -1, -1, 4]),
        "epochs_removed": np.array([3, 2, 3, 0, 0, 1]), "times_came_back": np.zeros(6, int),
        "removed_at_end": np.array([True, True, True, False, False, False]),
        "last_score": np.array([0.1, 0.2, 0.1, 0.5, 0.9, 0.8]),
        "mean_loss": np.array([0.1, 0.1, 0.1, 0.3, 2.0, 1.5]), "last_loss": np.array([0.0, 0.1, 0.0, 0.2, 3.0, 0.1]),
    }


def test_analyze_hand_made_table():
    cols = hand_made_columns()
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


# ---- hostile run folders (issue 31): one line and exit 2, never a hang or a traceback ----
@pytest.fixture
def run_dir(tmp_path, no_hang):
    """A run folder as ``ies-fast train`` writes it (samples.parquet, log.jsonl), under conftest's alarm."""
    from ies_fast.app.train.samples import write_samples

    write_samples(hand_made_columns(), str(tmp_path))
    (tmp_path / "log.jsonl").write_text('{"epoch": 1}\n' * 5)
    return tmp_path


def _one_line(capsys, folder, *needles):
    code = tool.main([str(folder)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_a_good_run_folder_is_analysed(run_dir, capsys):
    assert tool.main([str(run_dir)]) == 0
    assert "6 samples, 2 flipped, 5 epochs" in capsys.readouterr().out


def _parquet(folder, cols):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(cols), str(folder / "samples.parquet"))


def _missing_column(folder):
    cols = hand_made_columns()
    del cols["flipped"]
    _parquet(folder, cols)


def _string_column(folder):
    _parquet(folder, {**hand_made_columns(), "epochs_removed": np.array(list("abcdef"))})


def _nulls(folder):
    import pyarrow as pa

    cols = {k: pa.array(v) for k, v in hand_made_columns().items()}
    cols["first_mastered_epoch"] = pa.array([2, None, 2, -1, -1, 4])
    _parquet(folder, cols)


def _not_parquet(folder):
    (folder / "samples.parquet").write_text("index,label\n1,2\n")


def _linked(folder):
    os.rename(folder / "samples.parquet", folder / "elsewhere")
    os.symlink(folder / "elsewhere", folder / "samples.parquet")


def _bad_csv(folder):
    os.remove(folder / "samples.parquet")
    header = ",".join(hand_made_columns())
    (folder / "samples.csv").write_text(header + "\n1,2,x\n")


def _fifo_log(folder):
    os.remove(folder / "log.jsonl")
    os.mkfifo(folder / "log.jsonl")


HOSTILE = {"missing_column": (_missing_column, "flipped"), "string_column": (_string_column, "epochs_removed"),
           "nulls": (_nulls, "null"), "not_parquet": (_not_parquet, "not a samples table"),
           "linked": (_linked, "symlink"), "bad_csv": (_bad_csv, "samples.csv"), "fifo_log": (_fifo_log, "FIFO")}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_samples_file_is_one_line(run_dir, capsys, name):
    make, needle = HOSTILE[name]
    make(run_dir)
    _one_line(capsys, run_dir, needle)


def test_too_many_rows_are_refused_before_reading(run_dir, capsys, monkeypatch):
    """A parquet file's footer gives its rows: more than allowed is refused unread (the
    issue's 10 MB file of 200M rows; here the limit is lowered instead)."""
    import pyarrow.parquet as pq

    from ies_fast.app.train import samples

    monkeypatch.setattr(samples, "MAX_SAMPLE_ROWS", 5, raising=False)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("read before the row count was checked"))
    _one_line(capsys, run_dir, "6 rows", "refused unread")
