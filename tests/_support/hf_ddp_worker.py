"""Run under ``torchrun --nproc_per_node W`` or ``accelerate launch --multi_gpu --num_processes W``
``IESTrainer`` (tiny GPT-2 of tests/integrations/hf_tiny.py, CPU, gloo) checkpointing
every epoch.

    torchrun --nproc_per_node 2 hf_ddp_worker.py OUT EPOCHS [--kill STEP] [--resume] [--fsdp] [--every | --shard]

Every epoch each rank appends ``{"epoch", "world", "steps", "kept"}`` to
``OUT/log-rank<r>.jsonl``; ``--kill`` makes the last rank SIGKILL itself before that
optimizer step; ``--resume`` goes on from the newest complete checkpoint. Rank 0 saves
the final weights to ``OUT/final.pt``. ``--fsdp``: FSDP2 (``fsdp_config={"version": 2}``)
on CUDA ranks over NCCL; it checks that the parameters are FSDP2's ``DTensor`` shards.
``--every``: the replicated IES with ``score_policy="every"``; ``--shard``:
``ies={..., "shard_state": True}`` (a ShardedIES over the ranks; the same policy)."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from ies_fast.selectors import ShardedIES

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


def main(out: str, epochs: int, kill=None, resume: bool = False, fsdp: bool = False, every: bool = False,
         shard: bool = False) -> None:
    torch.set_num_threads(1)
    log = EpochLog(out, kill)
    # FSDP2 (accelerate shards only GPU ranks: its MULTI_CPU type ignores the FSDP plugin)
    sharding = dict(fsdp=True, fsdp_config={"version": 2}, use_cpu=False) if fsdp else {}
    trainer = make_trainer(out, n=50, num_train_epochs=epochs, per_device_train_batch_size=4, save_strategy="epoch",
                           ddp_backend="nccl" if fsdp else "gloo", callbacks=[log],
                           ies={"delta": 0.6, "order": 1, "window": 2, **({"score_policy": "every"} if every else {}),
                                **({"shard_state": True} if shard else {})}, **sharding)
    log.trainer = trainer
    trainer.train(resume_from_checkpoint=True if resume else None)
    if fsdp:  # FSDP2 really sharded the parameters
        shards = {type(p).__name__ for p in trainer.model_wrapped.parameters()}
        assert shards == {"DTensor"}, f"parameters are {shards}, not FSDP2's DTensor shards"
    if shard:  # each rank held its own examples' rows
        sel, rank, world = trainer.selector, trainer.args.process_index, trainer.args.world_size
        assert isinstance(sel, ShardedIES) and (sel.rank, sel.world) == (rank, world), (sel, rank, world)
        assert sel.hist.shape[0] == len(range(rank, 50, world)), sel.hist.shape
    if trainer.args.process_index == 0:
        torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, os.path.join(out, "final.pt"))


if __name__ == "__main__":
    args = sys.argv[1:]
    kill = int(args[args.index("--kill") + 1]) if "--kill" in args else None
    main(args[0], int(args[1]), kill=kill, resume="--resume" in args, fsdp="--fsdp" in args, every="--every" in args,
         shard="--shard" in args)
