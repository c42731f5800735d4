"""End-to-end epoch time: ResNet-18 (CIFAR variant) on CIFAR-shaped synthetic data.

For each loader (torch, DALI) and batch size, in one run:

* F, B, F_score: forward (train mode), backward, and no-grad forward (eval mode,
  the scoring pass's mode here) seconds per sample, the median over a few
  device-resident batches of the same size;
* the epoch time at kept fraction k, with the mastered set forced
  (``sel.mastered`` set directly): k = 1.0 is the baseline (plain
  ``F.cross_entropy``, no selector, all samples); k < 1 trains on the kept samples
  through ``ies_fast.cross_entropy(..., selector=sel)``, then runs the forward-only
  scoring pass over the mastered ones, then ``sel.step()``;
* speedup = T(1.0) / T(k), ideal = ``1 / (k + (1 - k) * F_score / (F + B))``,
  efficiency = speedup / ideal, from median epoch times (and ``*_min`` from the
  fastest rounds, the uncontended figure on a shared machine).

``IES_BENCH_SAMPLES`` overrides the number of samples (the smoke test makes it tiny).
"""
from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F

import benchutil
import ies_fast
from epoch_loaders import DaliLoader, IndexListSampler, TorchLoader, dali_available, kept_sampler, synthetic_cifar
from resnet_cifar import resnet18

SIZES = {
    "smoke": dict(samples=64, batches=(32,), kept=(1.0, 0.5), cost_batches=1, rounds=1),
    "small": dict(samples=256, batches=(64,), kept=(1.0, 0.6, 0.3), cost_batches=3, rounds=3),
    "gpu": dict(samples=50_000, batches=(64, 512), kept=(1.0, 0.6, 0.5, 0.3), cost_batches=20, rounds=2),
}
LOADERS = ("torch", "dali")
_workloads: dict = {}
_baseline: dict = {}


def config(size: str) -> dict:
    cfg = dict(SIZES[size])
    if os.environ.get("IES_BENCH_SAMPLES"):
        cfg["samples"] = int(os.environ["IES_BENCH_SAMPLES"])
    return cfg


def pytest_generate_tests(metafunc):
    if "epoch_case" not in metafunc.fixturenames:
        return
    size = metafunc.config.getoption("size")
    cfg = config(size)
    metafunc.parametrize(
        "epoch_case",
        [
            pytest.param((loader, batch, k), id=f"{loader}-B{batch}-k{k}", marks=benchutil.size_marks(size))
            for loader in LOADERS
            for batch in cfg["batches"]
            for k in cfg["kept"]  # 1.0 first: the baseline the others are divided by
        ],
    )


class Workload:
    """Model, optimiser, data and loader for one (loader, batch) pair, plus F, B, F_score."""

    def __init__(self, loader: str, batch: int, cfg: dict, dev: torch.device):
        torch.manual_seed(0)
        self.dev, self.batch, self.samples = dev, batch, cfg["samples"]
        self.model, self.model_source = resnet18(num_classes=10)
        self.model.to(dev)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        images, labels = synthetic_cifar(self.samples)
        cls = TorchLoader if loader == "torch" else DaliLoader
        self.loader = cls(images, labels, batch, dev)
        self.costs = self.measure_costs(cfg["cost_batches"])

    def _time(self, fn) -> float:
        benchutil.sync(self.dev)
        t0 = time.perf_counter()
        fn()
        benchutil.sync(self.dev)
        return time.perf_counter() - t0

    def measure_costs(self, batches: int) -> dict:
        x = torch.randn(self.batch, 3, 32, 32, device=self.dev)
        y = torch.randint(0, 10, (self.batch,), device=self.dev)
        fwd, bwd, score = [], [], []
        for i in range(batches + 1):  # the first round warms up (allocator, cuDNN) and is dropped
            self.model.train()
            out = {}
            f = self._time(lambda: out.setdefault("loss", F.cross_entropy(self.model(x), y)))
            b = self._time(lambda: out["loss"].backward())
            self.model.zero_grad(set_to_none=True)
            self.model.eval()
            with torch.no_grad():
                s = self._time(lambda: self.model(x))
            if i:
                fwd.append(f), bwd.append(b), score.append(s)
        self.model.train()
        median = lambda xs: float(torch.tensor(xs).median()) / self.batch  # robust to a busy machine
        return {"F": median(fwd), "B": median(bwd), "F_score": median(score)}

    def train_batch(self, x, y, idx, sel) -> None:
        out = self.model(x)
        loss = F.cross_entropy(out, y) if sel is None else ies_fast.cross_entropy(out, y, idx, selector=sel)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def epoch(self, sel, plain_sel) -> None:
        """One epoch; ``sel=None`` is the baseline (no selector, every sample)."""
        sampler, self.sampler_impl = kept_sampler(sel if sel is not None else plain_sel, seed=0)
        self.model.train()
        for x, y, idx in self.loader.epoch(sampler):
            self.train_batch(x, y, idx, sel)
        if sel is not None and sel.needs_scoring():
            mastered = sel.scoring_mask().nonzero().squeeze(1)  # once per epoch
            if mastered.numel():
                self.model.eval()
                with torch.no_grad():
                    for x, y, idx in self.loader.epoch(IndexListSampler(mastered)):
                        ies_fast.cross_entropy(self.model(x), y, idx, selector=sel, reduction="none", scoring=True)
                self.model.train()
            sel.step()
        benchutil.sync(self.dev)


def workload(loader: str, batch: int, size: str, dev: torch.device) -> Workload:
    key = (loader, batch, size)
    if key not in _workloads:
        _workloads.clear()  # one model in memory at a time
        _workloads[key] = Workload(loader, batch, config(size), dev)
    return _workloads[key]


def test_epoch(benchmark, epoch_case, dev, size):
    loader, batch, k = epoch_case
    if loader == "dali" and not dali_available():
        pytest.skip("nvidia-dali not installed")
    cfg = config(size)
    wl = workload(loader, batch, size, dev)
    n = wl.samples
    num_mastered = int(round((1.0 - k) * n))
    plain_sel = ies_fast.IES(n, device=dev)  # nothing mastered: the baseline's sampler
    sel = None if k == 1.0 else ies_fast.IES(n, device=dev)
    gen = torch.Generator().manual_seed(batch)

    def force_kept_fraction():
        if sel is not None:
            forced = torch.zeros(n, dtype=torch.bool)
            forced[torch.randperm(n, generator=gen)[:num_mastered]] = True
            sel.mastered.copy_(forced.to(dev))
            sel._invalidate()  # the kept list is rebuilt from the forced mask

    benchmark.pedantic(lambda: wl.epoch(sel, plain_sel), setup=force_kept_fraction,
                       rounds=benchutil.rounds(cfg["rounds"]), warmup_rounds=1 if dev.type == "cuda" else 0)
    times = benchutil.timing(benchmark)
    kept = (n - num_mastered) / n
    c = wl.costs
    ideal = 1.0 / (kept + (1.0 - kept) * c["F_score"] / (c["F"] + c["B"]))
    fields = dict(
        bench="epoch", variant=f"{loader}-B{batch}", loader=loader, loader_impl=wl.sampler_impl, batch=batch,
        kept_fraction=kept, N=n, model=wl.model_source, F_s=c["F"], B_s=c["B"], F_score_s=c["F_score"],
        ideal_speedup=ideal, device=benchutil.env_info()["device"],
    )
    fields.update(times)
    if times:
        if k == 1.0:
            _baseline[(loader, batch, size)] = times
        base = _baseline.get((loader, batch, size))
        if base is not None:
            speedup, speedup_min = base["time_s"] / times["time_s"], base["time_min_s"] / times["time_min_s"]
            fields.update(speedup=speedup, efficiency=speedup / ideal,
                          speedup_min=speedup_min, efficiency_min=speedup_min / ideal)
    benchutil.attach(benchmark, **fields)
