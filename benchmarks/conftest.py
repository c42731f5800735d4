"""pytest-benchmark configuration for the IES suite.

``--size small`` (or ``IES_BENCH_SIZE=small``): tiny shapes that finish on a
2-core CPU (CI). ``--size gpu``: the issue's shapes; those cases carry the
``gpu`` marker and are skipped without CUDA. The default is ``gpu`` when CUDA is
present, else ``small``. ``IES_BENCH_ROUNDS`` overrides the number of timed
rounds of the long benchmarks (step, epoch), e.g. ``1`` for a smoke run.
"""
from __future__ import annotations

import os

import pytest
import torch

import benchutil


def pytest_addoption(parser):
    default = os.environ.get("IES_BENCH_SIZE") or ("gpu" if torch.cuda.is_available() else "small")
    parser.addoption(
        "--size",
        choices=benchutil.SIZES,
        default=default,
        help="benchmark sizes: 'small' (CPU, CI) or 'gpu' (the issue's shapes; skipped without CUDA)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    if config.getoption("size") not in benchutil.SIZES:
        raise pytest.UsageError(f"--size must be one of {benchutil.SIZES}")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (GPU-size benchmark)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Name the device, driver, torch and triton in the JSON's ``machine_info``."""
    machine_info["ies_bench"] = dict(benchutil.env_info(), size=config.getoption("size"))


@pytest.fixture(scope="session")
def size(request) -> str:
    return request.config.getoption("size")


@pytest.fixture(scope="session")
def dev() -> torch.device:
    return benchutil.device()


@pytest.fixture(scope="session")
def copy_gbps(dev, size) -> float:
    """The device's copy bandwidth (GB/s, read+write), measured once in this run."""
    nbytes = 2**30 if dev.type == "cuda" else 2**26
    return benchutil.copy_bandwidth(dev, nbytes)
