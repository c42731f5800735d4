"""A state that loads is a state (issue 23): every ``load_state_dict`` checks each
integer's range and the relations between fields before applying anything, so a
corrupted state is refused whole and leaves the object as it was.

The property test takes a state reached by a few real epochs, corrupts one field
chosen at random (a value of the wrong type, an out-of-range integer, a non-finite
float, a tensor of the wrong dtype or shape) and checks the refusal and that
nothing changed; the named tests cover the relations the issue found accepted."""
import copy
import math
import random

import pytest
import torch

import ies_fast
from ies_fast.stopping import PatienceStopper
from ies_fast.app.train.schedule import EpochSchedule

S = 48


def _losses(epoch: int, n: int = S) -> torch.Tensor:
    """Per-sample losses that settle for half the samples (they become mastered)."""
    g = torch.Generator().manual_seed(epoch)
    noise = torch.rand(n, generator=g)
    return torch.where(torch.arange(n) < n // 2, torch.full((n,), 0.5), 2.0 + noise)


def _run_selector(sel, epochs: int = 8):
    for e in range(epochs):
        index = sel.kept_indices() if hasattr(sel, "kept_indices") else torch.arange(S)
        sel.observe(_losses(e)[index], index)
        removed = sel.removed_mask().nonzero().flatten()
        if removed.numel():
            sel.observe(_losses(e)[removed], removed, scoring=True)
        sel.step()
    return sel


def make_ies():
    return _run_selector(ies_fast.IES(S, delta=1e-2, order=1, window=2, min_kept=4, score_policy="backoff"))


def make_ies_official():
    return _run_selector(ies_fast.IES(S, delta=1e-2, order=2, window=2, k=2, eligibility="official"))


def make_per_exit():
    sel = ies_fast.PerExitIES(S, delta=1e-2, order=1, window=2, num_exits=2, exit_reduction="per_exit")
    for e in range(6):
        index = torch.arange(S)
        sel.observe(torch.stack([_losses(e), _losses(e + 100)], 1), index)
        sel.step()
    return sel


def make_infobatch():
    return _run_selector(ies_fast.InfoBatch(S, num_epochs=10, prune_ratio=0.5), epochs=4)


def make_random():
    return _run_selector(ies_fast.RandomRemoval(S, 0.25), epochs=4)


def make_stopper():
    stopper = PatienceStopper("test_acc", mode="max", patience=3)
    for acc in (0.1, 0.5, 0.4, 0.45):
        stopper.step({"test_acc": acc})
    return stopper


def make_schedule():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.05}], lr=0.1)
    schedule = EpochSchedule(opt, "cosine", 10)
    schedule.set_progress(3.5)
    return schedule


MAKERS = {"IES": make_ies, "IES-official": make_ies_official, "IES-per-exit": make_per_exit,
          "InfoBatch": make_infobatch, "RandomRemoval": make_random, "PatienceStopper": make_stopper,
          "EpochSchedule": make_schedule}


def _leaves(obj, path=()):
    """``(path, value)`` of every leaf in a nested state (tensors are leaves)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    else:
        yield path, obj


def _corrupt(value, rnd: random.Random):
    """A value of the same role that no valid state holds."""
    if isinstance(value, torch.Tensor):
        choices = ["shape", "dtype"]
        if value.is_floating_point() and value.numel():
            choices.append("nan")
        how = rnd.choice(choices)
        if how == "shape":
            return torch.cat([value.flatten(), value.flatten()[:1]]) if value.numel() else torch.zeros(1)
        if how == "dtype":
            return value.to(torch.float64 if value.dtype != torch.float64 else torch.float32)
        bad = value.clone()
        bad.view(-1)[rnd.randrange(value.numel())] = math.nan
        return bad
    if isinstance(value, bool):
        return rnd.choice([1, "true", None])
    if isinstance(value, int):
        return rnd.choice([2**70, -(2**70), "7", 1.5, True])
    if isinstance(value, float):
        return rnd.choice([math.nan, math.inf, "0.5"])
    return rnd.choice(["corrupt", 3.25, [1]])  # str, None, ...


def _set(state, path, value):
    for key in path[:-1]:
        state = state[key]
    state[path[-1]] = value


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def _snapshot(obj):
    state = copy.deepcopy(obj.state_dict())
    if isinstance(obj, EpochSchedule):
        state["lrs"] = obj.get_last_lr()
    return state


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_one_corrupted_field_is_refused_whole(kind):
    obj = MAKERS[kind]()
    good = obj.state_dict()
    leaves = [(p, v) for p, v in _leaves(good) if p[-1] not in ("best_state",)]
    rnd = random.Random(f"issue-23-{kind}")
    before = _snapshot(obj)
    for trial in range(60):
        path, value = rnd.choice(leaves)
        bad_value = _corrupt(value, rnd)
        state = copy.deepcopy(good)
        _set(state, path, bad_value)
        with pytest.raises((ValueError, TypeError)):
            obj.load_state_dict(state)
            pytest.fail(f"{kind}: {path} = {bad_value!r} (was {value!r}) was accepted")
        assert _same(_snapshot(obj), before), f"{kind}: refusing {path} = {bad_value!r} changed the object"
    obj.load_state_dict(copy.deepcopy(good))  # the good state still loads
    assert _same(_snapshot(obj), before)


# ---- the relations the issue found accepted ------------------------------------------------
def _refused(obj, state, match):
    before = _snapshot(obj)
    with pytest.raises(ValueError, match=match):
        obj.load_state_dict(state)
    assert _same(_snapshot(obj), before)


@pytest.mark.parametrize("kind", ["IES", "IES-per-exit", "InfoBatch", "RandomRemoval"])
def test_epoch_beyond_any_run_is_refused(kind):
    obj = MAKERS[kind]()
    state = obj.state_dict()
    state["epoch"] = 2**70
    _refused(obj, state, "epoch")
    obj.step()  # still works where the overflow used to be


def test_ies_mastered_without_a_full_history_is_refused():
    fresh = ies_fast.IES(S, delta=1e-2, order=1, window=2)
    state = fresh.state_dict()
    state["mastered"] = torch.ones(S, dtype=torch.bool)  # count is 0 everywhere
    _refused(fresh, state, "mastered")
    assert not fresh.removed_mask().any()


def test_ies_replay_of_a_sample_that_is_not_mastered_is_refused():
    sel = make_ies()
    state = sel.state_dict()
    state["replay"] = ~state["mastered"]
    _refused(sel, state, "replay")


@pytest.mark.parametrize("kind", ["IES", "IES-per-exit", "InfoBatch", "RandomRemoval"])
def test_totals_that_contradict_each_other_are_refused(kind):
    obj = MAKERS[kind]()
    state = obj.state_dict()
    totals = state["totals"].clone()
    totals[0] = totals[1] * 10**6 + 1  # backward_saved (first) > sample_epochs (second)
    state["totals"] = totals
    _refused(obj, state, "backward_saved")
    state = obj.state_dict()
    totals = state["totals"].clone()
    totals[1] = (obj.epoch + 1) * S  # more sample-epochs than epochs closed
    state["totals"] = totals
    _refused(obj, state, "sample_epochs")
    assert obj.stats()["backward_saved_fraction"] <= 1.0


def test_ies_last_epoch_counts_beyond_num_samples_are_refused():
    sel = make_ies()
    state = sel.state_dict()
    state["last"] = state["last"] + S + 1
    _refused(sel, state, "last")


def test_backoff_due_epochs_out_of_range_are_refused():
    sel = make_ies()
    state = sel.state_dict()
    state["scoring_schedule"] = dict(state["scoring_schedule"], next_due=torch.full((S,), -5, dtype=torch.int32))
    _refused(sel, state, "next_due")


def test_stopper_wait_beyond_checks_is_refused():
    stopper = make_stopper()
    state = stopper.state_dict()
    state["wait"] = {"test_acc": 99}
    _refused(stopper, state, "wait")


@pytest.mark.parametrize("field,value", [("progress", math.nan), ("progress", 11.0), ("progress", -1.0),
                                         ("base_lrs", [0.1]), ("base_lrs", [0.1, math.inf]), ("base_lrs", "0.1")])
def test_epoch_schedule_refuses_a_bad_state_whole(field, value):
    schedule = make_schedule()
    state = dict(schedule.state_dict(), **{field: value})
    _refused(schedule, state, field)
