"""IESCallback with Trainer(limit_train_batches): the limit applies to the epoch's
kept batches (a fraction of them, or at most N), and validation still runs at the
end of every epoch (ModelCheckpoint / EarlyStopping get their data)."""
import math

import pytest

pytest.importorskip("lightning")
pytest.importorskip("sklearn")
import lightning  # noqa: E402

from ies_fast.integrations.lightning import IESCallback  # noqa: E402
from _support.lightning_ddp_worker import BATCH, DigitsMLP, trainer  # noqa: E402

EPOCHS, DELTA = 10, 2e-2


class Counting(DigitsMLP):
    """Counts each epoch's training batches and the kept samples it was given."""

    def __init__(self, ies):
        super().__init__(ies)
        self.batches, self.kept = [], []

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.batches.append(0)
        self.kept.append(int(self.ies.selector.kept_mask().sum()))

    def on_train_batch_start(self, batch, batch_idx):
        self.batches[-1] += 1


@pytest.mark.parametrize("limit", [0.5, 10])
def test_the_limit_applies_to_kept_batches_and_validation_runs_every_epoch(limit):
    lightning.seed_everything(0, verbose=False)
    ies = IESCallback(1500, delta=DELTA)
    model = Counting(ies)
    trainer(EPOCHS, [ies], limit_train_batches=limit).fit(model)
    kept_batches = [math.ceil(k / BATCH) for k in model.kept]
    assert min(kept_batches) < math.ceil(1500 / BATCH), "IES must shrink the epochs here"
    expected = [int(b * limit) if isinstance(limit, float) else min(b, limit) for b in kept_batches]
    assert model.batches == expected
    assert model.val_epochs == EPOCHS
