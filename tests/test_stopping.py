import math

import pytest
import torch

from ies_fast import IES
from ies_fast.stopping import PatienceStopper, all_mastered


def stop_index(stopper, seq):
    """1-based check at which the stopper says stop, or None."""
    for i, metrics in enumerate(seq, 1):
        if stopper.step(metrics if isinstance(metrics, dict) else {"loss": metrics}):
            return i
    return None


def test_min_mode_patience_and_ties():
    # best 1.0 at check 2; 1.0 again is a tie (no improvement); stops 3 checks later
    assert stop_index(PatienceStopper("loss", patience=3), [2.0, 1.0, 1.0, 1.5, 1.0, 0.5]) == 5
    assert stop_index(PatienceStopper("loss", patience=3), [2.0, 1.0, 0.9, 0.8, 0.7, 0.6]) is None


def test_min_delta_requires_beating_best_by_more():
    seq = [1.0, 0.95, 0.9, 0.899, 0.85]
    s = PatienceStopper("loss", patience=2, min_delta=0.1)
    # 0.95, 0.9 beat 1.0 by at most 0.1 -> stalled after 2 checks
    assert stop_index(s, seq) == 3
    s = PatienceStopper("loss", patience=2, min_delta=0.04)
    # 0.95 improves (by 0.05), 0.9 improves (by 0.05), 0.899 does not, 0.85 improves (0.049)
    assert stop_index(s, seq) is None
    assert s.best["loss"] == 0.85 and s.best_check == 5


def test_max_mode():
    s = PatienceStopper("acc", mode="max", patience=2)
    seq = [{"acc": a} for a in (0.5, 0.6, 0.6, 0.55, 0.7)]
    assert stop_index(s, seq) == 4
    assert s.best["acc"] == 0.6


def test_several_metrics_all_versus_any():
    # exit a stalls from check 2; exit b keeps improving until check 4
    seq = [{"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 0.9}, {"a": 0.6, "b": 0.8}, {"a": 0.7, "b": 0.7},
           {"a": 0.8, "b": 0.75}, {"a": 0.9, "b": 0.8}, {"a": 1.0, "b": 0.9}]
    assert stop_index(PatienceStopper(["a", "b"], patience=2, aggregate="any"), seq) == 4
    assert stop_index(PatienceStopper(["a", "b"], patience=2, aggregate="all"), seq) == 6
    assert stop_index(PatienceStopper(["a", "b"], patience=3, aggregate="all"), seq) == 7


def test_start_from_ignores_the_first_checks():
    seq = [5.0, 4.0, 3.0, 3.5, 3.5, 3.5]
    assert stop_index(PatienceStopper("loss", patience=2), seq) == 5
    s = PatienceStopper("loss", patience=2, start_from=3)
    # checks 1-3 ignored: 3.5 at check 4 is the first best, stalls at 5 and 6
    assert stop_index(s, seq) == 6
    assert s.best["loss"] == 3.5


def test_nonfinite_never_improves_and_tensors_accepted():
    s = PatienceStopper("loss", patience=2)
    assert stop_index(s, [math.nan, torch.tensor(1.0), math.inf, math.nan]) == 4
    assert s.best["loss"] == 1.0


def test_restore_best_keeps_the_best_model_copy():
    model = torch.nn.Linear(2, 1)
    s = PatienceStopper("loss", patience=2, restore_best=True)
    for i, loss in enumerate([3.0, 1.0, 2.0, 2.5]):
        with torch.no_grad():
            model.weight.fill_(float(i))
        stop = s.step({"loss": loss}, model=model)
    assert stop
    assert torch.equal(s.best_state()["weight"], torch.full((1, 2), 1.0))
    assert model.weight[0, 0].item() == 3.0, "the copy is independent of the model"
    assert PatienceStopper("loss").best_state() is None


def test_state_dict_round_trip_resumes_the_count():
    seq = [2.0, 1.0, 1.2, 1.3, 1.4]
    s = PatienceStopper("loss", patience=3)
    for v in seq[:3]:
        s.step({"loss": v})
    t = PatienceStopper("loss", patience=3)
    t.load_state_dict(s.state_dict())
    assert not t.step({"loss": seq[3]})
    assert t.step({"loss": seq[4]})
    with pytest.raises(ValueError, match="monitor"):
        PatienceStopper("acc").load_state_dict(s.state_dict())


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="mode"):
        PatienceStopper("x", mode="up")
    with pytest.raises(ValueError, match="patience"):
        PatienceStopper("x", patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        PatienceStopper("x", min_delta=-1)
    with pytest.raises(ValueError, match="aggregate"):
        PatienceStopper("x", aggregate="most")
    with pytest.raises(ValueError, match="monitor"):
        PatienceStopper(["x", "x"])
    with pytest.raises(KeyError, match="loss"):
        PatienceStopper("loss").step({"acc": 1.0})


def test_all_mastered_ends_algorithm_1():
    sel = IES(4, delta=0.5, order=0, window=1, backend="torch")
    sel.observe(torch.tensor([0.1, 0.2, 0.3, 0.9]), torch.arange(4))
    sel.step()
    assert not all_mastered(sel)
    sel.observe(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.arange(4))
    sel.step()
    assert all_mastered(sel)
