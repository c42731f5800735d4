"""load_state_dict validates a whole state before applying any of it: for every
stateful class (IES, per-exit IES, InfoBatch, RandomRemoval, PatienceStopper,
KeptSampler) a missing key or a bad value raises ValueError naming the key and
leaves the object exactly as it was; good states (with the ring's ±inf sentinels)
still load."""
from __future__ import annotations

import math
import re

import pytest
import torch

from ies_fast import IES, InfoBatch, PerExitIES, RandomRemoval
from ies_fast.data import KeptSampler
from ies_fast.stopping import PatienceStopper

DELETE = object()


def run_selector(sel, seed: int, epochs: int = 5, exits: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = sel.num_samples
    for _ in range(epochs):
        shape = (n, exits) if exits else (n,)
        sel.observe(torch.rand(shape, generator=g) * 0.1 + 1.0, torch.randperm(n, generator=g))
        sel.step()
    return sel


def make_ies(seed):
    return run_selector(IES(40, delta=0.2, order=1, window=2, device="cpu", backend="torch"), seed)


def make_per_exit(seed):
    sel = PerExitIES(20, delta=0.2, order=1, window=2, device="cpu", backend="torch", num_exits=3, exit_reduction="per_exit")
    return run_selector(sel, seed, exits=3)


def make_infobatch(seed):
    return run_selector(InfoBatch(40, 10, prune_ratio=0.5, device="cpu", seed=seed, backend="torch"), seed)


def make_random(seed):
    return run_selector(RandomRemoval(40, 0.3, device="cpu", seed=seed, backend="torch"), seed)


def make_stopper(seed):
    s = PatienceStopper(["acc", "loss"], mode="max", patience=3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(4):
        s.step({"acc": float(torch.rand((), generator=g)), "loss": float(torch.rand((), generator=g))},
               model=torch.nn.Linear(2, 2))
    return s


def make_sampler(seed):
    sampler = KeptSampler(make_ies(seed), seed=seed)
    sampler.set_epoch(seed)
    return sampler


def snapshot(obj):
    state = obj.state_dict()
    return state | {"__attrs__": {k: v for k, v in vars(obj).items() if isinstance(v, (int, float, bool, str))}}


def assert_same(a, b, at="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), at
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), at
        for k in a:
            assert_same(a[k], b[k], f"{at}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), at
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{at}[{i}]")
    else:
        assert a == b or (a != a and b != b), at


def with_nan(t, at=3):
    t = t.clone()
    t.view(-1)[at] = math.nan
    return t


def with_value(t, value, at=0):
    t = t.clone()
    t.view(-1)[at] = value
    return t


L_IES = 3  # order 1 + window 2
IES_BAD = [
    ("delta", math.nan), ("delta", -1e-3), ("delta", math.inf), ("delta", "0.1"), ("delta", 1e-46),
    ("score_every", 0), ("score_every", -2), ("score_every", 1.5), ("score_every", True),
    ("epoch", -1), ("epoch", 2.0), ("removal_enabled", 1), ("removal_enabled", "yes"),
    ("hist", lambda t: with_nan(t)), ("hist", lambda t: t[:, :2]), ("hist", lambda t: t.double()),
    ("count", lambda t: with_value(t, 2 * L_IES)), ("count", lambda t: t.long()),
    ("mastered", lambda t: t.float()), ("totals", lambda t: with_value(t, -1)), ("last", lambda t: with_value(t, -5)),
    ("order", 2), ("window", 3), ("num_samples", 41), ("k", 2), ("eligibility", "official"), ("threshold", "relative"),
    ("kind", "InfoBatch"), ("version", 99), ("replay", torch.zeros(7, dtype=torch.bool)),
]
CASES = {
    "IES": (make_ies, IES_BAD, {"k", "eligibility", "replay", "scoring_schedule", "threshold"}),
    "per-exit": (make_per_exit, [
        ("num_exits", 2), ("exit_weights", [1.0, 2.0, 3.0]), ("mastered", lambda t: t[1:]),
        ("totals", lambda t: with_value(t, -1)), ("epoch", -3), ("removal_enabled", None),
        ("exits", {}), ("exits", lambda s: s | {"delta": math.nan}), ("exits", lambda s: s | {"epoch": -1}),
        ("exits", lambda s: {k: v for k, v in s.items() if k != "score_every"}),
        ("exits", lambda s: s | {"hist": with_nan(s["hist"])}),
    ], {"exit_weights"}),
    "InfoBatch": (make_infobatch, [
        ("scores", lambda t: with_nan(t)), ("scores", lambda t: with_value(t, math.inf)), ("fresh", lambda t: with_nan(t)),
        ("fresh", lambda t: with_value(t, math.inf)), ("weights", lambda t: with_value(t, -1.0)),
        ("weights", lambda t: with_nan(t)), ("pruned", lambda t: t[:-1]), ("totals", lambda t: with_value(t, -1)),
        ("rng", torch.zeros(3, dtype=torch.uint8)), ("rng", "seed"), ("seed", -1), ("epoch", -1),
        ("prune_ratio", 0.3), ("delta", 0.5), ("num_epochs", 11), ("removal_enabled", 0),
    ], set()),
    "RandomRemoval": (make_random, [
        ("removed", lambda t: ~t), ("removed", lambda t: t.int()), ("totals", lambda t: with_value(t, -2)),
        ("rng", torch.zeros(7, dtype=torch.uint8)), ("seed", 1.5), ("epoch", None), ("ratio", 0.5),
        ("removal_enabled", "no"),
    ], set()),
    "PatienceStopper": (make_stopper, [
        ("checks", -1), ("best_check", 99), ("best_check", 0), ("stopped", 1), ("best", {"acc": 0.5}),
        ("best", {"acc": math.nan, "loss": 0.1}), ("wait", {"acc": -1, "loss": 0}), ("wait", {"acc": 1.5, "loss": 0}),
        ("best_state", {"w": 3}), ("monitor", ["acc"]), ("mode", "min"),
    ], {"best_state"}),
    "KeptSampler": (make_sampler, [("seed", "3"), ("seed", 2.0), ("epoch", -1), ("epoch", 1.5), ("shuffle", 1)],
                    {"shuffle"}),
}


def mutate(state: dict, key: str, bad) -> dict:
    state = dict(state)
    if bad is DELETE:
        del state[key]
    elif callable(bad):
        state[key] = bad(state[key])
    else:
        state[key] = bad
    return state


def expect_rejected(obj, state, key):
    before = snapshot(obj)
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        obj.load_state_dict(state)
    assert_same(before, snapshot(obj))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_values_are_rejected_naming_the_key_and_change_nothing(name):
    make, bad_values, _ = CASES[name]
    good = make(1).state_dict()
    for key, bad in bad_values:
        expect_rejected(make(2), mutate(good, key, bad), key)


@pytest.mark.parametrize("name", list(CASES))
def test_every_required_key_is_required(name):
    make, _, optional = CASES[name]
    good = make(1).state_dict()
    for key in good:
        if key not in optional:
            expect_rejected(make(2), mutate(good, key, DELETE), key)


@pytest.mark.parametrize("name", list(CASES))
def test_good_states_load_and_round_trip(name):
    make, _, optional = CASES[name]
    good = make(1).state_dict()
    obj = make(2)
    obj.load_state_dict(good)
    assert_same(good, obj.state_dict())
    # keys added after a state version may be absent (older states still load)
    older = {k: v for k, v in good.items() if k not in optional}
    make(3).load_state_dict(older)


def test_the_ring_sentinels_are_legitimate():
    state = make_ies(1).state_dict()
    hist = state["hist"].clone()
    hist[0, 0], hist[1, 1] = math.inf, -math.inf
    sel = make_ies(2)
    sel.load_state_dict(state | {"hist": hist})
    assert torch.equal(sel.hist, hist)


def test_a_loaded_state_overrides_delta_and_score_every_and_decides_alike():
    src = run_selector(IES(40, delta=0.2, order=1, window=2, device="cpu", backend="torch", score_every=2), 5)
    dst = IES(40, delta=0.05, order=1, window=2, device="cpu", backend="torch", score_every=1)
    dst.load_state_dict(src.state_dict())
    assert (dst.delta, dst.score_every, dst.epoch) == (0.2, 2, 5)
    run_selector(src, 9, epochs=3)
    run_selector(dst, 9, epochs=3)
    assert torch.equal(src.mastered_mask(), dst.mastered_mask()) and bool(src.mastered_mask().any())


def test_a_bad_inner_state_of_a_per_exit_selector_names_its_path():
    good = make_per_exit(1).state_dict()
    sel = make_per_exit(2)
    with pytest.raises(ValueError, match=re.escape("state_dict['exits']['delta']")):
        sel.load_state_dict(good | {"exits": good["exits"] | {"delta": -1.0}})
