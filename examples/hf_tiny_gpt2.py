"""IES in Hugging Face's Trainer via ies_fast.integrations.huggingface.IESTrainer:
a tiny GPT-2 built from a config (random init, nothing downloaded) learns generated
sequences, three quarters of which count up (learned early), a quarter random.

    python examples/hf_tiny_gpt2.py          # IES and the same run without IES (delta=0)

Prints the held-out loss on counting sequences and the fraction of backward passes saved,
and for each run its optimizer steps, the LR of its last step and where the schedule
ended (IESTrainer runs the linear schedule by epoch progress: it ends at 0 as without IES)."""
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments

from ies_fast.integrations.huggingface import IESTrainer
from _with_and_without import main

VOCAB, LENGTH = 48, 16


def sequences(n: int, seed: int, noise_every: int = 4) -> list:
    g = torch.Generator().manual_seed(seed)
    ids = (torch.randint(0, VOCAB, (n, 1), generator=g) + torch.arange(LENGTH)) % VOCAB
    if noise_every:
        noisy = torch.arange(n) % noise_every == 0
        ids[noisy] = torch.randint(0, VOCAB, (int(noisy.sum()), LENGTH), generator=g)
    return [{"input_ids": row, "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": row} for row in ids]


def run(delta: float, epochs: int, seed: int) -> dict:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=16,
                                 per_device_eval_batch_size=128, learning_rate=3e-3, seed=seed, use_cpu=True,
                                 save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True)
        trainer = IESTrainer(model=GPT2LMHeadModel(config), args=args, train_dataset=sequences(512, seed),
                             eval_dataset=sequences(256, 1000 + seed, noise_every=0), ies={"delta": delta})
        trainer.add_callback(last_lr := LastLR())
        trainer.train()
        print(f"seed {seed}  delta={delta:g}: {trainer.state.global_step} optimizer steps, last step at LR "
              f"{last_lr.lr:.3g}, schedule ends at {trainer.lr_scheduler.get_last_lr()[0]:.3g}", flush=True)
        return {"eval_loss": trainer.evaluate()["eval_loss"],
                "saved": trainer.selector.stats()["backward_saved_fraction"]}


class LastLR(TrainerCallback):
    """The LR each optimizer step runs at (the last one is kept)."""

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.lr = optimizer.param_groups[0]["lr"]


if __name__ == "__main__":
    main(run, __doc__, delta=5e-2, epochs=16, metric="eval_loss")
