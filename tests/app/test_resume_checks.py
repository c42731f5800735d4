"""``--resume`` checks a checkpoint's whole content against the run before applying
any of it (issue 31): a checkpoint re-saved through ``save_checkpoint`` with a bad
field (valid digest) ends in one line and exit 2, and the run folder is unchanged."""
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from _support.cli_helpers import one_line_error  # noqa: E402
from ies_fast.app.cli import main  # noqa: E402
from ies_fast.io.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

TINY = ["--dataset", "synthetic", "--synthetic-size", "64", "--image-size", "4", "--model", "mlp",
        "--batch-size", "32", "--epochs", "2", "--stop-after", "1", "--no-progress", "--no-plot"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def _first_weight(s):
    s["model"].pop(next(iter(s["model"])))


def _numpy_key_dtype(s):
    s["rng"]["numpy"]["key"] = s["rng"]["numpy"]["key"].int()


def _torch_rng_dtype(s):
    s["rng"]["torch"] = s["rng"]["torch"].long()


def _momentum_shape(s):
    s["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(3)


BAD = {
    "optimizer_empty": lambda s: s.update(optimizer={}),
    "model_string": lambda s: s.update(model="weights"),
    "missing_weight": _first_weight,
    "rng_torch_dtype": _torch_rng_dtype,
    "rng_numpy_dtype": _numpy_key_dtype,
    "history_string": lambda s: s.update(history="rows"),
    "epoch_string": lambda s: s.update(epoch="0"),
    "epoch_huge": lambda s: s.update(epoch=10**9),
    "momentum_shape": _momentum_shape,
    "selector_list": lambda s: s.update(selector=[]),
    "whole_list": None,
}


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_field_is_one_line_and_leaves_the_folder(stopped_run, tmp_path, capsys, name):
    out = tmp_path / "r"
    shutil.copytree(stopped_run, out)
    state = load_checkpoint(out / "checkpoint.pt")
    if BAD[name] is None:
        state = list(state.values())
    else:
        BAD[name](state)
    save_checkpoint(state, out / "checkpoint.pt")
    os.remove(out / "checkpoint.pt.prev")  # no fallback: the bad file is what --resume reads
    before = _digests(out)
    one_line_error(capsys, ["train", "--resume", "--no-progress", "--no-plot", "--out", str(out)], "cannot resume")
    assert _digests(out) == before


def test_a_good_checkpoint_still_resumes(stopped_run, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(stopped_run, out)
    assert main(["train", "--resume", "--no-progress", "--no-plot", "--out", str(out)]) == 0
    assert "resumed" in capsys.readouterr().err
