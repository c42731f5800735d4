"""``IES.step()`` (close the epoch: fold in the losses, Δ^N test, new mastered set)
for each available backend, and a Python-loop implementation for scale.

Each timed round is preceded (untimed) by one epoch of observations for every
sample, half of them on a plateau so the mastered set is non-trivial. The
Python loop is timed at the size named in its result (``N``), never extrapolated.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import benchutil
from ies_fast import IES, backend
from python_loop import PythonLoopIES

BACKENDS = ("torch", "native", "triton")
SIZES = {"smoke": (4096,), "small": (50_000, 1_280_000), "gpu": (1_280_000, 10_000_000)}
LOOP_SIZES = {"smoke": (1024,), "small": (50_000,), "gpu": (1_280_000,)}
ROUNDS = {"smoke": 1, "small": 5, "gpu": 20}
DELTA = 1e-3


def pytest_generate_tests(metafunc):
    size = metafunc.config.getoption("size")
    marks = benchutil.size_marks(size)
    if "step_case" in metafunc.fixturenames:
        metafunc.parametrize(
            "step_case",
            [pytest.param((b, n), id=f"{b}-N{n}", marks=marks) for n in SIZES[size] for b in BACKENDS],
        )
    if "loop_n" in metafunc.fixturenames:
        metafunc.parametrize("loop_n", [pytest.param(n, id=f"N{n}", marks=marks) for n in LOOP_SIZES[size]])


def backend_unavailable(name: str, dev: torch.device, n: int):
    if name == "native" and not backend.native_usable(dev):
        return f"native extension not built for {dev.type}"
    if name == "triton":
        if importlib.util.find_spec("ies_fast.ops.ring.triton") is None:
            return "ies_fast.ops.ring.triton not present yet"
        if not backend.triton_usable(dev):
            return "Triton needs CUDA here (on CPU only under TRITON_INTERPRET=1)"
        if dev.type == "cpu" and n > 50_000:
            return "interpreted Triton: only the smallest size"
    return None


def epoch_losses(n: int, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
    """Half the samples sit on a plateau (|Δ| ~ 1e-5 < δ), half jump around."""
    noise = torch.rand(n, device=dev, generator=gen)
    settled = 0.5 + noise * 1e-5
    moving = noise * 2 + 0.1
    return torch.where(torch.arange(n, device=dev) % 2 == 0, settled, moving)


def test_step(benchmark, step_case, dev, size):
    name, n = step_case
    why = backend_unavailable(name, dev, n)
    if why:
        pytest.skip(why)
    sel = IES(n, delta=DELTA, device=dev, backend=name)
    gen = torch.Generator(device=dev).manual_seed(n)
    index = torch.arange(n, device=dev)
    def observe_epoch():
        sel.observe(epoch_losses(n, gen, dev), index)
        benchutil.sync(dev)

    for _ in range(sel.history_length):  # fill the ring: everyone eligible
        observe_epoch()
        sel.step()

    def step():
        sel.step()
        benchutil.sync(dev)

    benchmark.pedantic(step, setup=observe_epoch, rounds=benchutil.rounds(ROUNDS[size]), warmup_rounds=1)
    benchutil.attach(benchmark, bench="step", variant=f"IES.step[{name}]", N=n, mastered=int(sel.mastered.sum()),
                     device=benchutil.env_info()["device"], **benchutil.timing(benchmark))


def test_python_loop_step(benchmark, loop_n, size):
    """Per-sample Python loop (CPU, whatever the device), timed at ``loop_n`` samples."""
    rng = np.random.default_rng(loop_n)
    ref = PythonLoopIES(loop_n, delta=DELTA)
    indices = list(range(loop_n))
    def observe_epoch():
        noise = rng.random(loop_n)
        settled = 0.5 + noise * 1e-5
        losses = np.where(np.arange(loop_n) % 2 == 0, settled, noise * 2 + 0.1).tolist()
        ref.observe(losses, indices)

    for _ in range(ref.order + ref.window):
        observe_epoch()
        ref.step()

    rounds = benchutil.rounds(3 if loop_n <= 100_000 else 1)
    benchmark.pedantic(ref.step, setup=observe_epoch, rounds=rounds)
    benchutil.attach(benchmark, bench="step", variant="python_loop", N=loop_n, mastered=len(ref.mastered),
                     device=benchutil.env_info()["cpu"] + " (Python)", **benchutil.timing(benchmark))


def state_bytes(sel: IES) -> dict:
    """Bytes per sample of the selector's device state, and with the kept-index buffer."""
    per_sample = sum(t.numel() * t.element_size() for t in (sel.hist, sel.count, sel.mastered)) / sel.num_samples
    buffer, count = sel.kept_indices_padded()
    with_list = per_sample + buffer.numel() * buffer.element_size() / sel.num_samples
    return {"state_bytes_per_sample": per_sample, "with_kept_buffer_bytes_per_sample": with_list}


def test_selector_memory(benchmark, step_case, dev):
    """Device memory of the selector (tensor sizes: the same layout on every device),
    timing ``kept_indices_padded()`` (compaction through the selector) on the way."""
    name, n = step_case
    why = backend_unavailable(name, dev, n)
    if why:
        pytest.skip(why)
    sel = IES(n, delta=DELTA, device=dev, backend=name)
    sel.mastered.copy_(torch.rand(n, device=dev) < 0.4)

    def build():
        sel._invalidate()
        sel.kept_indices_padded()
        benchutil.sync(dev)

    benchmark(build)
    benchutil.attach(benchmark, bench="memory", variant=f"IES[{name}]", N=n, order=sel.order, window=sel.window,
                     device=benchutil.env_info()["device"], **state_bytes(sel), **benchutil.timing(benchmark))
