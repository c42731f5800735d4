"""Compaction: keep mask -> ascending index list (+ count), and whether it syncs.

Variants: ``triton`` (``ies_fast.ops.compact.triton.compact_triton``), ``native``
(``torch.ops.ies_fast.compact``: CUB on CUDA, C++ on CPU, where built),
``nonzero`` (``torch.nonzero``: sizes its output on the host, so it syncs) and
``torch_cumsum`` (``ies_fast.ops.compact.reference.compact_torch``, the fallback), and
``kept_indices`` (``IES.kept_indices()`` end to end on the device's default
backend: keep mask, compaction, the sized list; it reads the count). The
host-sync flag is measured on CUDA with ``torch.cuda.set_sync_debug_mode("error")``
around one call; on CPU it does not apply and is recorded as ``None``.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

import benchutil
from ies_fast import backend
from ies_fast.ops.compact.reference import compact_torch

VARIANTS = ("triton", "native", "nonzero", "torch_cumsum", "kept_indices")
SIZES = {"smoke": (4096,), "small": (50_000, 1_280_000), "gpu": (50_000, 1_280_000, 10_000_000)}
KEPT = 0.6


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    size = metafunc.config.getoption("size")
    metafunc.parametrize(
        "case",
        [
            pytest.param((variant, n), id=f"{variant}-N{n}", marks=benchutil.size_marks(size))
            for n in SIZES[size]
            for variant in VARIANTS
        ],
    )


def nonzero_compact(mask):
    idx = torch.nonzero(mask.reshape(-1)).squeeze(1)
    return idx, idx.numel()


def selector_kept_indices(n: int, dev: torch.device):
    """``mask -> (IES.kept_indices(), count)`` for a selector whose kept mask is ``mask``
    (set once per mask; each call rebuilds the list from the mask)."""
    from ies_fast import IES

    sel = IES(n, device=dev)
    current = {}

    def fn(mask):
        if current.get("mask") is not mask:
            sel.mastered.copy_(~mask)
            current["mask"] = mask
        sel._invalidate()
        idx = sel.kept_indices()
        return idx, idx.numel()

    return fn


def implementation(variant: str, dev: torch.device, n: int):
    """``(callable, None)`` or ``(None, reason to skip)``."""
    if variant == "kept_indices":
        return selector_kept_indices(n, dev), None
    if variant == "triton":
        if importlib.util.find_spec("ies_fast.ops.compact.triton") is None:
            return None, "ies_fast.ops.compact.triton not present yet"
        if not backend.triton_usable(dev):
            return None, "Triton needs CUDA here (on CPU only under TRITON_INTERPRET=1)"
        if dev.type == "cpu" and n > 50_000:
            return None, "interpreted Triton: only the smallest size"
        from ies_fast.ops.compact.triton import compact_triton

        return compact_triton, None
    if variant == "native":
        if not backend.native_usable(dev):
            return None, f"native extension not built for {dev.type}"
        return torch.ops.ies_fast.compact, None
    if variant == "nonzero":
        return nonzero_compact, None
    return compact_torch, None


def test_compaction(benchmark, case, dev, copy_gbps):
    variant, n = case
    fn, why = implementation(variant, dev, n)
    if fn is None:
        pytest.skip(why)
    gen = torch.Generator(device=dev).manual_seed(n)
    mask = torch.rand(n, device=dev, generator=gen) < KEPT

    idx, count = fn(mask)  # warm-up, and a check that the benchmark times a correct result
    expected = torch.nonzero(mask).squeeze(1)
    k = int(count)
    assert k == expected.numel() and torch.equal(idx[:k].long(), expected), f"{variant} compaction is wrong"

    host_sync = benchutil.host_sync_flag(lambda: fn(mask), dev)
    reps = benchutil.reps_for(dev, 2e-5 + n * 9 / (copy_gbps * 1e9))

    def run():
        for _ in range(reps):
            fn(mask)
        benchutil.sync(dev)

    benchmark(run)
    benchutil.attach(benchmark, **benchutil.timing(benchmark, reps))
    benchutil.attach(benchmark, bench="compaction", variant=variant, N=n, kept_fraction=KEPT, reps=reps,
                     host_sync=host_sync, device=benchutil.env_info()["device"])
