"""Scoring schedules: which removed samples the scoring pass forwards, and that the
decisions stay exactly those of ReferenceCriterion fed only those observations."""
import pytest
import torch

from ies_fast import IES, ReferenceCriterion
from ies_fast.selectors.schedule import ScoringSchedule


class ReferenceBackoff:
    """The backoff rule written per sample, literally: a sample mastered at the end of
    epoch m is re-scored s epochs later; every re-score that finds it still mastered
    doubles the gap (at most ``cap``); a sample that is not mastered starts over."""

    def __init__(self, num_samples, score_every, cap):
        self.s, self.cap = score_every, cap
        self.gap = [score_every] * num_samples
        self.due = [0] * num_samples

    def due_set(self, epoch, removed):
        return [bool(r) and self.due[i] <= epoch for i, r in enumerate(removed)]

    def update(self, epoch, observed, was, now):
        for i in range(len(now)):
            if not now[i] or not was[i]:
                self.gap[i] = self.s
            elif i in observed:
                self.gap[i] = min(2 * self.gap[i], self.cap)
            if now[i] and i in observed:
                self.due[i] = epoch + self.gap[i]


def stream_losses(num_samples, epochs, seed):
    """[epochs, S] losses: half the samples settle (so they get mastered) and some of
    those start moving again at a random epoch for a few epochs (so they come back)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(epochs, dtype=torch.float32).unsqueeze(1)
    settle = torch.rand(num_samples, generator=g) < 0.6
    noise = torch.rand(epochs, num_samples, generator=g)
    settled = 1.0 / (1 + t) ** 2 + noise * 1e-4
    losses = torch.where(settle, settled, noise * 2 + 0.1)
    wake = torch.randint(6, epochs, (num_samples,), generator=g)
    moving = (t >= wake) & (t < wake + 3) & (torch.rand(num_samples, generator=g) < 0.4)
    return torch.where(moving, noise * 2 + 0.1, losses)


def drive(sel, losses, *, batch=7, check=None):
    """The training loop's order of calls: train on the kept samples, score the due
    removed ones, step. Feeds a ReferenceCriterion the same observations. Yields per
    epoch (trained indices, scored indices, selector mask, reference mask)."""
    S = sel.num_samples
    ref = ReferenceCriterion(S, sel.delta, sel.order, sel.window)
    for epoch, row in enumerate(losses):
        trained = sel.kept_indices().clone()
        scored = sel.scoring_mask().nonzero().squeeze(1) if sel.needs_scoring() else torch.zeros(0, dtype=torch.long)
        if check is not None:
            check(epoch, sel, scored)
        for idx, scoring in ((trained, False), (scored, True)):
            for chunk in idx.split(batch):
                sel.observe(row[chunk], chunk, scoring=scoring)
                ref.observe(row[chunk].tolist(), chunk.tolist())
        sel.step()
        yield trained, scored, sel.mastered_mask().clone(), torch.tensor(ref.step())


@pytest.mark.parametrize("score_every,cap", [(1, 8), (1, 2), (2, 8), (3, 3), (1, 1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backoff_matches_reference_on_random_streams(score_every, cap, seed):
    S, E = 83, 40
    sel = IES(S, delta=0.05, backend="torch", score_every=score_every, score_policy="backoff",
              score_max_interval=cap)
    pol = ReferenceBackoff(S, score_every, cap)
    prev = [False] * S
    skipped = reincluded = 0

    def check(epoch, sel, scored):
        removed = sel.removed_mask().tolist()
        want = pol.due_set(epoch, removed)
        assert sel.scoring_mask().tolist() == want, f"due set, epoch {epoch}"
        assert sel.needs_scoring()

    for epoch, (trained, scored, got, want) in enumerate(drive(sel, stream_losses(S, E, seed), check=check)):
        assert torch.equal(got, want), f"decisions, epoch {epoch}"
        observed = set(trained.tolist()) | set(scored.tolist())
        now = got.tolist()
        skipped += sum(1 for i in range(S) if prev[i] and i not in observed)
        reincluded += sum(1 for i in range(S) if prev[i] and not now[i])
        pol.update(epoch, observed, prev, now)
        prev = now
    assert reincluded > 0, "the stream should bring mastered samples back"
    if cap > score_every:
        assert skipped > 0, "backoff should skip some re-scores"


def test_backoff_intervals_double_up_to_the_cap():
    """One sample that never moves: scored 1, 2, 4, 8, 8 epochs apart after it is mastered."""
    sel = IES(2, delta=0.05, order=1, window=1, backend="torch", score_policy="backoff", score_max_interval=8)
    scored_at = []
    for epoch in range(40):
        if not sel.mastered[0]:
            sel.observe(torch.tensor([1.0]), torch.tensor([0]))
        elif sel.scoring_mask()[0]:
            scored_at.append(epoch)
            sel.observe(torch.tensor([1.0]), torch.tensor([0]), scoring=True)
        sel.step()
    first = scored_at[0]
    assert [e - first for e in scored_at[:6]] == [0, 2, 6, 14, 22, 30]
    assert first == 2  # mastered after epoch 1 (order 1 + window 1 losses), scored at the end of epoch 2


def test_every_policy_is_the_paper_rule():
    """'every' with score_every=s forwards every removed sample on epochs divisible by s."""
    S = 61
    sel = IES(S, delta=0.05, backend="torch", score_every=2)
    for epoch, (trained, scored, got, want) in enumerate(drive(sel, stream_losses(S, 20, 3))):
        assert torch.equal(got, want)
        removed_before = S - trained.numel()
        assert scored.numel() == (removed_before if epoch % 2 == 0 else 0)


def test_backoff_scores_fewer_and_the_stats_count_them():
    S, E = 97, 40
    losses = stream_losses(S, E, 4)
    counts = {}
    for policy in ("every", "backoff"):
        sel = IES(S, delta=0.05, backend="torch", score_policy=policy)
        counts[policy] = sum(s.numel() for _, s, _, _ in drive(sel, losses))
        assert sel.stats()["scored_total"] == counts[policy]
    assert 0 < counts["backoff"] < 0.7 * counts["every"]


def test_backoff_state_round_trip_continues_identically():
    S, E = 59, 30
    losses = stream_losses(S, E, 5)
    a = IES(S, delta=0.05, backend="torch", score_policy="backoff", score_max_interval=4)
    first = list(drive(a, losses[:15]))
    b = IES(S, delta=0.05, backend="torch", score_policy="backoff", score_max_interval=4)
    b.load_state_dict(a.state_dict())
    ref_a = [(t, s) for t, s, _, _ in drive(a, losses[15:])]
    ref_b = [(t, s) for t, s, _, _ in drive(b, losses[15:])]
    assert first and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(ref_a, ref_b))
    assert torch.equal(a.scoring_schedule.interval, b.scoring_schedule.interval)
    assert torch.equal(a.scoring_schedule.next_due, b.scoring_schedule.next_due)


def test_bad_schedule_state_is_rejected_before_anything_is_applied():
    S = 31
    a = IES(S, delta=0.05, backend="torch", score_policy="backoff")
    list(drive(a, stream_losses(S, 12, 6)))
    b = IES(S, delta=0.05, backend="torch", score_policy="backoff")
    before = {k: v.clone() for k, v in b.state_dict().items() if isinstance(v, torch.Tensor)}
    bad = a.state_dict()
    bad["scoring_schedule"] = dict(bad["scoring_schedule"], interval=torch.zeros(S, dtype=torch.int16))
    with pytest.raises(ValueError, match="interval"):
        b.load_state_dict(bad)
    bad = dict(a.state_dict(), scoring_schedule={"policy": "every"})
    with pytest.raises(ValueError, match="policy"):
        b.load_state_dict(bad)
    bad = dict(a.state_dict(), scoring_schedule=dict(a.state_dict()["scoring_schedule"], max_interval=4))
    with pytest.raises(ValueError, match="max_interval"):
        b.load_state_dict(bad)
    after = b.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_state_without_schedule_loads_as_every():
    """Checkpoints written before scoring policies existed load into an 'every' selector."""
    S = 23
    a = IES(S, delta=0.05, backend="torch")
    list(drive(a, stream_losses(S, 10, 7)))
    old = {k: v for k, v in a.state_dict().items() if k not in ("scoring_schedule", "replay")}
    b = IES(S, delta=0.05, backend="torch")
    b.load_state_dict(old)
    assert torch.equal(b.mastered, a.mastered)
    with pytest.raises(ValueError, match="policy"):
        IES(S, delta=0.05, backend="torch", score_policy="backoff").load_state_dict(old)


@pytest.mark.parametrize("kwargs,match", [
    (dict(score_policy="sometimes"), "score_policy"),
    (dict(score_policy="backoff", score_max_interval=0), "score_max_interval"),
    (dict(score_policy="backoff", score_max_interval=2.0), "score_max_interval"),
    (dict(score_policy="backoff", score_every=4, score_max_interval=2), "score_max_interval"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    error = TypeError if isinstance(kwargs.get("score_max_interval"), float) else ValueError
    with pytest.raises(error, match=match):
        IES(10, **kwargs)


def test_schedule_on_its_own_has_no_state_for_every():
    assert ScoringSchedule(5).state_dict() == {"policy": "every", "max_interval": 8}
    sched = ScoringSchedule(5, "backoff", max_interval=4)
    assert sched.interval.dtype == torch.int16 and sched.next_due.dtype == torch.int32
