"""Zero host syncs inside a training step (issue 5's target), checked with
``torch.cuda.set_sync_debug_mode("error")``: any synchronising CUDA call inside
the step raises. Skipped without CUDA."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

import ies_fast

pytestmark = pytest.mark.gpu

NUM_SAMPLES, BATCH, FEATURES, CLASSES = 4096, 256, 64, 100


@contextmanager
def no_host_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


def setup(backend: str, dtype: torch.dtype, dev: torch.device):
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(NUM_SAMPLES, FEATURES, device=dev, generator=gen)
    y = torch.randint(0, CLASSES, (NUM_SAMPLES,), device=dev, generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 128), torch.nn.ReLU(), torch.nn.Linear(128, CLASSES))
    model = model.to(device=dev, dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sel = ies_fast.IES(NUM_SAMPLES, delta=1e-3, device=dev, backend=backend)
    batches = torch.randperm(NUM_SAMPLES, device=dev, generator=gen).split(BATCH)
    return x.to(dtype), y, model, opt, sel, batches


def train_step(model, opt, sel, x, y, idx, backend):
    logits = model(x.index_select(0, idx))
    loss = ies_fast.cross_entropy(logits, y.index_select(0, idx), idx, selector=sel, backend=backend)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def scoring_step(model, sel, x, y, idx, backend):
    xb, yb = x.index_select(0, idx), y.index_select(0, idx)
    with torch.no_grad():
        per_sample = F.cross_entropy(model(xb).float(), yb, reduction="none")
        sel.observe(per_sample, idx, scoring=True)
        ies_fast.cross_entropy(model(xb), yb, idx, selector=sel, reduction="none", scoring=True, backend=backend)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_training_steps_do_not_sync(backend, dtype):
    x, y, model, opt, sel, batches = setup(backend, dtype, torch.device("cuda"))
    train_step(model, opt, sel, x, y, batches[0], backend)  # lazy init (cuBLAS, kernels) outside the check
    scoring_step(model, sel, x, y, batches[0], backend)
    for epoch in range(2):
        with no_host_sync():
            for idx in batches:
                train_step(model, opt, sel, x, y, idx, backend)
            scoring_step(model, sel, x, y, batches[-1], backend)
        sel.step()  # epoch end: reads deferred error counters once (allowed to sync)
        with no_host_sync():
            buffer, count = sel.kept_indices_padded()  # compaction leaves the count on device
        assert buffer.device.type == "cuda" and count.device.type == "cuda"
    assert sel.stats()["observed"] == NUM_SAMPLES


def test_sync_probe_detects_a_sync():
    """The check above can fail: a host read inside the region raises."""
    t = torch.ones(4, device="cuda")
    with pytest.raises(RuntimeError):
        with no_host_sync():
            t.sum().item()
