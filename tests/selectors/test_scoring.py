"""The scoring pass: forward-only, recorded as scoring observations, mode restored."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import ies_fast
from ies_fast.data import IndexedDataset, ScoringSampler
from ies_fast.selectors.scoring import per_sample_cross_entropy, score

N, D, C = 29, 6, 5


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(D, C)
        self.drop = torch.nn.Dropout(0.5)
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled(), x.shape[0]))
        return self.lin(self.drop(x))


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(N, D, generator=g), torch.randint(0, C, (N,), generator=g)
    sel = ies_fast.IES(N, backend="torch")
    sel.mastered.copy_(torch.rand(N, generator=g) < 0.5)
    sel._invalidate()
    torch.manual_seed(seed)
    return x, y, sel, Net()


def loader(x, y, sel, **kw):
    return DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=8, sampler=ScoringSampler(sel, **kw))


def last_recorded(sel):
    slot = sel.count.long() % sel.history_length  # this epoch's slot (before step)
    return sel.hist.gather(1, slot.unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("seed", [0, 1])
def test_records_eval_mode_losses_of_removed_samples(seed):
    x, y, sel, model = setup(seed)
    model.train()
    n = score(sel, model, loader(x, y, sel))
    gone = sel.mastered.nonzero().squeeze(1)
    assert n == gone.numel() > 0
    assert model.training  # restored
    assert all(not training and not grad for training, grad, _ in model.calls)
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(x[gone]), y[gone], reduction="none")
    assert torch.allclose(last_recorded(sel)[gone], expected, atol=1e-6)
    assert (sel.count[~sel.mastered] == 0).all()  # kept samples untouched
    sel.step()
    assert sel.stats()["scored_total"] == n


def test_score_fn_all_samples_and_train_mode():
    x, y, sel, model = setup(2)
    model.eval()
    model.drop.p = 0.0
    n = score(sel, model, loader(x, y, sel, all_samples=True), score_fn=per_sample_cross_entropy, mode="train")
    assert n == N and not model.training
    assert all(training for training, _, _ in model.calls)
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, reduction="none")
    assert torch.allclose(last_recorded(sel), expected, atol=1e-6)


def test_score_every_and_force():
    x, y, sel, model = setup(3)
    sel.score_every = 2
    sel.epoch = 1
    assert score(sel, model, loader(x, y, sel)) == 0 and model.calls == []
    assert score(sel, model, loader(x, y, sel), force=True) > 0


def test_autocast_bf16():
    x, y, sel, model = setup(4)
    n = score(sel, model, loader(x, y, sel), autocast_dtype=torch.bfloat16)
    gone = sel.mastered.nonzero().squeeze(1)
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(x[gone]), y[gone], reduction="none")
    assert n == gone.numel()
    assert torch.allclose(last_recorded(sel)[gone], expected, atol=0.1, rtol=0.05)


def test_dict_batches_and_bad_input():
    x, y, sel, model = setup(5)
    batches = [{"data": x[:4], "label": y[:4], "index": torch.arange(4)}]
    assert score(sel, model, batches, force=True) == 4
    with pytest.raises(ValueError, match="mode"):
        score(sel, model, [], mode="test")
    with pytest.raises(ValueError, match=r"\(x, y, index\)"):
        score(sel, model, [(x, y)], force=True)
    with pytest.raises(ValueError, match="score_fn"):
        score(sel, model, batches, score_fn=lambda o, t: o.sum(), force=True)
    model.train()
    with pytest.raises(ValueError):
        score(sel, model, [(x[:2], y[:2], torch.tensor([0, N]))], force=True)
    assert model.training  # restored after an error



def test_backoff_scores_only_the_due_samples_through_the_sampler():
    """ScoringSampler + score() forward exactly ``scoring_mask()``: under the backoff
    policy the removed samples whose interval has not elapsed are left out."""
    x, y, _, model = setup(6)
    sel = ies_fast.IES(N, delta=0.05, order=1, window=1, backend="torch", score_policy="backoff")
    flat = lambda out, target: torch.full((out.shape[0],), 0.5)  # noqa: E731 - a loss that never moves
    for _ in range(2):  # two equal losses: mastered (order 1, window 1)
        sel.observe(torch.full((N,), 0.5), torch.arange(N))
        sel.step()
    moves = torch.rand(N, generator=torch.Generator().manual_seed(6)) < 0.5
    assert score(sel, model, loader(x, y, sel), score_fn=flat) == N  # epoch 2: every one due (interval 1)
    sel.hist[moves, sel.count[moves].long() % sel.history_length] = 9.0  # their scored loss moved
    sel.step()
    assert torch.equal(sel.removed_mask(), ~moves)
    assert not sel.scoring_mask().any()  # the others' interval is 2 now: nobody due in epoch 3
    calls = len(model.calls)
    assert score(sel, model, loader(x, y, sel), score_fn=flat) == 0 and len(model.calls) == calls
    sel.step()
    assert torch.equal(sel.scoring_mask(), ~moves)  # epoch 4: due again
    assert score(sel, model, loader(x, y, sel), score_fn=flat) == int((~moves).sum())
