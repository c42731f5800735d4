"""Drive a fast selector and the reference criterion with the same random losses."""
from __future__ import annotations

import math

import torch

from ies_fast import IES, ReferenceCriterion


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
