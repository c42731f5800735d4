import os

import pytest
import torch

# Triton kernels run on CPU tensors only in interpreter mode; it must be set
# before triton is imported anywhere. On a GPU machine run the compiled kernels in
# a separate job: `TRITON_INTERPRET=0 python -m pytest -m gpu` (setdefault keeps it).
os.environ.setdefault("TRITON_INTERPRET", "1")

# tests/ mirrors the package (tests/selectors, tests/ops, ...); the shared helpers are the
# tests/_support package (importable as _support: pytest puts tests/ on sys.path for this conftest)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


class Hung(BaseException):
    """Raised by :func:`no_hang`'s alarm: not an OSError, so no ``except OSError`` swallows it."""


@pytest.fixture
def no_hang():
    """Fail (not hang) when something blocks, e.g. opening a FIFO nobody writes."""
    import signal

    def hung(signum, frame):
        raise Hung("blocked on a file")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
