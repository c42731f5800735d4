"""IESCallback checkpoint state: a bad seed is refused whole at restore (nothing
applied), and resuming from a checkpoint without IESCallback state is an error
instead of a silent restart of the selector."""

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("sklearn")
import lightning  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from ies_fast.integrations.lightning import IESCallback  # noqa: E402
from _support.lightning_ddp_worker import DigitsMLP, trainer  # noqa: E402


def trained_state() -> dict:
    """A callback state whose selector differs from a fresh one's."""
    ies = IESCallback(100)
    ies.selector.observe(torch.rand(100), torch.arange(100))
    ies.selector.step()
    return ies.state_dict()


@pytest.mark.parametrize("seed", [True, 2**70, -(2**64), 1.0, None])
def test_a_bad_seed_is_refused_and_nothing_is_applied(seed):
    ies = IESCallback(100)
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in ies.selector.state_dict().items()}
    with pytest.raises(ValueError, match="seed"):
        ies.load_state_dict({**trained_state(), "seed": seed})
    after = ies.selector.state_dict()
    assert after["epoch"] == before["epoch"] == 0 and torch.equal(after["hist"], before["hist"])
    assert ies.seed == 0 and ies._open is False


def test_a_seed_out_of_range_is_refused_at_construction():
    with pytest.raises(ValueError, match="seed"):
        IESCallback(100, seed=2**64)


def test_a_good_state_restores():
    state = {**trained_state(), "seed": 2**63 - 1}
    ies = IESCallback(100)
    ies.load_state_dict(state)
    assert ies.seed == 2**63 - 1 and ies.selector.epoch == 1


def test_resuming_from_a_checkpoint_without_iescallback_state_is_an_error(tmp_path):
    lightning.seed_everything(0, verbose=False)
    ies = IESCallback(1500)
    plain = trainer(1, [ModelCheckpoint(dirpath=tmp_path)], enable_checkpointing=True, limit_val_batches=0)
    plain.fit(DigitsMLP(ies))  # trains without the callback
    (ckpt,) = tmp_path.glob("*.ckpt")
    ies = IESCallback(1500)
    with pytest.raises(ValueError, match="no 'IESCallback' callback state"):
        trainer(2, [ies], limit_val_batches=0).fit(DigitsMLP(ies), ckpt_path=str(ckpt))
    assert ies.selector.epoch == 0
    trainer(2, [ies]).validate(DigitsMLP(ies), ckpt_path=str(ckpt))  # evaluating its weights is fine
