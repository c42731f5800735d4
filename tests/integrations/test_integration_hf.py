"""IESTrainer (ies_fast.integrations.huggingface): a tiny GPT-2 built from a config
(random init, nothing downloaded) fine-tuned on generated sequences, most of which
(counting sequences) are learned early. IES removes examples, the training loss
falls, and resume_from_checkpoint restores the selector (end of an epoch and in
the middle of a shrunken one) so the run ends like an uninterrupted one."""
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments  # noqa: E402

from ies_fast.integrations.huggingface import STATE_FILE, IESTrainer, IndexedExamples  # noqa: E402

VOCAB, LENGTH, N, EPOCHS, BATCH = 48, 10, 128, 8, 8
SAVE_STEPS = 8  # full epochs have 16 steps: saves at the first epochs' ends, then inside shrunken epochs
IES = {"delta": 5e-2, "order": 1, "window": 2}  # eligible after 3 epochs: a short test


def sequences(n=N, seed=0) -> list:
    """Three quarters count up from a random start (learned within a few epochs),
    one quarter is random tokens."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    counting = (start + torch.arange(LENGTH)) % VOCAB
    noise = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    ids = torch.where((torch.arange(n) % 4 == 0).unsqueeze(1), noise, counting)
    return [{"input_ids": row, "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": row} for row in ids]


def tiny_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


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
    return [(f, torch.load(f / STATE_FILE, weights_only=True)) for f in folders]


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
    torch.save({"version": 1, "selector": {}, "epochs_closed": -1, "steps_in_epoch": 0}, tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="epochs_closed"):
        trainer.load_selector(str(tmp_path))
