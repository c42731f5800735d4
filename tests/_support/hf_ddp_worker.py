"""Run under ``torchrun --nproc_per_node W`` or ``accelerate launch --multi_gpu --num_processes W``
``IESTrainer`` (tiny GPT-2 of tests/integrations/hf_tiny.py, CPU, gloo) checkpointing
every epoch.

    torchrun --nproc_per_node 2 hf_ddp_worker.py OUT EPOCHS [--kill STEP] [--resume]

Every epoch each rank appends ``{"epoch", "world", "steps", "kept"}`` to
``OUT/log-rank<r>.jsonl``; ``--kill`` makes the last rank SIGKILL itself before that
optimizer step; ``--resume`` goes on from the newest complete checkpoint. Rank 0 saves
the final weights to ``OUT/final.pt``."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integrations"))
from hf_tiny import make_trainer  # noqa: E402


class EpochLog(TrainerCallback):
    def __init__(self, out: str, kill=None):
        self.out, self.kill, self.trainer = out, kill, None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.kept = self.trainer.selector.kept_indices().tolist()
        self.start, self.epoch = state.global_step, self.trainer.selector.epoch

    def on_step_begin(self, args, state, control, **kwargs):
        if self.kill == state.global_step and args.process_index == args.world_size - 1:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, args, state, control, **kwargs):
        line = {"epoch": self.epoch, "world": args.world_size,
                "steps": state.global_step - self.start, "kept": self.kept}
        with open(os.path.join(self.out, f"log-rank{args.process_index}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")


def main(out: str, epochs: int, kill=None, resume: bool = False) -> None:
    torch.set_num_threads(1)
    log = EpochLog(out, kill)
    trainer = make_trainer(out, n=50, num_train_epochs=epochs, per_device_train_batch_size=4, save_strategy="epoch",
                           ddp_backend="gloo", callbacks=[log], ies={"delta": 0.6, "order": 1, "window": 2})
    log.trainer = trainer
    trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.args.process_index == 0:
        torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, os.path.join(out, "final.pt"))


if __name__ == "__main__":
    args = sys.argv[1:]
    kill = int(args[args.index("--kill") + 1]) if "--kill" in args else None
    main(args[0], int(args[1]), kill=kill, resume="--resume" in args)
