"""The backend-parity harness every fast path is tested with: random ring states and
batches for the ring ops, and a fast selector driven beside the reference criterion
with the same random losses."""
from __future__ import annotations

import math

import torch

from ies_fast import IES, ReferenceCriterion
from ies_fast.ops.ring.reference import close_epoch_torch
from ies_fast.selectors.rule import decision_threshold


def random_epoch_losses(num_samples: int, epoch: int, gen: torch.Generator, plateau: torch.Tensor) -> torch.Tensor:
    """Losses that settle for the ``plateau`` samples (so some get mastered) and jump
    around for the others; a few re-start moving later (re-inclusion)."""
    base = torch.rand(num_samples, generator=gen) * 2 + 0.1
    settled = 1.0 / (1 + epoch) ** 2 + torch.rand(num_samples, generator=gen) * 1e-4
    return torch.where(plateau, settled, base)


def run_both(selector, num_epochs: int, seed: int, *, batch: int = 7, observe_fraction: float = 1.0, extra=None):
    """Feed both with shuffled batches each epoch; return masks per epoch from each."""
    S = selector.num_samples
    ref = ReferenceCriterion(S, selector.delta, selector.order, selector.window, selector.k, selector.eligibility)
    gen = torch.Generator().manual_seed(seed)
    plateau = torch.rand(S, generator=gen) < 0.5
    masks = []
    for epoch in range(num_epochs):
        losses = random_epoch_losses(S, epoch, gen, plateau)
        if epoch == num_epochs // 2:
            plateau &= torch.rand(S, generator=gen) < 0.7  # some samples start moving again
        order = torch.randperm(S, generator=gen)
        order = order[: max(1, int(S * observe_fraction))]
        if extra is not None:
            losses, order = extra(losses, order, gen)
        for chunk in order.split(batch):
            selector.observe(losses[chunk].to(selector.device), chunk.to(selector.device))
            ref.observe(losses[chunk].tolist(), chunk.tolist())
        selector.step()
        ref_mask = torch.tensor(ref.step())
        masks.append((selector.mastered_mask().cpu().clone(), ref_mask))
    return masks


def perturb_duplicates_nonfinite(losses, order, gen):
    """``run_both(extra=...)``: 5% NaN/+Inf/-Inf losses and 25% duplicate indices."""
    losses = losses.clone()
    bad = torch.rand(losses.shape, generator=gen) < 0.05
    losses[bad] = torch.tensor([math.nan, math.inf, -math.inf])[torch.randint(0, 3, (int(bad.sum()),), generator=gen)]
    dup = order[torch.randint(0, len(order), (len(order) // 4,), generator=gen)]
    return losses, torch.cat([order, dup])[torch.randperm(len(order) + len(dup), generator=gen)]


def assert_backend_matches_torch_and_reference(backend: str, order: int, window: int) -> None:
    """IES on ``backend`` gives the torch backend's state and the reference's masks."""
    fast = IES(61, delta=0.05, order=order, window=window, backend=backend)
    slow = IES(61, delta=0.05, order=order, window=window, backend="torch")
    got = run_both(fast, 11, order)
    want = run_both(slow, 11, order)
    assert any(m.any() for m, _ in got), "the test should master some samples"
    for epoch, ((g, ref), (w, _)) in enumerate(zip(got, want)):
        assert torch.equal(g, ref), f"epoch {epoch}"
        assert torch.equal(g, w), f"epoch {epoch}"
    assert torch.equal(fast.hist, slow.hist) and torch.equal(fast.count, slow.count)
    assert torch.equal(fast.kept_indices(), slow.kept_indices())
    assert fast.stats() == slow.stats()


def assert_backend_handles_duplicates_and_nonfinite(backend: str) -> None:
    fast = IES(53, delta=0.05, backend=backend)
    for got, want in run_both(fast, 12, 5, extra=perturb_duplicates_nonfinite, observe_fraction=0.7):
        assert torch.equal(got, want)
    assert fast.stats()["nonfinite_total"] > 0


# ---- random inputs for the ring ops (record / close_epoch) ----------------------------
def random_state(S, L, order, gen):
    """Rings whose scores spread around delta=0.05, random counts (wrap values
    included), current slots -inf / +inf / finite, random mastered."""
    noise = 10 ** (torch.rand(S, 1, generator=gen) * 4 - 4) * (10 if order == 0 else 1)
    hist = torch.rand(S, 1, generator=gen) * (order > 0) + torch.randn(S, L, generator=gen) * noise
    count = torch.randint(0, 2 * L, (S,), generator=gen)
    count[:4] = torch.tensor([0, L - 1, L, 2 * L - 1])[: min(4, S)]
    count = count.to(torch.uint8)
    cur = count.long() % L
    rows = torch.arange(S)
    r = torch.rand(S, generator=gen)
    hist[rows[r < 0.2], cur[r < 0.2]] = -math.inf
    hist[rows[(r >= 0.2) & (r < 0.3)], cur[(r >= 0.2) & (r < 0.3)]] = math.inf
    mastered = torch.rand(S, generator=gen) < 0.5
    return hist, count, mastered


def random_batch(S, B, gen):
    """Losses with NaN / +inf / -inf, duplicate indices and -1 rows."""
    loss = torch.rand(B, generator=gen) * 3
    special = torch.rand(B, generator=gen)
    loss[special < 0.05] = math.nan
    loss[(special >= 0.05) & (special < 0.1)] = math.inf
    loss[(special >= 0.1) & (special < 0.15)] = -math.inf
    index = torch.randint(0, max(S, 1), (B,), generator=gen)
    index[torch.rand(B, generator=gen) < 0.15] = -1
    if S == 0:
        index.fill_(-1)
    return loss, index


def rule(order, window, k=1, delta=0.05):
    """close_epoch's (order, window, k, threshold) arguments."""
    return order, window, k, decision_threshold(delta, window)


def assert_close_matches_torch(close_epoch, hist, count, mastered, args):
    """``close_epoch(hist, count, mastered, *args)`` (a fast path) leaves the same state
    and returns the same stats as the plain-torch op; returns (state, stats)."""
    got = (hist.clone(), count.clone(), mastered.clone())
    want = (hist.clone(), count.clone(), mastered.clone())
    stats_got = close_epoch(*got, *args)
    stats_want = close_epoch_torch(*want, *args)
    assert stats_got.dtype == torch.int64
    assert torch.equal(stats_got, stats_want), (stats_got, stats_want)
    for name, a, b in zip(("hist", "count", "mastered"), got, want):
        assert torch.equal(a, b), name
    return got, stats_got


def assert_epochs_with_records_match_torch(record, close_epoch, epochs: int = 8):
    """Several epochs of random batches (some plateaued losses) through a fast
    ``record`` / ``close_epoch`` pair and the torch ops: identical state every epoch."""
    from ies_fast.ops.ring.reference import record_torch

    gen = torch.Generator().manual_seed(9)
    S, order, window = 150, 2, 3
    fast = random_state(S, order + window, order, gen)
    slow = tuple(t.clone() for t in fast)
    for _ in range(epochs):
        loss, index = random_batch(S, 200, gen)
        loss = torch.where(torch.rand(200, generator=gen) < 0.5, loss * 1e-3, loss)
        record(fast[0], fast[1], loss, index)
        record_torch(slow[0], slow[1], loss, index)
        assert torch.equal(close_epoch(*fast, *rule(order, window)), close_epoch_torch(*slow, *rule(order, window)))
        for a, b in zip(fast, slow):
            assert torch.equal(a, b)
