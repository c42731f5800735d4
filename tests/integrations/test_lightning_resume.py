"""IESCallback resumed from a checkpoint written inside a shrunken epoch
(ModelCheckpoint(every_n_train_steps)), or at its last batch: the resumed run
reads the rest of the same kept order, so masks, model and LR schedule equal the
uninterrupted run's."""
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("sklearn")
import lightning  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from ies_fast.integrations.lightning import IESCallback  # noqa: E402
from _support.lightning_ddp_worker import BATCH, LR, DigitsMLP, trainer  # noqa: E402

EPOCHS, DELTA = 9, 2e-2


class Run(DigitsMLP):
    """Linear per-step schedule sized from estimated_stepping_batches; keeps the
    mastered mask after every epoch and the LR of every step."""

    def __init__(self, ies):
        super().__init__(ies, record="cross_entropy")
        self.masks, self.lrs = {}, []

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=LR)
        total = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self):
        if self.trainer.fit_loop.restarted_mid_epoch:  # Lightning calls no on_train_epoch_start for it
            self.epoch_samples.append(0)

    def on_train_batch_start(self, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self):  # runs after IESCallback closed the epoch
        self.masks[self.current_epoch] = self.ies.selector.mastered_mask().clone()


def fit(callbacks=(), ckpt_path=None, **kwargs):
    lightning.seed_everything(0, verbose=False)
    ies = IESCallback(1500, delta=DELTA)
    model = Run(ies)
    t = trainer(EPOCHS, [ies, *callbacks], **kwargs)
    t.fit(model, ckpt_path=ckpt_path)
    return ies, model, t


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, checkpointing after every optimizer step."""
    ckpt_dir = tmp_path_factory.mktemp("steps")
    every = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_train_steps=1, save_on_train_epoch_end=False)
    return (*fit([every], enable_checkpointing=True), ckpt_dir)


@pytest.mark.parametrize("where", ["inside", "last batch"])
def test_resume_inside_a_shrunken_epoch_equals_the_uninterrupted_run(reference, where):
    ref_ies, ref, ref_t, ckpt_dir = reference
    shrunk = [e for e, n in enumerate(ref.epoch_samples) if n < 1500]
    assert len(shrunk) >= 2, ref.epoch_samples
    epoch = shrunk[0]
    start = sum(-(-n // BATCH) for n in ref.epoch_samples[:epoch])  # optimizer steps before the epoch
    batches = -(-ref.epoch_samples[epoch] // BATCH)
    step = start + (batches // 2 if where == "inside" else batches)
    (ckpt,) = Path(ckpt_dir).glob(f"epoch={epoch}-step={step}.ckpt")

    ies, model, t = fit(ckpt_path=str(ckpt))
    assert t.global_step == ref_t.global_step
    rest = ref.epoch_samples[epoch + 1:]
    if where == "inside":  # only the rest of the epoch was trained, then the same epochs
        rest = [ref.epoch_samples[epoch] - (step - start) * BATCH, *rest]
    assert model.epoch_samples[-len(rest):] == rest and sum(model.epoch_samples) == sum(rest)
    for e, mask in model.masks.items():
        assert torch.equal(mask, ref.masks[e]), e
    assert torch.equal(ies.selector.hist, ref_ies.selector.hist)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    assert model.lrs == ref.lrs[step:]
