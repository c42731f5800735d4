"""A tiny GPT-2 task for the IESTrainer tests (built from a config: nothing is
downloaded), and the child process of the SIGKILL test:

    python tests/integrations/hf_tiny.py OUTPUT_DIR    # trains, checkpointing every SAVE_STEPS
"""
import sys
from pathlib import Path

import torch

VOCAB, LENGTH = 32, 8
IES = {"delta": 0.1, "order": 1, "window": 2}  # eligible after 3 epochs: short runs remove examples


def sequences(n: int, seed: int = 0, vocab: int = VOCAB, length: int = LENGTH) -> list:
    """Three quarters count up from a random start (learned within a few epochs),
    one quarter is random tokens."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    counting = (start + torch.arange(length)) % vocab
    noise = torch.randint(0, vocab, (n, length), generator=g)
    ids = torch.where((torch.arange(n) % 4 == 0).unsqueeze(1), noise, counting)
    return [{"input_ids": row, "attention_mask": torch.ones(length, dtype=torch.long), "labels": row} for row in ids]


def tiny_gpt2(vocab: int = VOCAB, length: int = LENGTH, n_embd: int = 32, n_layer: int = 1):
    """A GPT-2 from a config (seeded init, no dropout)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=length, n_embd=n_embd, n_layer=n_layer, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def make_trainer(out, *, n: int = 128, ies=None, callbacks=(), trainer_cls=None, **overrides):
    """An IESTrainer (or ``trainer_cls``) on ``n`` sequences; ``overrides`` are TrainingArguments."""
    from transformers import TrainingArguments

    from ies_fast.integrations.huggingface import IESTrainer

    kwargs = dict(output_dir=str(out), num_train_epochs=8, per_device_train_batch_size=4, per_device_eval_batch_size=64,
                  learning_rate=1e-2, lr_scheduler_type="linear", warmup_steps=8, save_strategy="no",
                  logging_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    kwargs.update(overrides)
    args = TrainingArguments(**kwargs)
    if trainer_cls is not None:
        return trainer_cls(model=tiny_gpt2(), args=args, train_dataset=sequences(n), callbacks=list(callbacks))
    return IESTrainer(model=tiny_gpt2(), args=args, train_dataset=sequences(n), callbacks=list(callbacks),
                      ies=dict(IES if ies is None else ies))


# epochs of 16, 16, 16, 13, 9, 2 kept batches: 72 optimizer steps, checkpoints 5, 10, ..., 70, 72
SIGKILL_RUN = dict(n=64, num_train_epochs=6, save_strategy="steps", save_steps=5, save_total_limit=2,
                   ies={"delta": 0.6, "order": 1, "window": 2})


def same_run(a, b) -> bool:
    """Bit-identical selector state and model."""
    return (torch.equal(a.selector.hist, b.selector.hist) and torch.equal(a.selector.mastered, b.selector.mastered)
            and a.selector.stats() == b.selector.stats()
            and all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters())))


if __name__ == "__main__":  # the SIGKILL test's child: train, checkpointing often
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    make_trainer(sys.argv[1], **SIGKILL_RUN).train(resume_from_checkpoint=len(sys.argv) > 2 or None)
