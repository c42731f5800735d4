"""InfoBatch against its definition (the authors' infobatch.py), epoch by epoch."""
import math

import pytest
import torch

from ies_fast import Selector
from ies_fast.selectors.infobatch import INITIAL_SCORE, InfoBatch


class ReferenceScores:
    """The original's score bookkeeping in plain Python: last loss per sample
    (largest if observed twice in an epoch; non-finite ignored), 3.0 at the start."""

    def __init__(self, n):
        self.scores = [INITIAL_SCORE] * n
        self.epoch_vals = {}

    def observe(self, losses, indices):
        for v, i in zip(losses, indices):
            if math.isfinite(v):
                self.epoch_vals[i] = max(self.epoch_vals.get(i, -math.inf), v)

    def step(self):
        for i, v in self.epoch_vals.items():
            self.scores[i] = v
        self.epoch_vals = {}
        mean = sum(self.scores) / len(self.scores)
        return [s < mean for s in self.scores]


def feed_epoch(sel, ref, losses, gen, batch=9):
    order = torch.randperm(sel.num_samples, generator=gen)
    kept = sel.kept_mask()
    order = order[kept[order]]  # the loader only serves kept samples
    for chunk in order.split(batch):
        sel.observe(losses[chunk], chunk)
        ref.observe(losses[chunk].tolist(), chunk.tolist())


@pytest.mark.parametrize("prune_ratio", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("n", [101, 240])
def test_pruning_matches_definition_every_epoch(prune_ratio, n):
    epochs = 40
    sel = InfoBatch(n, num_epochs=epochs, prune_ratio=prune_ratio, delta=0.875, seed=3)
    ref = ReferenceScores(n)
    gen = torch.Generator().manual_seed(n)
    difficulty = torch.rand(n, generator=gen) * 3
    keep = 1.0 - prune_ratio
    assert not sel.removed_mask().any(), "epoch 0 trains on everything"
    pruned_total = wl_total = 0
    for epoch in range(epochs):
        losses = difficulty / (1 + epoch) + torch.rand(n, generator=gen) * 0.5
        feed_epoch(sel, ref, losses, gen)
        sel.step()
        wl = torch.tensor(ref.step())
        removed = sel.removed_mask()
        weights = sel.loss_weights(torch.arange(n))
        if epoch + 2 <= 0.875 * epochs:  # the epoch about to run (epoch + 1) prunes
            assert torch.equal(sel.well_learned_mask(), wl)
            assert not (removed & ~wl).any(), "only below-mean samples are pruned"
            n_wl = int(wl.sum())
            assert int(removed.sum()) == n_wl - int(keep * n_wl)
            kept_wl = wl & ~removed
            torch.testing.assert_close(weights[kept_wl], torch.full((int(kept_wl.sum()),), 1 / keep))
            assert torch.equal(weights[~kept_wl], torch.ones(n - int(kept_wl.sum())))
            pruned_total += int(removed.sum())
            wl_total += n_wl
        else:
            assert not removed.any(), "full data after delta * num_epochs"
            assert torch.equal(weights, torch.ones(n))
    assert wl_total > 0
    assert abs(pruned_total / wl_total - prune_ratio) < 0.02


def test_each_well_learned_sample_is_pruned_with_probability_prune_ratio():
    """With fixed scores the pruned set is a uniform random subset of the
    below-mean samples: every such sample is pruned in about prune_ratio of epochs."""
    n, epochs, ratio = 60, 400, 0.5
    sel = InfoBatch(n, num_epochs=epochs + 10, prune_ratio=ratio, delta=1.0, seed=0)
    losses = torch.linspace(0.1, 2.0, n)  # first half below the mean
    counts = torch.zeros(n)
    for _ in range(epochs):
        sel.observe(losses, torch.arange(n))
        sel.step()
        counts += sel.removed_mask().float()
    freq = counts / epochs
    assert torch.all(freq[n // 2 :] == 0)
    # binomial(400, 0.5): sd 0.025; exact-count sampling is tighter still
    assert torch.all((freq[: n // 2] - ratio).abs() < 0.1), freq[: n // 2]


@pytest.mark.parametrize("num_epochs,delta,pruning", [(8, 0.875, 7), (5, 0.5, 2), (10, 1.0, 10), (4, 0.0, 0), (7, 0.3, 2)])
def test_schedule_follows_the_original_sampler(num_epochs, delta, pruning):
    sel = InfoBatch(10, num_epochs=num_epochs, delta=delta)
    assert [sel.prunes_epoch(e) for e in range(num_epochs)] == [e < pruning for e in range(num_epochs)]


def test_seed_and_state_dict_round_trip_reproduce_the_run():
    n, epochs = 83, 12

    def losses_for(epoch):
        return torch.rand(n, generator=torch.Generator().manual_seed(epoch)) + 1.0 / (epoch + 1)

    def run(sel, start, stop):
        masks = []
        for epoch in range(start, stop):
            sel.observe(losses_for(epoch), torch.arange(n))
            sel.step()
            masks.append((sel.removed_mask().clone(), sel.loss_weights(torch.arange(n))))
        return masks

    full = run(InfoBatch(n, epochs, seed=7), 0, epochs)
    again = run(InfoBatch(n, epochs, seed=7), 0, epochs)
    other = run(InfoBatch(n, epochs, seed=8), 0, epochs)
    for (a, wa), (b, wb) in zip(full, again):
        assert torch.equal(a, b) and torch.equal(wa, wb)
    assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(full, other)), "the seed must matter"

    first = InfoBatch(n, epochs, seed=7)
    head = run(first, 0, 5)
    state = first.state_dict()
    resumed = InfoBatch(n, epochs, seed=123)
    resumed.load_state_dict(state)
    tail = run(resumed, 5, epochs)
    for (a, wa), (b, wb) in zip(full, head + tail):
        assert torch.equal(a, b) and torch.equal(wa, wb)
    assert resumed.stats()["backward_saved"] == sum(int(m.sum()) for m, _ in full[:-1])


def test_weighted_loss_is_the_original_batch_loss():
    n = 50
    sel = InfoBatch(n, 10, prune_ratio=0.4, seed=1)
    sel.observe(torch.linspace(0, 1, n), torch.arange(n))
    sel.step()
    index = sel.kept_indices()[:16]
    assert index.dtype == torch.int64
    losses = torch.rand(16, generator=torch.Generator().manual_seed(0))
    w = sel.loss_weights(index)
    assert (w > 1).any()
    expected = torch.tensor([v * (1 / 0.6 if wl else 1.0) for v, wl in zip(losses.tolist(), sel.well_learned_mask()[index].tolist())])
    torch.testing.assert_close(losses * w, expected)


def test_duplicates_nonfinite_and_scoring_are_counted():
    sel = InfoBatch(6, 10, seed=0)
    sel.observe(torch.tensor([1.0, 0.5, math.nan, 2.0]), torch.tensor([0, 0, 1, 2]))
    sel.observe(torch.tensor([math.inf, 0.2]), torch.tensor([3, 4]), scoring=True)
    sel.step()
    assert sel.scores[:6].tolist() == [1.0, INITIAL_SCORE, 2.0, INITIAL_SCORE, pytest.approx(0.2), INITIAL_SCORE]
    s = sel.stats()
    assert s["nonfinite_total"] == 2 and s["scored_total"] == 2 and s["epoch"] == 1


def test_set_removal_off_gives_full_data_and_unit_weights():
    n = 40
    sel = InfoBatch(n, 10, seed=0)
    sel.observe(torch.linspace(0, 1, n), torch.arange(n))
    sel.step()
    assert sel.removed_mask().any()
    sel.set_removal(False)
    assert not sel.removed_mask().any()
    assert len(sel.kept_indices()) == n
    assert torch.equal(sel.loss_weights(torch.arange(n)), torch.ones(n))


def test_interface_and_errors():
    sel = InfoBatch(5, 3)
    assert isinstance(sel, Selector) and not sel.needs_scoring()
    with pytest.raises(ValueError, match="prune_ratio"):
        InfoBatch(5, 3, prune_ratio=0.95)
    with pytest.raises(ValueError, match="delta"):
        InfoBatch(5, 3, delta=1.5)
    with pytest.raises(ValueError, match="num_epochs"):
        InfoBatch(5, 0)
    with pytest.raises(ValueError, match="seed"):
        InfoBatch(5, 3, seed=-1)
    with pytest.raises(ValueError, match="index"):
        sel.observe(torch.ones(2), torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="index"):
        sel.observe(torch.ones(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="index"):
        sel.loss_weights(torch.tensor([7]))
    with pytest.raises(ValueError, match="num_epochs"):
        InfoBatch(5, 4).load_state_dict(sel.state_dict())
    with pytest.raises(ValueError, match="InfoBatch"):
        sel.load_state_dict({"kind": "IES"})


def test_record_hook_skips_negative_rows():
    """``record`` takes checked indices where -1 marks rows to skip (ignored targets)."""
    sel = InfoBatch(4, 10)
    sel.record(torch.tensor([0.5, 9.0, 0.25]), torch.tensor([1, -1, 3]))
    sel.step()
    assert sel.scores.tolist()[:4] == [INITIAL_SCORE, 0.5, INITIAL_SCORE, 0.25]
    assert sel.stats()["nonfinite_total"] == 0


def test_scores_equal_to_the_mean_are_not_well_learned():
    """Strictly below the mean: unobserved samples keep 3.0, here exactly the mean."""
    sel = InfoBatch(4, 10, prune_ratio=0.5, seed=0)
    assert not sel.well_learned_mask().any(), "all scores tie before any loss"
    sel.observe(torch.tensor([1.0, 5.0]), torch.tensor([0, 3]))
    sel.step()
    assert sel.well_learned_mask().tolist() == [True, False, False, False]
    assert int(sel.removed_mask().sum()) == 1 - int(0.5 * 1)
