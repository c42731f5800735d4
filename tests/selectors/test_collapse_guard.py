"""The collapse guard (min_kept): a floor under the trained set, filled with random
mastered samples; decisions unchanged; a warning when the kept set is below a batch."""
import json

import pytest
import torch

from ies_fast import IES, ReferenceCriterion
from ies_fast.selectors.floor import KeptFloor
from ies_fast.app.train.config import TrainConfig, resolve
from ies_fast.app.train.loop import train


def collapsing_losses(num_samples, epochs, seed):
    """Every sample's loss settles, most of them early: without a floor the kept set
    shrinks to a handful (the late collapse's first half)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(epochs, dtype=torch.float32).unsqueeze(1)
    start = torch.randint(0, epochs // 2, (num_samples,), generator=g)
    noise = torch.rand(epochs, num_samples, generator=g)
    settled = 1.0 / (1 + t) ** 2 + noise * 1e-4
    return torch.where(t >= start, settled, noise * 2 + 0.1)


def run(sel, losses):
    """Train on the kept samples, score the removed ones, step; a ReferenceCriterion
    sees the same observations. Returns per epoch (trained, replayed, mastered, ref)."""
    ref = ReferenceCriterion(sel.num_samples, sel.delta, sel.order, sel.window)
    out = []
    for row in losses:
        trained = sel.kept_indices().clone()
        replayed = sel.replay & sel.removal_enabled
        for idx, scoring in ((trained, False), (sel.scoring_mask().nonzero().squeeze(1), True)):
            sel.observe(row[idx], idx, scoring=scoring)
            ref.observe(row[idx].tolist(), idx.tolist())
        sel.step()
        out.append((trained, replayed.clone(), sel.mastered_mask().clone(), torch.tensor(ref.step())))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("floor", [1, 10, 40])
def test_floor_holds_and_decisions_follow_the_reference(seed, floor):
    S, E = 67, 30
    losses = collapsing_losses(S, E, seed)
    bare = run(IES(S, delta=0.05, backend="torch"), losses)
    assert min(t.numel() for t, _, _, _ in bare) < floor or floor == 1, "the script should collapse the kept set"
    guarded = run(IES(S, delta=0.05, backend="torch", min_kept=floor, seed=seed), losses)
    replays = 0
    for epoch, (trained, replayed, mastered, want) in enumerate(guarded):
        assert torch.equal(mastered, want), f"decisions, epoch {epoch}"
        assert trained.numel() >= floor, f"epoch {epoch}: trained {trained.numel()} < {floor}"
        replays += int(replayed.sum())
        if replayed.any():  # topped up exactly to the floor, from mastered samples only
            assert trained.numel() == floor
            assert set(replayed.nonzero().squeeze(1).tolist()) <= set(trained.tolist())
    assert replays > 0


def test_replay_is_seeded_identical_across_ranks_and_rotates():
    S = 200
    mastered = torch.rand(S, generator=torch.Generator().manual_seed(0)) < 0.95
    a, b, c = KeptFloor(S, 50, seed=3), KeptFloor(S, 50, seed=3), KeptFloor(S, 50, seed=4)
    need = 50 - int((~mastered).sum())
    m1, m2 = a.replay_mask(mastered, 7), a.replay_mask(mastered, 8)
    assert int(m1.sum()) == need and not (m1 & ~mastered).any()
    assert torch.equal(m1, b.replay_mask(mastered, 7))  # every DDP rank draws the same set
    assert not torch.equal(m1, m2) and not torch.equal(m1, c.replay_mask(mastered, 7))
    assert not KeptFloor(S, 0).replay_mask(mastered, 7).any()
    assert not KeptFloor(S, 5).replay_mask(mastered, 7).any()  # already 5+ not mastered


def test_replay_survives_a_checkpoint():
    S, E = 41, 20
    losses = collapsing_losses(S, E, 5)
    a = IES(S, delta=0.05, backend="torch", min_kept=12, seed=1)
    run(a, losses[:12])
    assert a.replay.any()
    b = IES(S, delta=0.05, backend="torch", min_kept=12, seed=1)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.kept_indices(), b.kept_indices())
    for (ta, *_), (tb, *_) in zip(run(a, losses[12:]), run(b, losses[12:])):
        assert torch.equal(ta, tb)
    bad = dict(a.state_dict(), replay=torch.zeros(S + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="replay"):
        b.load_state_dict(bad)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(min_kept=-1), ValueError, "min_kept"), (dict(min_kept=11), ValueError, "min_kept"),
    (dict(min_kept=1.5), ValueError, "min_kept"), (dict(min_kept=2, seed=1.5), TypeError, "seed")])
def test_bad_floor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        IES(10, **kwargs)


def test_min_kept_option_is_validated():
    with pytest.raises(ValueError, match="--min-kept"):
        resolve(TrainConfig(dataset="digits", min_kept=1.5))
    with pytest.raises(ValueError, match="--score-policy"):
        resolve(TrainConfig(dataset="digits", score_policy="never"))
    assert resolve(TrainConfig(dataset="mnist1d")).min_kept is not None  # the recipe sets it


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add contention
    yield
    torch.set_num_threads(threads)


def _digits(tmp_path, name, **kw):
    c = TrainConfig(dataset="digits", epochs=8, delta=1.0, batch_size=512, progress=False, plot=False,
                    out=str(tmp_path / name), **kw)
    return train(c)


def test_loop_warns_below_one_batch_and_the_floor_prevents_it(tmp_path, capsys, one_thread):
    s = _digits(tmp_path, "bare", min_kept=0.0)
    err = capsys.readouterr().err
    small = [r for r in s["history"] if r["kept"] < 512]
    assert small, "δ=1 should master nearly everything"
    assert f"epoch {small[0]['epoch'] + 1}: {small[0]['kept']} of" in err and "fewer than one batch (512)" in err
    s = _digits(tmp_path, "guarded", min_kept=0.5)
    err = capsys.readouterr().err
    n = s["history"][0]["num_samples"]
    assert all(r["kept"] >= n // 2 for r in s["history"]) and "fewer than one batch" not in err
    rows = [json.loads(line) for line in open(tmp_path / "guarded" / "log.jsonl")]
    assert rows[-1]["kept"] >= n // 2


def test_min_kept_is_a_count_as_an_int_and_a_fraction_as_a_float():
    """``IES(min_kept=0.05)`` means what ``--min-kept 0.05`` means: 5% of the samples."""
    from ies_fast import IES

    assert IES(200, min_kept=0.05).kept_floor.min_kept == 10
    assert IES(200, min_kept=10).kept_floor.min_kept == 10
    assert IES(201, min_kept=0.05).kept_floor.min_kept == 11  # rounded up
    for bad in (1.5, -0.1, float("nan"), 201 + 1):
        with pytest.raises(ValueError, match="min_kept"):
            IES(201, min_kept=bad)
    for bad in (True, "5"):  # a wrong type
        with pytest.raises(TypeError, match="min_kept"):
            IES(201, min_kept=bad)
