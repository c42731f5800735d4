"""Soak: many epochs and millions of observations (with NaN/Inf, duplicates,
scoring passes, stats reads and checkpoint round trips) must not grow the
process's memory. Marked ``slow``; runs only with IES_FAST_SOAK=1:

    IES_FAST_SOAK=1 python -m pytest -q -m slow tests/test_soak.py -s
"""
from __future__ import annotations

import gc
import os

import pytest
import torch

from ies_fast import IES
from ies_fast.io.checkpoint import load_checkpoint, save_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("IES_FAST_SOAK") != "1", reason="soak test: set IES_FAST_SOAK=1"),
]

SAMPLES = int(os.environ.get("IES_FAST_SOAK_SAMPLES", "500000"))
EPOCHS = int(os.environ.get("IES_FAST_SOAK_EPOCHS", "100"))
BATCH = 4096
GROWTH_LIMIT_MB = 24.0


def rss_mb() -> float:
    """Resident set size of this process in MiB (psutil if present, else /proc)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_epoch(sel: IES, epoch: int, gen: torch.Generator) -> int:
    order = torch.randperm(SAMPLES, generator=gen)
    settled = torch.arange(SAMPLES) % 2 == 0
    loss = torch.where(settled, torch.full((SAMPLES,), 0.3) + torch.rand(SAMPLES, generator=gen) * 1e-5,
                       torch.rand(SAMPLES, generator=gen))
    loss[torch.randint(0, SAMPLES, (50,), generator=gen)] = float("nan")
    observed = 0
    removed = sel.removed_mask()
    for idx in order.split(BATCH):
        train = idx[~removed[idx]]
        sel.observe(loss[train], train)
        observed += train.numel()
    if sel.needs_scoring():
        scored = sel.scoring_mask().nonzero().flatten()
        for idx in scored.split(BATCH):
            sel.observe(loss[idx], idx, scoring=True)
            observed += idx.numel()
    dup = order[:1000]  # duplicates in the same epoch
    sel.observe(loss[dup] * 0.5, dup)
    sel.step()
    sel.stats()
    sel.kept_indices()
    return observed + dup.numel()


def test_no_memory_growth(tmp_path):
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    sel = IES(SAMPLES, delta=1e-3, order=2, window=3, device="cpu", backend="torch", score_every=2)
    path = tmp_path / "soak.ckpt"
    warmup = 8
    total = 0
    for epoch in range(EPOCHS):
        total += run_epoch(sel, epoch, gen)
        if epoch % 10 == 9:
            save_checkpoint({"selector": sel.state_dict(), "epoch": epoch}, path)
            sel.load_state_dict(load_checkpoint(path)["selector"])
        if epoch == warmup - 1:
            gc.collect()
            before = rss_mb()
    gc.collect()
    after = rss_mb()
    s = sel.stats()
    print(f"\nsoak: {SAMPLES} samples, {EPOCHS} epochs, {total / 1e6:.1f}M observations; "
          f"RSS after epoch {warmup}: {before:.1f} MiB, at the end: {after:.1f} MiB "
          f"(growth {after - before:+.1f} MiB); mastered {s['mastered']}, nonfinite_total {s['nonfinite_total']}")
    assert total > 1_000_000
    assert s["mastered"] > 0 and s["nonfinite_total"] > 0
    assert after - before < GROWTH_LIMIT_MB, f"RSS grew {after - before:.1f} MiB over {EPOCHS - warmup} epochs"
