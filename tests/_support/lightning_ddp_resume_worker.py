"""Run as a script by tests/integrations/test_lightning_ddp_resume.py: ``IESCallback`` with
``Trainer(strategy="ddp", accelerator="cpu", devices=D)`` on the bundled digits (the
``"ddp"`` strategy, built as ``DDPStrategy`` for a 120 s collective timeout).

    python lightning_ddp_resume_worker.py OUT DEVICES EPOCHS [--kill EPOCH BATCH] [--resume] [--fsdp]
                                          [--every | --shard]

Every epoch each rank appends ``{"epoch", "world", "steps", "kept"}`` to
``OUT/log-rank<r>.jsonl`` (the kept set it trained on and its optimizer steps);
``ModelCheckpoint`` writes ``OUT/ckpt/last.ckpt`` after every epoch; ``--kill`` makes
the last rank SIGKILL itself at that batch; ``--resume`` goes on from ``last.ckpt``.
Rank 0 saves the final weights to ``OUT/final.pt``. ``--fsdp`` shards the model's
parameters with FSDP2 instead: ``ModelParallelStrategy`` and ``fully_shard`` in
``configure_model`` (Lightning's ``"fsdp"`` strategy refuses the CPU). ``--every``: the
replicated IES with ``score_policy="every"``; ``--shard``: ``IESCallback(shard_state=True)``
(a ShardedIES over the ranks, built in ``setup()``; the same policy)."""
from __future__ import annotations

import datetime
import json
import os
import signal
import sys

import lightning
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from ies_fast.integrations.lightning import IESCallback
from ies_fast.selectors import ShardedIES

from _support.lightning_ddp_worker import BATCH, DELTA, DigitsMLP


class ShardedDigitsMLP(DigitsMLP):
    """DigitsMLP with its parameters sharded by FSDP2 over the data-parallel ranks."""

    def configure_model(self):
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)


class EpochLog(Callback):
    """Logs each epoch's kept set and optimizer steps; kills a rank at ``kill``."""

    def __init__(self, ies: IESCallback, out: str, kill=None):
        self.ies, self.out, self.kill = ies, out, kill

    def on_train_epoch_start(self, trainer, pl_module):
        self.kept = self.ies.selector.kept_indices().tolist()
        self.start = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.kill == (trainer.current_epoch, batch_idx) and trainer.global_rank == trainer.world_size - 1:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_end(self, trainer, pl_module):
        line = {"epoch": trainer.current_epoch, "world": trainer.world_size,
                "steps": trainer.global_step - self.start, "kept": self.kept}
        with open(os.path.join(self.out, f"log-rank{trainer.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")


def main(out: str, devices: int, epochs: int, kill=None, resume: bool = False, fsdp: bool = False,
         every: bool = False, shard: bool = False) -> None:
    torch.set_num_threads(1)
    lightning.seed_everything(0, verbose=False)
    ies = IESCallback(1500, delta=DELTA, order=1, window=2, shard_state=shard,
                      **({"score_policy": "every"} if every else {}))
    model = (ShardedDigitsMLP if fsdp else DigitsMLP)(ies, batch_size=BATCH)
    ckpt = ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), save_last=True, save_top_k=0 if fsdp else -1,
                           every_n_epochs=1, save_on_train_epoch_end=True)  # FSDP2: last.ckpt only
    timeout = datetime.timedelta(seconds=120)  # strategy="ddp" or "fsdp", with a timeout
    ddp = (ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1, timeout=timeout) if fsdp
           else DDPStrategy(timeout=timeout))
    trainer = lightning.Trainer(max_epochs=epochs, callbacks=[ies, EpochLog(ies, out, kill), ckpt], accelerator="cpu",
                                devices=devices, strategy=ddp, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, ckpt_path=os.path.join(out, "ckpt", "last.ckpt") if resume else None)
    if shard:  # each rank held its own samples' rows
        sel = ies.selector
        assert isinstance(sel, ShardedIES) and (sel.rank, sel.world) == (trainer.global_rank, trainer.world_size)
        assert sel.hist.shape[0] == len(range(sel.rank, 1500, sel.world)), sel.hist.shape
    weights = model.state_dict()  # collective under FSDP (gathers the full parameters)
    if trainer.global_rank == 0:
        torch.save({k: v.clone() for k, v in weights.items()}, os.path.join(out, "final.pt"))


if __name__ == "__main__":
    args = sys.argv[1:]
    kill = (int(args[args.index("--kill") + 1]), int(args[args.index("--kill") + 2])) if "--kill" in args else None
    main(args[0], int(args[1]), int(args[2]), kill=kill, resume="--resume" in args, fsdp="--fsdp" in args,
         every="--every" in args, shard="--shard" in args)
