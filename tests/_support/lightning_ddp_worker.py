"""A small LightningModule on the bundled digits with IESCallback and a one-process
``Trainer``, shared by the Lightning tests in tests/integrations/ (the 2-process DDP
worker, tests/_support/lightning_ddp_resume_worker.py, builds on it)."""
from __future__ import annotations

import lightning
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import ies_fast
from ies_fast.data import IndexedDataset
from ies_fast.integrations.lightning import IESCallback

DELTA, LR, BATCH = 5e-3, 0.01, 64


def digits() -> tuple[TensorDataset, TensorDataset]:
    """(train, validation): the first 1,500 digits and the other 297."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])


class DigitsMLP(lightning.LightningModule):
    """``record="outputs"``: training_step returns the per-sample losses;
    ``record="cross_entropy"``: it records them with ies_fast.cross_entropy."""

    def __init__(self, ies: IESCallback, record: str = "outputs", batch_size: int = BATCH):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        self.ies, self.record, self.batch_size = ies, record, batch_size
        self.train_set, self.val_set = digits()
        self.epoch_samples: list[int] = []  # training samples seen per epoch (this rank)
        self.val_epochs = 0

    def forward(self, x):
        return self.net(x)

    def train_dataloader(self):
        return DataLoader(IndexedDataset(self.train_set), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=512)

    def on_train_epoch_start(self):
        self.epoch_samples.append(0)

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        self.epoch_samples[-1] += index.numel()
        if self.record == "cross_entropy":
            return ies_fast.cross_entropy(self(x), y, index, selector=self.ies.selector)
        losses = F.cross_entropy(self(x), y, reduction="none")
        return {"loss": losses.mean(), "per_sample_loss": losses}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.val_epochs += 1

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=LR)


def trainer(max_epochs: int, callbacks, **kwargs) -> lightning.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return lightning.Trainer(max_epochs=max_epochs, callbacks=callbacks, accelerator="cpu", devices=1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs)
