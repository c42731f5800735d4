"""Shared helpers for the benchmark suite: the machine description, device sync,
copy bandwidth, the host-sync probe, and turning pytest-benchmark's stats into
per-operation figures stored in ``extra_info``."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from functools import lru_cache
from typing import Callable, Optional

import torch

#: "smoke": the smallest shapes, for the suite's in-process check that every benchmark runs;
#: "small": CPU-sized figures; "gpu": the issue's shapes (skipped without CUDA)
SIZES = ("smoke", "small", "gpu")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> Optional[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except Exception:
        return None


@lru_cache(maxsize=None)
def env_info() -> dict:
    """Device, driver and library versions, written into every result file."""
    info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    try:
        import ies_fast

        b = ies_fast.backend_info()
        info["ies_fast"] = ies_fast.__version__
        info["native_cpu"] = b["native_cpu"]
        info["native_cuda"] = b["native_cuda"]
    except Exception as exc:  # the suite still runs the torch baselines
        info["ies_fast"] = f"unavailable: {exc}"
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["driver"] = _nvidia_driver()
        props = torch.cuda.get_device_properties(0)
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
    else:
        info["device"] = f"CPU: {info['cpu']} ({info['cpu_count']} cores)"
        info["driver"] = None
    return info


def copy_bandwidth(dev: torch.device, nbytes: int, repeats: int = 5) -> float:
    """Best measured bandwidth, GB/s, of ``dst.copy_(src)`` on ``dev``, counting the
    bytes read plus the bytes written (2·nbytes), as a kernel's bytes moved are."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(dev)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(dev)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def host_sync_flag(fn: Callable[[], object], dev: torch.device) -> Optional[bool]:
    """On CUDA: whether one call of ``fn`` synchronises with the host, as reported by
    ``torch.cuda.set_sync_debug_mode("error")``. ``None`` on CPU (not applicable)."""
    if dev.type != "cuda":
        return None
    sync(dev)
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        synced = False
    except RuntimeError as exc:
        if "synchroniz" not in str(exc).lower():
            raise
        synced = True
    finally:
        torch.cuda.set_sync_debug_mode(0)
    sync(dev)
    return synced


def timing(benchmark, reps: int = 1) -> dict:
    """``{"time_s": median, "time_min_s": min}`` seconds of one operation (``reps``
    operations per timed call); empty under ``--benchmark-disable``. Derived
    figures use the median (never flattering); the min shows the uncontended
    time on a shared machine."""
    stats = getattr(benchmark, "stats", None)
    if not stats:
        return {}
    return {"time_s": stats.stats.median / reps, "time_min_s": stats.stats.min / reps}


def reps_for(dev: torch.device, estimate_s: float, target_s: float = 2e-3, cap: int = 200) -> int:
    """Operations per timed call on CUDA, so one call lasts about ``target_s`` and the
    sync at its end is amortised; 1 on CPU (a CPU call is synchronous)."""
    if dev.type != "cuda":
        return 1
    return int(max(1, min(cap, target_s / max(estimate_s, 1e-7))))


def attach(benchmark, **fields) -> None:
    """Add fields to the result's ``extra_info`` (floats rounded for the JSON), with
    the device, driver, torch and triton versions on every result."""
    env = env_info()
    fields = {"device": env["device"], "driver": env["driver"], "torch": env["torch"], "triton": env["triton"], **fields}
    for key, value in fields.items():
        benchmark.extra_info[key] = round(value, 9) if isinstance(value, float) else value


def skip_unless_fits(dev: torch.device, needed_bytes: int, fraction: float = 0.8) -> None:
    """Skip a GPU case that cannot fit in free device memory (never silently shrink it)."""
    import pytest

    if dev.type != "cuda":
        return
    torch.cuda.empty_cache()  # what earlier cases left in the caching allocator counts as free
    free, _ = torch.cuda.mem_get_info()
    if needed_bytes > fraction * free:
        pytest.skip(f"needs ~{needed_bytes / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")


def size_marks(size: str) -> list:
    """Marks for a parametrised case of the given size: GPU sizes skip without CUDA."""
    import pytest

    return [pytest.mark.gpu] if size == "gpu" else []


def rounds(default: int) -> int:
    """Timed rounds for the long benchmarks (step, epoch), overridable by ``IES_BENCH_ROUNDS``."""
    value = os.environ.get("IES_BENCH_ROUNDS")
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"IES_BENCH_ROUNDS must be a positive integer, got {value!r}")
    return int(value)
