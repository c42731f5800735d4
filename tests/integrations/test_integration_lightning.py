"""IESCallback (ies_fast.integrations.lightning) on the bundled digits: samples are
removed and the loader shrinks, reused and rebuilt loaders train alike, a run
resumed from a Lightning checkpoint ends like an uninterrupted one (2-process DDP:
tests/integrations/test_lightning_ddp_resume.py)."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("lightning")
pytest.importorskip("sklearn")
import lightning  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from ies_fast.integrations.lightning import IESCallback  # noqa: E402

from _support.lightning_ddp_worker import DELTA, DigitsMLP, trainer  # noqa: E402

EPOCHS = 7


def fit(epochs=EPOCHS, record="outputs", reload_every=0, callbacks=(), ckpt_path=None, **kwargs):
    lightning.seed_everything(0, verbose=False)
    ies = IESCallback(1500, delta=DELTA)
    model = DigitsMLP(ies, record=record)
    t = trainer(epochs, [ies, *callbacks], reload_dataloaders_every_n_epochs=reload_every, **kwargs)
    t.fit(model, ckpt_path=ckpt_path)
    return ies, model, t


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, checkpointing after every epoch (at validation end,
    i.e. before the callback closes the epoch)."""
    ckpt_dir = tmp_path_factory.mktemp("ckpt")
    kept = KeptCounts()
    ies, model, t = fit(callbacks=[kept, ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1)],
                        record="cross_entropy", enable_checkpointing=True)
    model.kept_after_epoch = kept.counts
    return ies, model, t, ckpt_dir


class KeptCounts(lightning.Callback):
    """The kept count after each epoch (runs after IESCallback closed the epoch)."""

    def __init__(self):
        self.counts = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.counts.append(int(pl_module.ies.selector.kept_mask().sum()))


def test_callback_removes_samples_and_feeds_only_kept_ones(reference):
    ies, model, t, _ = reference
    stats = ies.selector.stats()
    assert stats["removed"] > 100 and stats["backward_saved_fraction"] > 0.01
    # the loader followed the kept set every epoch; validation ran at every epoch's end
    assert model.epoch_samples[0] == 1500 and model.epoch_samples[-1] < 1500
    assert model.val_epochs == EPOCHS
    assert 0 < float(t.callback_metrics["ies/kept_fraction"]) < 1
    assert float(t.callback_metrics["ies/backward_saved_fraction"]) == pytest.approx(stats["backward_saved_fraction"])


def test_epoch_sizes_follow_the_kept_counts(reference):
    _, model, _, _ = reference
    assert model.epoch_samples[1:] == model.kept_after_epoch[:-1] and min(model.kept_after_epoch) < 1500


def test_rebuilt_loaders_train_like_a_reused_loader(reference):
    ies, model, _ = fit(reload_every=1, record="cross_entropy")
    ref_ies, ref_model, _, _ = reference
    assert torch.equal(ies.selector.mastered_mask(), ref_ies.selector.mastered_mask())
    assert model.epoch_samples == ref_model.epoch_samples
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)


def test_resume_from_a_lightning_checkpoint_restores_the_selector(reference):
    ref_ies, ref_model, _, ckpt_dir = reference
    (ckpt,) = sorted(Path(ckpt_dir).glob("epoch=3-*.ckpt"))
    ies, model, _ = fit(record="cross_entropy", ckpt_path=str(ckpt))
    assert torch.equal(ies.selector.hist, ref_ies.selector.hist)
    assert torch.equal(ies.selector.mastered_mask(), ref_ies.selector.mastered_mask())
    assert ies.selector.stats() == ref_ies.selector.stats()
    assert model.epoch_samples == ref_model.epoch_samples[4:]
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="num_samples"):
        IESCallback()
    with pytest.raises(ValueError, match="score_batch_size"):
        IESCallback(10, score_batch_size=0)
    ies = IESCallback(10)
    assert ies.selector.scoring_schedule.policy == "backoff" and ies.selector.threshold == "absolute"
    options = IESCallback(40, delta=0.2, score_policy="every", min_kept=0.25, threshold="relative").selector
    assert (options.delta, options.scoring_schedule.policy, options.threshold) == (0.2, "every", "relative")
    assert options.kept_floor.min_kept == 10
    with pytest.raises(ValueError, match="version"):
        ies.load_state_dict({"version": 0})
    with pytest.raises(ValueError, match="'open'"):
        ies.load_state_dict({**ies.state_dict(), "open": None})


def test_no_recorded_loss_is_an_error():
    class Silent(DigitsMLP):
        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            return torch.nn.functional.cross_entropy(self(x), y)

    lightning.seed_everything(0, verbose=False)
    ies = IESCallback(1500)
    with pytest.raises(RuntimeError, match="no per-sample loss"):
        trainer(1, [ies], limit_val_batches=0).fit(Silent(ies))


def test_a_training_set_without_indices_is_refused():
    class NoIndex(DigitsMLP):
        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=64)

    ies = IESCallback(1500)
    with pytest.raises(TypeError, match="IndexedDataset"):
        trainer(1, [ies], limit_val_batches=0).fit(NoIndex(ies))


def test_shard_state_builds_a_sharded_ies_in_setup_whose_state_is_whole():
    from types import SimpleNamespace

    from ies_fast.selectors import ShardedIES

    lightning.seed_everything(0, verbose=False)
    ies = IESCallback(1500, delta=DELTA, order=1, window=2, shard_state=True)
    assert ies.selector is None  # no process group yet: built in setup()
    trainer(3, [ies], limit_val_batches=0).fit(DigitsMLP(ies))
    sel = ies.selector
    assert isinstance(sel, ShardedIES) and (sel.rank, sel.world, sel.epoch) == (0, 1, 3)
    assert sel.scoring_schedule.policy == "every"  # the one policy it supports, by default
    state = ies.state_dict()["selector"]
    assert "shard" not in state and state["hist"].shape == (1500, 3) and torch.equal(state["hist"], sel.hist)
    again = IESCallback(1500, delta=DELTA, order=1, window=2, shard_state=True)
    two_ranks = SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    with pytest.raises(ValueError, match="shard_state"):  # a process group that is not the trainer's processes
        again.setup(two_ranks, None, "fit")
    for bad, error in [({"selector": sel}, ValueError), ({"score_policy": "backoff"}, ValueError),
                       ({"threshold": "relative"}, ValueError), ({"shard_state": 1}, TypeError)]:
        with pytest.raises(error, match="shard_state|score_policy|threshold"):
            IESCallback(1500, **{"shard_state": True, **bad})
