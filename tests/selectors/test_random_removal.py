import pytest
import torch

from ies_fast import Selector
from ies_fast.selectors.random_removal import RandomRemoval


@pytest.mark.parametrize("n,ratio,expected", [(100, 0.3, 30), (7, 0.5, 4), (5, 0.5, 2), (9, 0.0, 0), (9, 1.0, 9), (333, 0.25, 83)])
def test_exact_count_every_epoch(n, ratio, expected):
    sel = RandomRemoval(n, ratio, seed=1)
    assert isinstance(sel, Selector)
    for _ in range(6):
        assert int(sel.removed_mask().sum()) == expected
        assert len(sel.kept_indices()) == n - expected
        sel.observe(torch.rand(3), torch.tensor([0, 1, 2]))
        sel.step()


def test_fresh_sets_uniform_and_reproducible():
    n, ratio, epochs = 50, 0.4, 300
    a, b, c = RandomRemoval(n, ratio, seed=5), RandomRemoval(n, ratio, seed=5), RandomRemoval(n, ratio, seed=6)
    counts = torch.zeros(n)
    changed = 0
    prev = a.removed_mask().clone()
    for _ in range(epochs):
        assert torch.equal(a.removed_mask(), b.removed_mask())
        counts += a.removed_mask().float()
        for s in (a, b, c):
            s.step()
        changed += int(not torch.equal(prev, a.removed_mask()))
        prev = a.removed_mask().clone()
    assert changed > epochs * 0.9, "a fresh set each epoch"
    assert not torch.equal(a.removed_mask(), c.removed_mask())
    assert torch.all(((counts / epochs) - ratio).abs() < 0.12)


def test_state_dict_round_trip_continues_the_same_draws():
    ref = RandomRemoval(31, 0.3, seed=2)
    masks = []
    for _ in range(8):
        ref.step()
        masks.append(ref.removed_mask().clone())
    first = RandomRemoval(31, 0.3, seed=2)
    for _ in range(3):
        first.step()
    resumed = RandomRemoval(31, 0.3, seed=99)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed.removed_mask(), masks[2])
    for m in masks[3:]:
        resumed.step()
        assert torch.equal(resumed.removed_mask(), m)
    assert resumed.stats()["backward_saved"] == 8 * round(0.3 * 31)


def test_set_removal_and_errors():
    sel = RandomRemoval(10, 0.5)
    sel.set_removal(False)
    assert not sel.removed_mask().any()
    with pytest.raises(ValueError, match="ratio"):
        RandomRemoval(10, 1.5)
    with pytest.raises(ValueError, match="num_samples"):
        RandomRemoval(0, 0.5)
    with pytest.raises(ValueError, match="index"):
        sel.observe(torch.ones(1), torch.tensor([10]))
    with pytest.raises(ValueError, match="ratio"):
        RandomRemoval(10, 0.4).load_state_dict(sel.state_dict())
