
import pytest
import torch


from ies_fast import IES, instability_score
from ies_fast.selectors.rule import difference_coefficients

from _support.selector_driver import perturb_duplicates_nonfinite, run_both


def test_difference_coefficients():
    assert difference_coefficients(0) == [1]
    assert difference_coefficients(1) == [-1, 1]
    assert difference_coefficients(2) == [1, -2, 1]
    assert difference_coefficients(3) == [-1, 3, -3, 1]


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_instability_score_matches_definition(order, rng):
    h = torch.rand(5, order + 4, generator=rng, dtype=torch.float64)
    coeff = torch.tensor(difference_coefficients(order), dtype=torch.float64)
    T = h.shape[1]
    diffs = torch.stack([h[:, t - order : t + 1] @ coeff for t in range(T - 3, T)], dim=1)
    torch.testing.assert_close(instability_score(h, order, 3), diffs.abs().mean(1))


@pytest.mark.parametrize("order,window", [(0, 1), (1, 2), (2, 3), (3, 2), (2, 5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_selector_matches_reference(order, window, seed):
    sel = IES(97, delta=0.05, order=order, window=window, backend="torch")
    masks = run_both(sel, 14, seed)
    assert any(m.any() for m, _ in masks), "the test should master some samples"
    for epoch, (got, want) in enumerate(masks):
        assert torch.equal(got, want), f"epoch {epoch}"


def test_partial_observation_keeps_decisions():
    """Samples not observed in an epoch (score_every) keep their decision."""
    sel = IES(61, delta=0.05, backend="torch")
    masks = run_both(sel, 16, 3, observe_fraction=0.6)
    for got, want in masks:
        assert torch.equal(got, want)


def test_duplicates_and_nonfinite_follow_reference():
    sel = IES(53, delta=0.05, backend="torch")
    masks = run_both(sel, 15, 5, extra=perturb_duplicates_nonfinite)
    for got, want in masks:
        assert torch.equal(got, want)
    assert sel.stats()["nonfinite_total"] > 0


def test_delta_zero_never_masters():
    sel = IES(40, delta=0.0, backend="torch")
    masks = run_both(sel, 10, 0)
    assert not any(m.any() for m, _ in masks)


def test_kept_indices_and_stats_are_consistent():
    sel = IES(80, delta=0.05, backend="torch")
    run_both(sel, 10, 2)
    kept = sel.kept_indices()
    mastered = sel.mastered_mask()
    assert kept.dtype == torch.int64
    assert torch.equal(kept, torch.nonzero(~mastered).squeeze(1))
    st = sel.stats()
    assert st["kept"] + st["removed"] == 80
    assert st["mastered"] == int(mastered.sum())
    assert 0 < st["backward_saved_fraction"] < 1
    sel.set_removal(False)
    assert sel.kept_indices().numel() == 80


def test_state_dict_round_trip_gives_identical_masks():
    a = IES(70, delta=0.05, backend="torch")
    run_both(a, 6, 9)
    b = IES(70, delta=0.05, backend="torch")
    b.load_state_dict(a.state_dict())
    ma = run_both(a, 6, 10)
    mb = run_both(b, 6, 10)
    for (x, _), (y, _) in zip(ma, mb):
        assert torch.equal(x, y)
    assert a.stats() == b.stats()


def test_memory_per_sample():
    sel = IES(1000)
    per_sample = sum(t.element_size() * t.numel() for t in (sel.hist, sel.count, sel.mastered)) / 1000
    assert per_sample == 4 * 5 + 2 <= 24


def test_the_backend_is_resolved_once_per_selector(monkeypatch):
    """At construction and at to(); recording, closing an epoch and compacting read it."""
    from ies_fast import backend

    sel = IES(16, delta=0.1, order=0, window=1)
    assert sel.kernel_backend == backend.resolve_backend("auto", torch.device("cpu"))
    calls = []
    monkeypatch.setattr(backend, "resolve_backend", lambda *a: calls.append(a) or "torch")
    for _ in range(3):
        sel.observe(torch.rand(16), torch.arange(16))
        sel.step()
        sel.kept_indices()
    assert calls == []
    sel.to("cpu")  # the same device: nothing to do
    assert calls == []
