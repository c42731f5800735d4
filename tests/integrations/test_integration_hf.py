"""IESTrainer (ies_fast.integrations.huggingface): a tiny GPT-2 built from a config
(random init, nothing downloaded) fine-tuned on generated sequences, most of which
(counting sequences) are learned early. IES removes examples, the training loss
falls, and resume_from_checkpoint restores the selector (end of an epoch and in
the middle of a shrunken one) so the run ends like an uninterrupted one."""
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent  # tests/ now, tests/integrations/ after the layout change
sys.path.insert(0, str(HERE if (HERE / "hf_tiny.py").exists() else HERE / "integrations"))
import hf_tiny  # noqa: E402

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import TrainingArguments  # noqa: E402

from ies_fast import IES as Selector  # noqa: E402
from ies_fast.io.checkpoint import save_checkpoint  # noqa: E402
from ies_fast.integrations._hf_checkpoint import read_state  # noqa: E402
from ies_fast.integrations.huggingface import STATE_FILE, IESTrainer, IndexedExamples  # noqa: E402

VOCAB, LENGTH, N, EPOCHS, BATCH = 48, 10, 128, 8, 8
SAVE_STEPS = 8  # full epochs have 16 steps: saves at the first epochs' ends, then inside shrunken epochs
IES = {"delta": 5e-2, "order": 1, "window": 2}  # eligible after 3 epochs: a short test


def sequences(n=N, seed=0) -> list:
    return hf_tiny.sequences(n, seed, vocab=VOCAB, length=LENGTH)


def tiny_gpt2():
    return hf_tiny.tiny_gpt2(vocab=VOCAB, length=LENGTH, n_embd=32, n_layer=2)


def make_trainer(out, **kwargs):
    args = TrainingArguments(output_dir=str(out), num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH,
                             per_device_eval_batch_size=64, learning_rate=1e-2, lr_scheduler_type="constant",
                             save_strategy="steps", save_steps=SAVE_STEPS, logging_strategy="epoch", report_to=[],
                             use_cpu=True, seed=0, disable_tqdm=True)
    return IESTrainer(model=tiny_gpt2(), args=args, train_dataset=sequences(), ies=dict(IES), **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    trainer = make_trainer(out)
    trainer.train()
    return trainer, out


def checkpoints(out: Path) -> list:
    """``(folder, selector state)`` of every checkpoint, in step order."""
    folders = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return [(f, read_state(str(f))) for f in folders]


def resume_and_compare(ref, folder, out):
    trainer = make_trainer(out)  # its own folder: the reference's checkpoints stay as they are
    trainer.train(resume_from_checkpoint=str(folder))
    assert torch.equal(trainer.selector.hist, ref.selector.hist)
    assert torch.equal(trainer.selector.mastered_mask(), ref.selector.mastered_mask())
    assert trainer.selector.stats() == ref.selector.stats()
    for p, q in zip(trainer.model.parameters(), ref.model.parameters()):
        assert torch.equal(p, q)


def test_ies_removes_examples_and_the_loss_falls(reference):
    trainer, _ = reference
    stats = trainer.selector.stats()
    assert stats["epoch"] == EPOCHS and stats["removed"] > N // 8
    assert stats["backward_saved_fraction"] > 0.02
    rows = [row for row in trainer.state.log_history if "loss" in row]  # one per epoch
    assert len(rows) == EPOCHS and rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert rows[0]["ies/kept_fraction"] == 1 and rows[-1]["ies/kept_fraction"] == 1 - stats["removed"] / N


def test_resume_after_an_epochs_last_step(reference, tmp_path):
    """Step 32 is epoch 2's last step: saved before the epoch was closed (scored,
    stepped); the resumed run closes it and goes on like the uninterrupted one."""
    ref, out = reference
    folder, state = checkpoints(out)[3]
    assert folder.name == "checkpoint-32" and state["epochs_closed"] == 1 and state["steps_in_epoch"] == 16
    resume_and_compare(ref, folder, tmp_path)


def test_resume_inside_a_shrunken_epoch(reference, tmp_path):
    """A checkpoint inside an epoch with fewer kept batches than the full data set:
    the Trainer alone would resume at the wrong epoch and batch."""
    ref, out = reference
    inside = [(f, s) for f, s in checkpoints(out) if 0 < s["steps_in_epoch"] < N // BATCH
              and int(s["selector"]["mastered"].sum()) > 0]
    assert inside, "the run must save inside a shrunken epoch"
    resume_and_compare(ref, inside[-1][0], tmp_path)


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(TypeError, match="dicts"):
        IndexedExamples([(1, 2)])[0]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(TypeError, match="ies must be"):
        IESTrainer(model=tiny_gpt2(), args=args, train_dataset=sequences(8), ies=0.1)
    accumulating = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        IESTrainer(model=tiny_gpt2(), args=accumulating, train_dataset=sequences(8))
    trainer = IESTrainer(model=tiny_gpt2(), args=args, train_dataset=sequences(8))
    with pytest.raises(FileNotFoundError, match="IESTrainer"):
        trainer.load_selector(str(tmp_path))
    save_checkpoint({"version": 2, "selector": {}, "epochs_closed": -1, "steps_in_epoch": 0, "global_step": 0},
                    tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="epochs_closed"):
        trainer.load_selector(str(tmp_path))
    used = Selector(8)
    state = used.state_dict()
    state["epoch"] = 2
    used.load_state_dict(state)
    with pytest.raises(ValueError, match="fresh selector"):
        IESTrainer(model=tiny_gpt2(), args=args, train_dataset=sequences(8), ies=used)


def test_a_second_train_call_is_refused(reference):
    trainer, _ = reference
    with pytest.raises(ValueError, match="trained already"):
        trainer.train()


def test_ies_options_reach_the_selector_with_backoff_by_default(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    default = IESTrainer(model=tiny_gpt2(), args=args, train_dataset=sequences(8), ies={"delta": 0.1}).selector
    assert default.scoring_schedule.policy == "backoff" and default.threshold == "absolute"
    sel = IESTrainer(model=tiny_gpt2(), args=args, train_dataset=sequences(8),
                     ies={"delta": 0.1, "threshold": "relative", "score_policy": "every", "min_kept": 0.5}).selector
    assert (sel.threshold, sel.scoring_schedule.policy, sel.kept_floor.min_kept) == ("relative", "every", 4)


def test_shard_state_builds_a_sharded_ies_whose_file_holds_the_whole_state(tmp_path):
    from ies_fast.selectors import ShardedIES

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = IESTrainer(model=tiny_gpt2(), args=args, train_dataset=sequences(8),
                         ies={"delta": 0.1, "order": 1, "window": 2, "shard_state": True})
    sel = trainer.selector
    assert isinstance(sel, ShardedIES) and (sel.rank, sel.world) == (0, 1)
    assert sel.scoring_schedule.policy == "every"  # the one policy it supports, by default
    sel.observe(torch.rand(8), torch.arange(8))
    sel.step()
    trainer.save_selector(str(tmp_path))
    saved = read_state(str(tmp_path))["selector"]
    expected = sel.state_dict()  # one rank's shard: here every row, and "shard"
    assert expected.pop("shard") == {"rank": 0, "world": 1}
    assert saved.keys() == expected.keys() and torch.equal(saved["hist"], expected["hist"])
    for bad, error in [({"score_policy": "backoff"}, ValueError), ({"threshold": "relative"}, ValueError),
                       ({"shard_state": 1}, TypeError)]:
        with pytest.raises(error, match="score_policy|threshold|shard_state"):
            IESTrainer(model=tiny_gpt2(), args=args, train_dataset=sequences(8), ies={"shard_state": True, **bad})


def test_save_only_model_checkpoints_still_hold_the_selector(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=BATCH,
                             save_strategy="epoch", save_only_model=True, report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True)
    trainer = IESTrainer(model=tiny_gpt2(), args=args, train_dataset=sequences(16), ies=dict(IES))
    trainer.train()
    saved = read_state(str(tmp_path / "checkpoint-4"))  # written by the on_save event (no RNG file to follow)
    assert saved["epochs_closed"] == 2 and torch.equal(saved["selector"]["hist"], trainer.selector.hist)
