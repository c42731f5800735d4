"""ies_fast.progress: the arithmetic every wrapper's per-step LR schedule follows
(IESDataset.schedule, IESCallback, IESTrainer, the app's EpochSchedule), checked
on its own against the plain step count of a run without IES."""
import math
import random
from fractions import Fraction

import pytest

from ies_fast.progress import batch_count, planned_steps, position, progress


def test_batch_count_is_ceil_or_floor():
    for samples in range(0, 70):
        for size in (1, 3, 8, 64):
            assert batch_count(samples, size) == math.ceil(samples / size)
            assert batch_count(samples, size, drop_last=True) == samples // size


def test_progress_is_exact_and_capped():
    assert progress(3, 1, 4) == Fraction(13, 4)
    assert progress(2, 9, 4) == 3  # done capped at the epoch's total
    assert progress(2, -1, 4) == 2
    assert progress(5, 0, 0) == 5  # an empty epoch adds nothing
    assert progress(0, 1, 3) == Fraction(1, 3)  # exact, not 0.333...


def test_planned_steps_takes_the_limit_that_ends_the_run_first():
    assert planned_steps(24, 9) == 216
    assert planned_steps(24, 9, 200) == 200
    assert planned_steps(24, -1, 200) == 200
    assert planned_steps(24, 9, 500) == 216
    assert planned_steps(24) is None


@pytest.mark.parametrize("limits", [{}, {"max_epochs": 9}])
def test_without_ies_the_position_is_the_step_count(limits):
    per_epoch = 24
    step = 0
    for epoch in range(9):
        for done in range(1, per_epoch + 1):
            step += 1
            assert position(progress(epoch, done, per_epoch), per_epoch, global_step=step, **limits) == step


def test_shrunken_epochs_move_the_schedule_one_epoch_each():
    """Random kept batch counts: the position never goes back, moves at most
    ceil(P / K) per step, sits at e * P at each epoch's start and ends at the plan's end."""
    rng = random.Random(0)
    per_epoch, epochs = 24, 9
    last = 0
    for epoch in range(epochs):
        kept = rng.randint(1, per_epoch)
        assert position(progress(epoch, 0, kept), per_epoch, max_epochs=epochs) == epoch * per_epoch
        for done in range(1, kept + 1):
            now = position(progress(epoch, done, kept), per_epoch, max_epochs=epochs)
            assert last <= now <= last + math.ceil(per_epoch / kept)
            assert now == epoch * per_epoch + math.floor(Fraction(done * per_epoch, kept) + Fraction(1, 2))
            last = now
    assert last == planned_steps(per_epoch, epochs) == epochs * per_epoch


def test_max_steps_that_binds_only_without_ies_still_ends_the_schedule():
    """max_steps=200 of 9 x 24 planned: with IES, max_epochs ends the run first (before
    step 200), and the schedule is at its end (200) when it does."""
    assert position(progress(9, 0, 11), 24, max_epochs=9, max_steps=200, global_step=150) == 200
    # halfway through the epochs, far fewer optimizer steps: the schedule is halfway
    assert position(progress(4, 6, 12), 24, max_epochs=9, max_steps=200, global_step=60) == 100
    # the optimizer-step limit is ahead of epoch progress: it leads
    assert position(progress(1, 0, 24), 24, max_epochs=9, max_steps=200, global_step=180) == 180
    # never past the plan's end
    assert position(progress(20, 0, 1), 24, max_epochs=9) == 216
