"""A per-step LR schedule in the plain IESDataset loop, sized from the full data set
and stepped through ``ds.schedule(...)``: with IES removing >= 20% of the samples it
ends where it would without IES and follows the same curve over epoch progress (one
end-to-end run; the arithmetic is tests/test_progress.py's). A schedule built before
the dataset was restored refuses to step (a restored epoch of 2**30 would step it
2**30 times)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import ies_fast

EPOCHS, DELTA, BATCH, LR = 9, 2e-2, 64, 0.01


def digits():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    d = load_digits()
    return TensorDataset(torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target))


def run(delta):
    data = digits()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    steps_per_epoch = len(DataLoader(data, batch_size=BATCH))  # as sized without IES
    total = EPOCHS * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total)
    ds = ies_fast.IESDataset(data, model, delta=delta)
    loader = DataLoader(ds, batch_size=BATCH, sampler=ds.sampler)
    sched = ds.schedule(sched, loader)
    assert sched.steps_per_epoch == steps_per_epoch
    lrs, progress = [], []
    for epoch in range(EPOCHS):
        for i, (x, y, index) in enumerate(loader):
            progress.append(epoch + i / len(loader))  # epoch + kept batches done / kept batches
            assert abs(ds.progress - progress[-1]) < 1 / len(loader)  # the samples' fraction: near it
            lrs.append(opt.param_groups[0]["lr"])
            loss = ds.update(F.cross_entropy(model(x), y, reduction="none"), index)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    ds.end_epoch()
    return ds, lrs, progress, opt.param_groups[0]["lr"], steps_per_epoch


def test_a_per_step_schedule_ends_and_runs_as_without_ies():
    _, base_lrs, base_progress, base_final, per_epoch = run(0.0)
    ds, lrs, progress, final, _ = run(DELTA)
    assert ds.selector.stats()["removed"] >= 0.2 * len(ds), "IES must remove >= 20% of the samples here"
    assert len(lrs) < len(base_lrs) == EPOCHS * per_epoch
    assert lrs[-1] <= 0.01 * max(base_lrs) and final == pytest.approx(base_final, abs=1e-12)
    # without IES the wrapped scheduler steps once per optimizer step, as it would unwrapped
    assert base_lrs == pytest.approx([LR * (1 - i / len(base_lrs)) for i in range(len(base_lrs))], abs=1e-12)
    for p, lr in zip(progress, lrs):
        s = p * per_epoch
        near = base_lrs[max(0, math.floor(s) - 1):math.ceil(s) + 2]
        assert min(near) - 1e-12 <= lr <= max(near) + 1e-12, (p, lr, near)


def test_progress_and_bad_input():
    data = digits()
    model = torch.nn.Linear(64, 10)
    ds = ies_fast.IESDataset(data, model)
    assert ds.progress == 0.0
    loader = DataLoader(ds, batch_size=600, sampler=ds.sampler)
    it = iter(loader)
    x, y, index = next(it)
    ds.update(F.cross_entropy(model(x), y, reduction="none"), index)
    assert ds.progress == pytest.approx(600 / len(data))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = ds.schedule(torch.optim.lr_scheduler.StepLR(opt, 1), loader)
    assert sched.steps_per_epoch == 3 and sched.target() == 1
    with pytest.raises(ValueError, match="loader"):
        ds.schedule(torch.optim.lr_scheduler.StepLR(opt, 1), DataLoader(ds, batch_size=600))
    with pytest.raises(TypeError, match="scheduler"):
        ds.schedule(object(), loader)


def test_a_schedule_built_before_a_restore_refuses_to_step():
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
    model = torch.nn.Linear(4, 3)
    ds = ies_fast.IESDataset(data, model)
    loader = DataLoader(ds, batch_size=8, sampler=ds.sampler)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = ds.schedule(torch.optim.lr_scheduler.StepLR(opt, 1), loader)
    state = ds.state_dict()
    state["selector"]["epoch"] = 2**30  # a legal selector state, far ahead of the schedule
    ds.load_state_dict(state)
    with pytest.raises(RuntimeError, match="after restoring"):
        sched.step()  # before: 2**30 * 5 scheduler steps
    rebuilt = ds.schedule(torch.optim.lr_scheduler.StepLR(opt, 1), loader)
    assert rebuilt.steps == 2**30 * 5  # built after the restore: starts there, in closed form
    rebuilt.step()
