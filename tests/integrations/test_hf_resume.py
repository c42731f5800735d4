"""IESTrainer checkpoints survive SIGKILL and hostile files: ``ies_selector.pt`` is
written atomically before the Trainer's ``trainer_state.json``, validated whole on
load (an error names the file), and ``train(resume_from_checkpoint=True)`` resumes
from the newest checkpoint written whole, ending bit-identical to the run that was
never interrupted (from a checkpoint inside a shrunken epoch, or at an epoch's end)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hf_tiny import SIGKILL_RUN, make_trainer, same_run  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from ies_fast.io.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from ies_fast.io.run_folder import RunFolderError  # noqa: E402
from ies_fast.integrations._hf_checkpoint import newest_complete_checkpoint  # noqa: E402
from ies_fast.integrations.huggingface import STATE_FILE  # noqa: E402

SAVE = SIGKILL_RUN["save_steps"]
# (mode, k): killed while writing the k-th checkpoint (see hf_sigkill_driver.py), and
# the checkpoint the resume must use: the one before, or the k-th when it was whole
TRIALS = [("weights", 11), ("selector", 13), ("state", 14), ("state-half", 6), ("rotate", 12),
          ("external", 3), ("external", 9)]
WHOLE = {"rotate"}


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed children: the same float results
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("uninterrupted")
    trainer = make_trainer(out, **SIGKILL_RUN)
    trainer.train()
    assert trainer.selector.stats()["removed"] > 0  # checkpoints inside shrunken epochs
    return trainer, out


def test_sigkill_at_any_moment_resumes_from_the_newest_complete_checkpoint(reference, tmp_path):
    ref, _ = reference
    root = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    run = subprocess.run([sys.executable, str(HERE / "hf_sigkill_driver.py"), str(root), "0",
                          *(f"{m}:{k}" for m, k in TRIALS)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    trials = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(trials) == len(TRIALS)
    inside_shrunken = 0
    for t in trials:
        assert t["status"] == -9, t  # killed by SIGKILL, not finished
        folder = Path(t["folder"])
        newest = int(max(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])).name.split("-")[1])
        resumed = newest_complete_checkpoint(str(folder))
        step = int(Path(resumed).name.split("-")[1])
        if t["mode"] == "external":
            assert step in (newest - SAVE, newest), t
        else:
            assert step == SAVE * (t["k"] if t["mode"] in WHOLE else t["k"] - 1), t
        state = load_checkpoint(Path(resumed) / STATE_FILE)
        inside_shrunken += bool(state["selector"]["mastered"].any() and state["steps_in_epoch"] > 0)
        trainer = make_trainer(folder, **SIGKILL_RUN)
        trainer.train(resume_from_checkpoint=True)
        assert same_run(trainer, ref), t
    assert inside_shrunken >= 2  # resumed inside epochs IES had shrunk


def test_resume_from_an_epoch_end_checkpoint(one_thread, tmp_path, capfd):
    """save_strategy="epoch" saves after the epoch was closed: the resumed run starts
    the next epoch at its first batch (it skipped the whole epoch before). With
    disable_tqdm the checkpoints are written without save_pretrained's shard bars."""
    run = dict(SIGKILL_RUN, save_strategy="epoch")
    ref = make_trainer(tmp_path / "ref", **{**run, "save_total_limit": None})
    ref.train()
    assert "Writing model shards" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # turned off for the Trainer's checkpoints only
    folders = sorted((tmp_path / "ref").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    shrunken = [f for f in folders if load_checkpoint(f / STATE_FILE)["selector"]["mastered"].any()]
    assert shrunken and load_checkpoint(shrunken[0] / STATE_FILE)["steps_in_epoch"] == 0
    trainer = make_trainer(tmp_path / "resumed", **run)
    trainer.train(resume_from_checkpoint=str(shrunken[0]))
    assert same_run(trainer, ref)


@pytest.fixture
def checkpoint(reference, tmp_path):
    """A copy of a whole checkpoint of the reference run, and a fresh trainer."""
    _, out = reference
    source = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    folder = tmp_path / source.name
    shutil.copytree(source, folder)
    return folder, make_trainer(tmp_path / "new", **SIGKILL_RUN)


HOSTILE = {
    "epochs_closed": lambda s: s.update(epochs_closed=10**9),
    "steps_in_epoch": lambda s: s.update(steps_in_epoch=10**9),
    "disagrees with the selector": lambda s: s.update(epochs_closed=s["epochs_closed"] - 1),
    "global_step": lambda s: s.update(global_step=True),
    "epoch": lambda s: s["selector"].update(epoch=-1),
}


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_a_hostile_selector_file_is_refused_naming_it(checkpoint, what):
    folder, trainer = checkpoint
    state = load_checkpoint(folder / STATE_FILE)
    HOSTILE[what](state)
    save_checkpoint(state, folder / STATE_FILE)
    before = trainer.selector.state_dict()
    with pytest.raises(ValueError, match=f"{STATE_FILE}.*{what}"):
        trainer.load_selector(str(folder))
    after = trainer.selector.state_dict()
    assert _same(before, after)


def _same(a, b) -> bool:
    """Equal states: tensors by value, dicts (the scoring schedule's, with tensors) key by key."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    return a == b


def test_a_truncated_or_symlinked_selector_file_is_refused_naming_it(checkpoint, tmp_path):
    folder, trainer = checkpoint
    path = folder / STATE_FILE
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=f"{STATE_FILE}.*truncated"):
        trainer.load_selector(str(folder))
    elsewhere = tmp_path / "elsewhere.pt"
    elsewhere.write_bytes(whole)
    path.unlink()
    path.symlink_to(elsewhere)
    with pytest.raises(ValueError, match=f"{STATE_FILE}.*symbolic link"):
        trainer.load_selector(str(folder))
    assert newest_complete_checkpoint(str(folder.parent)) is None  # nor picked for a resume


def test_the_selector_file_is_replaced_atomically_never_written_through_a_link(checkpoint, tmp_path):
    folder, trainer = checkpoint
    target = tmp_path / "not-yours"
    target.write_bytes(b"keep me")
    (folder / STATE_FILE).unlink()
    (folder / STATE_FILE).symlink_to(target)
    with pytest.raises(RunFolderError, match=f"{STATE_FILE} is a symlink where a file is expected: refused"):
        trainer.save_selector(str(folder))  # a planted link is refused (docs/security.md), never written through
    assert target.read_bytes() == b"keep me"
    (folder / STATE_FILE).unlink()
    trainer.save_selector(str(folder))
    assert load_checkpoint(folder / STATE_FILE)["epochs_closed"] == 0
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))


def test_an_incomplete_checkpoint_is_refused_or_skipped(checkpoint, tmp_path):
    folder, trainer = checkpoint
    (folder / "trainer_state.json").write_text('{"global_step": ')  # killed while writing it
    with pytest.raises(ValueError, match="trainer_state.json"):
        trainer.train(resume_from_checkpoint=str(folder))
    with pytest.raises(ValueError, match="No complete checkpoint"):
        make_trainer(folder.parent, **SIGKILL_RUN).train(resume_from_checkpoint=True)
