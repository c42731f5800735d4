"""IES in PyTorch Lightning via ies_fast.integrations.lightning.IESCallback, on
scikit-learn's digits.

    python examples/lightning_digits.py      # IES and the same run without IES (delta=0)

Prints validation accuracy and the fraction of backward passes saved."""

import lightning
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from ies_fast.data import IndexedDataset
from ies_fast.integrations.lightning import IESCallback
from _with_and_without import main


class DigitsMLP(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, index = batch                                      # items carry their index
        losses = F.cross_entropy(self(x), y, reduction="none")
        return {"loss": losses.mean(), "per_sample_loss": losses}  # the callback records these

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def run(delta: float, epochs: int, seed: int) -> dict:
    lightning.seed_everything(seed, verbose=False)
    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = TensorDataset(x[perm[:1500]], y[perm[:1500]]), TensorDataset(x[perm[1500:]], y[perm[1500:]])
    ies = IESCallback(len(train), delta=delta, seed=seed)
    trainer = lightning.Trainer(max_epochs=epochs, callbacks=[ies], accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(DigitsMLP(), DataLoader(IndexedDataset(train), batch_size=32, shuffle=True),
                DataLoader(val, batch_size=512))
    return {"val_acc": float(trainer.callback_metrics["val_acc"]),
            "saved": ies.selector.stats()["backward_saved_fraction"]}


if __name__ == "__main__":
    main(run, __doc__, delta=1e-3, epochs=40, metric="val_acc")
