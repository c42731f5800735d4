"""Drive a fast selector and the reference criterion with the same random losses."""
from __future__ import annotations

import torch

from ies_fast import ReferenceCriterion


def random_epoch_losses(num_samples: int, epoch: int, gen: torch.Generator, plateau: torch.Tensor) -> torch.Tensor:
    """Losses that settle for the ``plateau`` samples (so some get mastered) and jump
    around for the others; a few re-start moving later (re-inclusion)."""
    base = torch.rand(num_samples, generator=gen) * 2 + 0.1
    settled = 1.0 / (1 + epoch) ** 2 + torch.rand(num_samples, generator=gen) * 1e-4
    return torch.where(plateau, settled, base)


def run_both(selector, num_epochs: int, seed: int, *, batch: int = 7, observe_fraction: float = 1.0, extra=None):
    """Feed both with shuffled batches each epoch; return masks per epoch from each."""
    S = selector.num_samples
    ref = ReferenceCriterion(S, selector.delta, selector.order, selector.window)
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
