"""EpochSchedule against torch's schedulers stepped once per epoch, with epochs of
random (shrinking) step counts: the rate at every epoch boundary must not depend
on how many steps an epoch had."""
import math

import pytest
import torch

from ies_fast.app.train.schedule import EpochSchedule

EPOCHS = 12


def _optimizer(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _torch_scheduler(kind, opt):
    S = torch.optim.lr_scheduler
    return {
        "exp": lambda: S.ExponentialLR(opt, gamma=0.9),
        "multistep": lambda: S.MultiStepLR(opt, milestones=[6, 9], gamma=0.1),
        "linear": lambda: S.LinearLR(opt, start_factor=1.0, end_factor=0.01, total_iters=EPOCHS),
        "cosine": lambda: S.CosineAnnealingLR(opt, T_max=EPOCHS),
        "constant": lambda: S.LambdaLR(opt, lambda e: 1.0),
    }[kind]()


@pytest.mark.parametrize("kind", ["exp", "multistep", "linear", "cosine", "constant"])
def test_epoch_boundaries_match_torch_stepped_per_epoch(kind):
    g = torch.Generator().manual_seed(0)
    ours_opt, ref_opt = _optimizer(), _optimizer()
    ours = EpochSchedule(ours_opt, kind, EPOCHS, gamma=0.9, milestones=(0.5, 0.75))
    ref = _torch_scheduler(kind, ref_opt)
    for epoch in range(EPOCHS):
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        steps = int(torch.randint(1, 40, (1,), generator=g))  # the kept set shrinks and grows
        for i in range(steps):
            ours.set_progress(epoch + (i + 1) / steps)
        ref_opt.step()
        ref.step()
    assert ours_opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)


def test_cosine_is_smooth_within_an_epoch():
    opt = _optimizer(1.0)
    s = EpochSchedule(opt, "cosine", 4)
    s.set_progress(1.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 1.5 / 4)))


def test_state_dict_round_trip_and_mismatch():
    opt = _optimizer()
    s = EpochSchedule(opt, "exp", 10, gamma=0.5)
    s.set_progress(3.25)
    opt2 = _optimizer()
    s2 = EpochSchedule(opt2, "exp", 10, gamma=0.5)
    s2.load_state_dict(s.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    with pytest.raises(ValueError, match="kind"):
        EpochSchedule(_optimizer(), "cosine", 10).load_state_dict(s.state_dict())


@pytest.mark.parametrize("kind,epochs", [("warmup", 3), ("exp", 0), ("exp", 2.5)])
def test_bad_arguments(kind, epochs):
    with pytest.raises(TypeError if isinstance(epochs, float) else ValueError):
        EpochSchedule(_optimizer(), kind, epochs)
