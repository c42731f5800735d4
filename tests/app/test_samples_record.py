"""The per-sample table: SampleRecord reads a selector only through its public
interface (a stand-in with nothing else works), its counters equal a plain
reference over random epochs, and ``ies-fast train`` writes the table once per run."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ies_fast import IES
from ies_fast.app.train import loop, samples
from ies_fast.app.train.config import TrainConfig
from ies_fast.app.train.samples import SampleRecord, read_samples

from test_train_idx import write_idx_folder  # noqa: E402

N = 64


class PublicOnly:
    """A selector as the table sees it: the four public members and nothing else."""

    def __init__(self, g):
        self.g, self.removal_enabled = g, True
        self.removed = torch.zeros(N, dtype=torch.bool)

    def removed_mask(self):
        return self.removed if self.removal_enabled else torch.zeros_like(self.removed)

    def new_epoch(self):
        self.removed = torch.rand(N, generator=self.g) < 0.4
        self.loss = torch.where(torch.rand(N, generator=self.g) < 0.7, torch.rand(N, generator=self.g),
                                torch.full((N,), math.nan))
        self.score = torch.where(torch.rand(N, generator=self.g) < 0.5, torch.rand(N, generator=self.g),
                                 torch.full((N,), math.nan))

    def epoch_losses(self):
        return self.loss

    def sample_scores(self):
        return self.score


@pytest.mark.parametrize("C", [3, 300])  # the per-class key in uint8, then int16
def test_counters_follow_the_public_interface(C):
    g = torch.Generator().manual_seed(C)
    labels = torch.randint(0, C, (N,), generator=g)
    sel, rec = PublicOnly(g), SampleRecord(labels, C, torch.device("cpu"))
    first, removed_n, back = [-1] * N, [0] * N, [0] * N
    losses, scores, prev = [[] for _ in range(N)], [math.nan] * N, [False] * N
    for epoch in range(6):
        sel.new_epoch()
        sel.removal_enabled = epoch != 4
        kept = rec.start_epoch(epoch, sel)
        removed = sel.removed_mask().tolist()
        for i in range(N):
            removed_n[i] += removed[i]
            back[i] += sel.removal_enabled and prev[i] and not removed[i]
            if removed[i] and first[i] < 0:
                first[i] = epoch
        prev = removed
        want_kept = [sum(1 for i in range(N) if labels[i] == c and not removed[i]) / max(1, int((labels == c).sum()))
                     for c in range(C)]
        np.testing.assert_allclose(kept.numpy(), want_kept)
        rec.observe_epoch(sel)
        for i in range(N):
            if not math.isnan(sel.loss[i]):
                losses[i].append(float(sel.loss[i]))
            if not math.isnan(sel.score[i]):
                scores[i] = float(sel.score[i])
    cols = rec.columns(sel)
    assert cols["first_mastered_epoch"].tolist() == first
    assert cols["epochs_removed"].tolist() == removed_n and cols["times_came_back"].tolist() == back
    mean = [np.mean(v) if v else math.nan for v in losses]
    np.testing.assert_allclose(cols["mean_loss"], np.float32(mean), rtol=1e-6)
    np.testing.assert_array_equal(cols["last_loss"], np.float32([v[-1] if v else math.nan for v in losses]))
    np.testing.assert_array_equal(cols["last_score"], np.float32(scores))
    assert sum(len(v) for v in losses) > 0


class PublicView:
    """A real selector seen through the four public members only (the table's generic path)."""

    def __init__(self, sel):
        self.sel = sel

    @property
    def removal_enabled(self):
        return self.sel.removal_enabled

    def removed_mask(self):
        return self.sel.removed_mask()

    def epoch_losses(self):
        return self.sel.epoch_losses()

    def sample_scores(self):
        return self.sel.sample_scores()


@pytest.mark.parametrize("n,order,window,backend", [(257, 2, 3, "auto"), (1000, 1, 2, "auto"), (64, 3, 4, "torch")])
def test_ies_one_pass_equals_the_public_interface(n, order, window, backend):
    """For IES the record reads its ring in one pass (native ops where built): every
    counter equals, bit for bit, what the generic path builds from epoch_losses() and
    sample_scores(), over epochs with unobserved, non-finite and repeated losses,
    removal turned off and on, and with the record's own ops in plain torch."""
    g = torch.Generator().manual_seed(n)
    sel = IES(n, delta=0.05, order=order, window=window, backend=backend)
    labels = torch.randint(0, 5, (n,), generator=g)
    fast, plain = SampleRecord(labels, 5, torch.device("cpu")), SampleRecord(labels, 5, torch.device("cpu"))
    plain.backend = "torch"
    assert samples._ring_of(sel, n) is not None and samples._ring_of(PublicView(sel), n) is None
    assert samples._ring_of(sel, n + 1) is None
    for epoch in range(12):
        sel.set_removal(epoch not in (5, 6))
        kept = [fast.start_epoch(epoch, sel), plain.start_epoch(epoch, PublicView(sel))]
        assert torch.equal(kept[0], kept[1])
        index = torch.randperm(n, generator=g)[: int(n * 0.9)].repeat(2)  # 10% unobserved, each other twice
        loss = torch.where(index < n // 2, 0.5 + 1e-4 * torch.rand(index.numel(), generator=g),  # a plateau
                           torch.rand(index.numel(), generator=g) * (1 + epoch % 3) + 0.01)
        loss[torch.rand(index.numel(), generator=g) < 0.01] = math.inf if epoch % 2 else math.nan
        sel.observe(loss, index)
        fast.observe_epoch(sel)
        plain.observe_epoch(PublicView(sel))
        sel.step()
        for name, a in fast.state_dict().items():
            b = plain.state_dict()[name]
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), (name, epoch)
    state = fast.state_dict()
    assert int((state["first_mastered"] >= 0).sum()) > 0 and int(state["came_back"].sum()) > 0
    assert int((~torch.isnan(state["last_score"])).sum()) > 0 and int((state["loss_count"] < 12).sum()) > 0


def test_train_writes_the_table_once_at_the_end(tmp_path, monkeypatch):
    calls = []
    real = loop.write_samples
    monkeypatch.setattr(loop, "write_samples", lambda cols, out: calls.append(out) or real(cols, out))
    out = str(tmp_path / "run")
    write_idx_folder(tmp_path / "idx", n_train=64, n_test=10, gz=False)
    summary = loop.train(TrainConfig(dataset="mnist", data_dir=str(tmp_path / "idx"), epochs=3, batch_size=32,
                                     eval_batch_size=64, progress=False, plot=False, device="cpu", out=out))
    assert calls == [out] and summary["epochs_run"] == 3
    cols = read_samples(os.path.join(out, "samples.parquet"))
    assert cols["index"].shape == (summary["history"][0]["num_samples"],)
    assert np.isfinite(cols["mean_loss"]).all()
