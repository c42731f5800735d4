"""Which implementation runs each device operation, and :func:`backend_info`.

Paths, fastest first:

* ``triton``: Triton kernels (:mod:`ies_fast.ops`), on CUDA tensors, or on
  CPU tensors under ``TRITON_INTERPRET=1`` (tests only: slow);
* ``native``: the compiled extension ``ies_fast._C`` (C++/OpenMP on CPU, CUDA/CUB
  on GPU), when it was built at install time;
* ``torch``: plain torch ops, always available.

``auto`` picks triton on CUDA, native on CPU, and falls back to torch.
"""
from __future__ import annotations

import importlib
import os
import warnings
from functools import lru_cache
from pathlib import Path

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


class NativeExtensionWarning(UserWarning):
    """``ies_fast._C`` is missing: the CPU ops run on plain torch (several times slower)."""


def native_fix_command() -> str:
    """The command that builds ``ies_fast._C`` for this installation."""
    root = Path(__file__).resolve().parents[1]
    source = str(root) if (root / "setup.py").is_file() and (root / "csrc").is_dir() else "<ies_fast source folder>"
    return f"pip install --no-build-isolation -e {source}"


def native_missing_message() -> str | None:
    """One line saying that ``ies_fast._C`` is missing, why, and how to build it; ``None`` when it is built."""
    cpu, _, message = native_status()
    if cpu:
        return None
    return (f"{message}; the native CPU ops are off (plain-torch fallback). Install torch first, then build with: "
            f"{native_fix_command()} (docs/native.md; IES_FAST_NO_NATIVE=1 silences this)")


_warned_native_missing = False


def warn_if_native_missing() -> None:
    """Warn once per process when ``ies_fast._C`` is missing (unless ``IES_FAST_NO_NATIVE=1``
    says that was intended): a plain ``pip install .`` builds in isolation, without torch,
    and so silently installs no extension."""
    global _warned_native_missing
    if _warned_native_missing or os.environ.get("IES_FAST_NO_NATIVE", "0") not in ("", "0"):
        return
    message = native_missing_message()
    if message is not None:
        _warned_native_missing = True
        warnings.warn(message, NativeExtensionWarning, stacklevel=2)


@lru_cache(maxsize=None)
def triton_status() -> tuple[bool, str]:
    """``(importable, message)`` for Triton and the package's kernels."""
    try:
        import triton  # noqa: F401

        for op in ("ring", "cross_entropy", "compact"):
            importlib.import_module(f"ies_fast.ops.{op}.triton")
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


def resolve_backend(requested: str, device: torch.device) -> str:
    """The concrete backend (``"torch"``, ``"native"`` or ``"triton"``) every op runs on
    on ``device``, given the user's ``requested`` one (``"auto"`` picks)."""
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
        "native_fix": None if cpu else native_fix_command(),
        "triton": tri,
        "triton_message": tri_msg,
        "triton_interpret": triton_interpret(),
        "auto_cpu": resolve_backend("auto", torch.device("cpu")),
        "auto_cuda": resolve_backend("auto", torch.device("cuda")) if torch.cuda.is_available() else None,
    }
    if tri:
        import triton

        info["triton_version"] = triton.__version__
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name()
    return info
