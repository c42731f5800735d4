"""Compile Triton kernels for sm_90 without a GPU (shared by the kernel tests)."""
import os
import subprocess
import sys
from pathlib import Path


def compile_for_sm90(tmp_path, body: str) -> None:
    """Compile kernels for an H100 (sm_90: TTIR -> PTX -> cubin with Triton's bundled
    ptxas) in a fresh process without TRITON_INTERPRET: catches what only the
    compiler rejects (e.g. a non-constexpr static_range bound)."""
    prelude = (
        "import triton\n"
        "from triton.compiler import ASTSource\n"
        "from triton.backends.compiler import GPUTarget\n"
        "def build(fn, sig, consts, warps=4):\n"
        "    src = ASTSource(fn, {**sig, **{k: 'constexpr' for k in consts}}, consts)\n"
        "    triton.compile(src, target=GPUTarget('cuda', 90, 32), options={'num_warps': warps})\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", prelude + body], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
