"""IESTrainer's LR schedule, max_steps, state.epoch and sampling options hold when
IES shrinks epochs: the Trainer's linear schedule with warm-up ends where it would
without IES and follows the same curve over training progress (one end-to-end run;
the arithmetic is tests/test_progress.py's); ``max_steps=N`` runs exactly N
optimizer steps; options the kept sampler would override are honoured or refused."""
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from transformers import TrainerCallback, get_scheduler  # noqa: E402

from hf_tiny import make_trainer  # noqa: E402

N, BATCH, EPOCHS, WARMUP, PEAK = 126, 4, 8, 8, 1e-2
FULL = -(-N // BATCH)  # optimizer steps of a full epoch: 32


class Trace(TrainerCallback):
    """(state.epoch, LR) before every optimizer step."""

    def __init__(self):
        self.steps = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.steps.append((float(state.epoch or 0.0), optimizer.param_groups[0]["lr"]))


def planned_curve(kind: str, total: int) -> list:
    """The LR of each optimizer step of the same run without IES: the Trainer's
    ``get_scheduler`` schedule, stepped once per optimizer step (``total + 1``
    values: the last is where the schedule ends)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    sched = get_scheduler(kind, optimizer=opt, num_warmup_steps=WARMUP, num_training_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs + [opt.param_groups[0]["lr"]]


def kept_counter(trainer, counts: list):
    """A callback appending each epoch's kept count to ``counts``."""
    class Kept(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            counts.append(int(trainer.selector.kept_indices().numel()))
    return Kept()


def test_schedule_ends_where_it_would_without_ies(tmp_path, kind="linear"):
    trace = Trace()
    trainer = make_trainer(tmp_path, n=N, callbacks=[trace], lr_scheduler_type=kind, num_train_epochs=EPOCHS,
                           per_device_train_batch_size=BATCH, warmup_steps=WARMUP, learning_rate=PEAK)
    kept = []
    trainer.add_callback(kept_counter(trainer, kept))
    metrics = trainer.train().metrics
    stats = trainer.selector.stats()
    assert stats["removed"] >= 0.2 * N  # IES removes >= 20% of the examples
    steps = trainer.state.global_step
    assert steps == len(trace.steps) <= FULL * EPOCHS - 0.1 * FULL  # epochs really shrank
    plan = planned_curve(kind, FULL * EPOCHS)
    # the last step runs at <= 1% of the peak (linear, cosine) and the schedule ends where the plan ends
    end = trainer.lr_scheduler.get_last_lr()[0]
    assert end == pytest.approx(plan[-1], abs=1e-12)
    if kind != "constant_with_warmup":
        assert end == 0.0 and trace.steps[-1][1] <= 0.01 * PEAK
    # over progress (epochs done), the LR matches the plan's within one step's change
    one_step = max(abs(a - b) for a, b in zip(plan, plan[1:]))
    for epoch, lr in trace.steps:
        assert abs(lr - plan[round(epoch * FULL)]) <= one_step + 1e-12, (epoch, lr)
    # state.epoch: epochs done; train_samples_per_second: the examples really trained
    assert trainer.state.epoch == EPOCHS
    assert len(kept) == EPOCHS and sum(kept) < N * EPOCHS
    trained = metrics["train_samples_per_second"] * metrics["train_runtime"]
    assert trained == pytest.approx(sum(kept), rel=2e-3)


def test_max_steps_runs_exactly_n_steps(tmp_path):
    """max_steps=200 plans 7 full epochs; shrunken epochs need more: exactly 200
    optimizer steps run, and the (step-count) schedule ends at step 200."""
    trace = Trace()
    trainer = make_trainer(tmp_path, n=N, callbacks=[trace], max_steps=200, per_device_train_batch_size=BATCH,
                           warmup_steps=WARMUP, learning_rate=PEAK)
    trainer.train()
    assert trainer.selector.stats()["removed"] >= 0.2 * N
    assert trainer.state.global_step == len(trace.steps) == 200
    assert trainer.state.epoch > 200 / FULL  # more epochs than planned
    plan = planned_curve("linear", 200)
    assert [lr for _, lr in trace.steps] == pytest.approx(plan[:-1], abs=1e-12)
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0


def test_sequential_sampling_is_honoured(tmp_path):
    trainer = make_trainer(tmp_path, n=N, train_sampling_strategy="sequential")
    order = torch.cat([batch["index"] for batch in trainer.get_train_dataloader()])
    assert torch.equal(order, torch.arange(N))  # dataset order, as the plain Trainer's SequentialSampler
    state = trainer.selector.state_dict()
    state["mastered"][::3], state["removal_enabled"] = True, True
    state["count"][::3] = trainer.selector.history_length  # mastered needs a full history of losses
    state["hist"][::3] = 0.5
    trainer.selector.load_state_dict(state)  # the kept examples only, still in order
    kept = torch.cat([batch["index"] for batch in trainer.get_train_dataloader()])
    assert torch.equal(kept, torch.arange(N)[torch.arange(N) % 3 != 0])


@pytest.mark.parametrize("strategy", ["group_by_length", "batch_rebalance"])
def test_sampling_the_kept_sampler_cannot_honour_is_refused(tmp_path, strategy):
    with pytest.raises(ValueError, match=f"train_sampling_strategy='{strategy}'"):
        make_trainer(tmp_path, n=8, train_sampling_strategy=strategy)
