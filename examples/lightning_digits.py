"""IES in PyTorch Lightning via ies_fast.integrations.lightning.IESCallback, on
scikit-learn's digits, with a per-step OneCycleLR schedule sized from
trainer.estimated_stepping_batches (the callback steps it by epoch progress, so
it ends where it would without IES).

    python examples/lightning_digits.py      # IES and the same run without IES (delta=0)

Prints validation accuracy, the fraction of backward passes saved, the optimizer
steps run and the LR of the last step."""
import logging
import warnings

import lightning
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from ies_fast.data import IndexedDataset
from ies_fast.integrations.lightning import IESCallback
from _with_and_without import main

# Two messages every Lightning 2.6 fit prints here, neither caused by IES: the "litlogger"
# tip (logger_connector.py, printed unless a LitLogger is attached, even with logger=False)
# and torch 2.13's LeafSpec deprecation, raised by Lightning's own CombinedLoader
# (lightning/pytorch/utilities/_pytree.py). Silence exactly those two.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage())
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class DigitsMLP(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        self.last_lr = None

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, index = batch                                      # items carry their index
        self.last_lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        losses = F.cross_entropy(self(x), y, reduction="none")
        return {"loss": losses.mean(), "per_sample_loss": losses}  # the callback records these

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-3)
        total = self.trainer.estimated_stepping_batches     # the plan: max_epochs full epochs
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def run(delta: float, epochs: int, seed: int) -> dict:
    lightning.seed_everything(seed, verbose=False)
    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = TensorDataset(x[perm[:1500]], y[perm[:1500]]), TensorDataset(x[perm[1500:]], y[perm[1500:]])
    ies = IESCallback(len(train), delta=delta, seed=seed)
    model = DigitsMLP()
    trainer = lightning.Trainer(max_epochs=epochs, callbacks=[ies], accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(IndexedDataset(train), batch_size=32, shuffle=True),
                DataLoader(val, batch_size=512))
    print(f"  steps {trainer.global_step} of {ies.planned_steps} planned, last step's LR {model.last_lr:.3g}, "
          f"LR after it {trainer.optimizers[0].param_groups[0]['lr']:.3g}", flush=True)
    return {"val_acc": float(trainer.callback_metrics["val_acc"]),
            "saved": ies.selector.stats()["backward_saved_fraction"]}


if __name__ == "__main__":
    main(run, __doc__, delta=1e-3, epochs=40, metric="val_acc")
