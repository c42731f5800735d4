"""Which implementation runs each device operation, and :func:`backend_info`.

Paths, fastest first:

* ``triton``: Triton kernels (:mod:`ies_fast.kernels`), on CUDA tensors, or on
  CPU tensors under ``TRITON_INTERPRET=1`` (tests only: slow);
* ``native``: the compiled extension ``ies_fast._C`` (C++/OpenMP on CPU, CUDA/CUB
  on GPU), when it was built at install time;
* ``torch``: plain torch ops, always available.

``auto`` picks triton on CUDA, native on CPU, and falls back to torch.
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache

import torch

BACKENDS = ("auto", "torch", "native", "triton")


@lru_cache(maxsize=None)
def native_status() -> tuple[bool, bool, str]:
    """``(cpu_built, cuda_built, message)`` for the native extension ``ies_fast._C``."""
    try:
        module = importlib.import_module("ies_fast._C")
    except Exception as exc:  # not built, or built against another torch
        return False, False, f"ies_fast._C not importable: {exc}"
    return True, bool(getattr(module, "cuda_built", lambda: False)()), "ok"


@lru_cache(maxsize=None)
def triton_status() -> tuple[bool, str]:
    """``(importable, message)`` for Triton and the package's kernels."""
    try:
        import triton  # noqa: F401

        importlib.import_module("ies_fast.kernels")
    except Exception as exc:
        return False, f"triton unavailable: {exc}"
    return True, "ok"


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_usable(device: torch.device) -> bool:
    ok, _ = triton_status()
    return ok and (device.type == "cuda" or (device.type == "cpu" and triton_interpret()))


def native_usable(device: torch.device) -> bool:
    cpu, cuda, _ = native_status()
    return (device.type == "cpu" and cpu) or (device.type == "cuda" and cuda)


def resolve(requested: str, device: torch.device, op: str = "") -> str:
    """The concrete backend for ``op`` on ``device`` given the user's ``requested`` one."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    device = torch.device(device)
    if requested == "auto":
        if device.type == "cuda" and triton_usable(device):
            return "triton"
        if native_usable(device):
            return "native"
        return "torch"
    if requested == "triton" and not triton_usable(device):
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors or TRITON_INTERPRET=1 on CPU ({triton_status()[1]}); "
            f"got device {device}"
        )
    if requested == "native" and not native_usable(device):
        raise RuntimeError(f"backend='native' is not built for {device}: {native_status()[2]}")
    return requested


def backend_info() -> dict:
    """Which paths are active in this process, and the versions they were built with."""
    cpu, cuda, native_msg = native_status()
    tri, tri_msg = triton_status()
    info = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "native_cpu": cpu,
        "native_cuda": cuda,
        "native_message": native_msg,
        "triton": tri,
        "triton_message": tri_msg,
        "triton_interpret": triton_interpret(),
        "auto_cpu": resolve("auto", torch.device("cpu")),
        "auto_cuda": resolve("auto", torch.device("cuda")) if torch.cuda.is_available() else None,
    }
    if tri:
        import triton

        info["triton_version"] = triton.__version__
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name()
    return info
