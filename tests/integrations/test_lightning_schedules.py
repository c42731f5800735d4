"""IESCallback and a per-step LR schedule sized from trainer.estimated_stepping_batches
(LambdaLR linear): with IES removing >= 20% of the samples the schedule still ends
where it would without IES, and its curve over epoch progress matches the run
without IES within one step (one end-to-end pair of runs; the arithmetic, max_steps
and optimizer-step counts are tests/test_progress.py's). Per-epoch schedules keep
working."""
import math

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("sklearn")
import lightning  # noqa: E402

from ies_fast.integrations.lightning import IESCallback  # noqa: E402
from _support.lightning_ddp_worker import LR, DigitsMLP, trainer  # noqa: E402

EPOCHS, DELTA = 9, 2e-2


class Scheduled(DigitsMLP):
    """Adam at LR with a per-step schedule sized as Lightning's docs show; records
    the LR each optimizer step runs at and the epoch progress before it."""

    def __init__(self, ies, kind):
        super().__init__(ies)
        self.kind, self.lrs, self.progress, self.planned = kind, [], [], None

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=LR)
        total = self.planned = self.trainer.estimated_stepping_batches
        if self.kind == "linear":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total)
        else:  # per epoch
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.7)}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_start(self, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        self.progress.append(self.trainer.current_epoch + batch_idx / self.trainer.num_training_batches)


def fit(kind, delta, **kwargs):
    lightning.seed_everything(0, verbose=False)
    ies = IESCallback(1500, delta=delta)
    model = Scheduled(ies, kind)
    t = trainer(kwargs.pop("max_epochs", EPOCHS), [ies], limit_val_batches=0, **kwargs)
    t.fit(model)
    return ies, model, t


@pytest.fixture(scope="module")
def runs():
    return fit("linear", 0.0), fit("linear", DELTA)


def test_the_schedule_ends_where_it_would_without_ies(runs):
    (_, base, base_t), (ies, model, t) = runs
    assert ies.selector.stats()["removed"] >= 0.2 * 1500, "IES must remove >= 20% of the samples here"
    assert t.global_step < base_t.global_step == base.planned  # the epochs shrank
    peak = max(base.lrs)
    assert model.lrs[-1] <= 0.01 * peak  # the last optimizer step
    final = t.optimizers[0].param_groups[0]["lr"]
    assert final == pytest.approx(base_t.optimizers[0].param_groups[0]["lr"], abs=1e-12)
    if model.kind == "linear":
        assert final == 0.0


def test_the_lr_over_progress_matches_the_run_without_ies_within_one_step(runs):
    (_, base, _), (_, model, _) = runs
    per_epoch = base.planned // EPOCHS
    for p, lr in zip(model.progress, model.lrs):
        s = p * per_epoch  # the step the run without IES took at this progress
        lo, hi = max(0, math.floor(s) - 1), min(len(base.lrs) - 1, math.ceil(s) + 1)
        near = base.lrs[lo:hi + 1]
        assert min(near) - 1e-12 <= lr <= max(near) + 1e-12, (p, lr, near)


def test_the_plan_is_kept_and_estimated_stepping_batches_is_documented(runs):
    (_, base, _), (ies, model, t) = runs
    assert ies.planned_steps == model.planned == base.planned
    # read after the first epoch it counts the current epoch's kept batches (documented)
    assert t.estimated_stepping_batches == EPOCHS * t.num_training_batches


def test_per_epoch_schedules_keep_working():
    ies, model, t = fit("epoch", DELTA)
    assert ies.selector.stats()["removed"] > 0
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR * 0.7**EPOCHS)  # one step per epoch
    starts = [lr for p, lr in zip(model.progress, model.lrs) if p == int(p)]
    assert starts == pytest.approx([LR * 0.7**e for e in range(EPOCHS)])
