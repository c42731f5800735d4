"""Property-based test: random batch sizes (0 included), index orders, duplicates,
NaN/Inf, empty epochs and random (order, window, delta) drive IES and the reference
criterion side by side; invariants are checked after every step."""
from __future__ import annotations

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ies_fast import IES, ReferenceCriterion  # noqa: E402
from ies_fast.backend import native_usable  # noqa: E402

BACKENDS = ["torch"] + (["native"] if native_usable(torch.device("cpu")) else [])

# losses: mostly a few nearly-equal values (so samples do get mastered), some
# arbitrary floats, and the non-finite ones
LOSS = st.one_of(
    st.sampled_from([0.5, 0.5001, 0.5002, 1.0, 2.0]),
    st.floats(min_value=-10, max_value=10, allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 12))
    order = draw(st.integers(0, 3))
    window = draw(st.integers(1, 4))
    rule = {"k": draw(st.integers(1, 3)), "eligibility": draw(st.sampled_from(["paper", "official"]))}
    delta = draw(st.sampled_from([0.0, 1e-3, 0.01, 0.5, 3.0]))
    batch = st.lists(st.tuples(st.integers(0, n - 1), LOSS), min_size=0, max_size=2 * n)
    epoch = st.lists(batch, min_size=0, max_size=3)  # an epoch may have no batch at all
    epochs = draw(st.lists(epoch, min_size=1, max_size=order + window + rule["k"] + 4))
    return n, order, window, rule, delta, epochs


def check_invariants(sel: IES, ref: ReferenceCriterion, ref_mask: list, prev: dict) -> dict:
    n, L = sel.num_samples, sel.history_length
    assert sel.mastered_mask().tolist() == ref_mask
    kept = sel.kept_indices().tolist()
    removed = torch.nonzero(sel.removed_mask()).flatten().tolist()
    assert sorted(kept + removed) == list(range(n)), "kept ∪ removed must be every sample, once"
    assert kept == sorted(kept)
    count = sel.count.long()
    assert bool(((count >= 0) & (count < 2 * L)).all())
    for i, h in enumerate(ref.history):  # the ring remembers exactly as much as the reference
        c = int(count[i])
        assert (c == len(h)) if len(h) < L else (c >= L and c % L == len(h) % L), (i, c, len(h))
    s = sel.stats()
    assert s["kept"] + s["removed"] == n
    assert s["kept"] == len(kept) and s["removed"] == len(removed)
    assert s["mastered"] == int(sel.mastered_mask().sum())
    assert s["backward_saved"] >= prev.get("backward_saved", 0)
    assert s["nonfinite_total"] >= prev.get("nonfinite_total", 0)
    assert 0.0 <= s["backward_saved_fraction"] <= 1.0
    return s


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_ies_matches_reference_on_arbitrary_input(backend, scenario):
    n, order, window, rule, delta, epochs = scenario
    sel = IES(n, delta=delta, order=order, window=window, device="cpu", backend=backend, **rule)
    ref = ReferenceCriterion(n, delta, order, window, **rule)
    prev: dict = {}
    nonfinite_seen = 0
    for epoch in epochs:
        for batch in epoch:
            index = torch.tensor([i for i, _ in batch], dtype=torch.long)
            loss = torch.tensor([l for _, l in batch], dtype=torch.float32)
            sel.observe(loss, index)
            ref.observe(loss.tolist(), index.tolist())
        seen = {}
        for batch in epoch:
            for i, l in batch:
                seen[i] = seen.get(i, False) or not math.isfinite(l)
        nonfinite_seen += sum(seen.values())
        sel.step()
        prev = check_invariants(sel, ref, ref.step(), prev)
        assert prev["nonfinite_total"] == nonfinite_seen
        assert prev["epoch"] == ref.epoch


@settings(max_examples=100, deadline=None)
@given(scenario=scenarios(), data=st.data())
def test_state_dict_round_trip_mid_run(scenario, data):
    """Saving and loading at any epoch boundary changes nothing."""
    n, order, window, rule, delta, epochs = scenario
    cut = data.draw(st.integers(0, len(epochs)))
    a = IES(n, delta=delta, order=order, window=window, device="cpu", backend="torch", **rule)
    b = IES(n, delta=delta, order=order, window=window, device="cpu", backend="torch", **rule)
    for e, epoch in enumerate(epochs):
        if e == cut:
            b.load_state_dict(a.state_dict())
        for sel in (a, b) if e >= cut else (a,):
            for batch in epoch:
                sel.observe(torch.tensor([l for _, l in batch], dtype=torch.float32),
                            torch.tensor([i for i, _ in batch], dtype=torch.long))
            sel.step()
    if cut < len(epochs):
        for name in ("hist", "count", "mastered", "totals", "last"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert a.epoch == b.epoch
