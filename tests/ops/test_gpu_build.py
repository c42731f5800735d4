"""GPU code that has never run must at least compile: every ``csrc/*.cu`` with nvcc
and every Triton launch the dispatch can make, ahead of time to sm_80 and sm_90
cubins (the cross-entropy tile sweep, one launch per tile, to sm_80 only: the arch
whose spills shaped the tiles; ``python tools/gpu_resources.py --check`` compiles it
for both), with no spills and no local memory at the default history lengths
(``tools/gpu_resources.py`` does the work; no GPU is needed). The nvcc half skips,
saying why, only where nvcc is absent; Triton brings its own ptxas."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ies_gpu_resources", ROOT / "tools" / "gpu_resources.py")
gpu = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gpu  # its dataclasses look their module up there
_spec.loader.exec_module(gpu)

NVCC = gpu.find_nvcc()
SWEEP_ARCH = 80  # the tile sweep's arch here (a third less compile time than both)
NO_NVCC = "nvcc not found (set CUDA_HOME or put nvcc on PATH): csrc/*.cu not compiled"


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Every compilation's ptxas report, from one run of the tool (both archs)."""
    out = tmp_path_factory.mktemp("gpu_build") / "resources.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_resources.py"), "--json", str(out), "--jobs", "2",
           "--tile-sweep-archs", str(SWEEP_ARCH)]
    if NVCC is None:
        print(NO_NVCC)
        cmd.append("--no-cuda")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [gpu.Usage(**{k: v for k, v in r.items() if k != "clean"}) for r in json.loads(out.read_text())]


def _problems(rows) -> str:
    return "\n".join(gpu.failures(rows))


@pytest.mark.skipif(NVCC is None, reason=NO_NVCC)
def test_cuda_sources_compile_for_sm80_sm90_without_spills(rows):
    cuda = [r for r in rows if r.source == "cuda"]
    assert not _problems(cuda), _problems(cuda)
    for src in sorted(p.name for p in (ROOT / "csrc").glob("*.cu")):
        for arch in gpu.ARCHS:
            kernels = {r.kernel.split("::")[-1].split("<")[0] for r in cuda if r.config == src and r.arch == arch}
            assert {"record_kernel", "close_epoch_kernel"} <= kernels, (src, arch, kernels)


def test_every_triton_launch_compiles_for_sm80_sm90_without_spills(rows):
    tri = [r for r in rows if r.source == "triton"]
    assert not _problems(tri), _problems(tri)
    by_config: dict = {}
    for r in tri:
        by_config.setdefault((r.kernel, r.config, r.tile_sweep), set()).add(r.arch)
    assert all(archs == ({SWEEP_ARCH} if sweep else set(gpu.ARCHS)) for (_, _, sweep), archs in by_config.items())
    assert sum(sweep for _, _, sweep in by_config) >= 60  # the sweep: every tile
    kernels = {k for k, _, _ in by_config}
    assert {"_ce_forward_kernel", "_ce_backward_kernel", "_close_epoch_kernel"} <= kernels
    # every (rows, columns, warps) tile of the CE dispatch, seen through the launches
    from_launches = {c.split(" warps=")[0].split("BLOCK_B=")[1] + " w" + c.split(" warps=")[1].split()[0]
                     for k, c, _ in by_config if k == "_ce_forward_kernel"}
    assert len(from_launches) >= 60, sorted(from_launches)
    # the ring kernels at each default history length (order 0..3, window 3)
    ring_lengths = {m.group(1) for k, c, _ in by_config if k == "_close_epoch_kernel"
                    for m in [re.search(r"(?:^| )L=(\d+)", c)] if m}
    assert ring_lengths >= {"3", "4", "5", "6"}


# ---- the pieces, on known input: each check can fail ----------------------------------------

PTXAS_LOG = """\
ptxas info    : 29 bytes gmem, 232 bytes cmem[4]
ptxas info    : Compiling entry function '_ZN8ies_fast12_GLOBAL__N_118close_epoch_kernelEPfPhPbliifPy' for 'sm_80'
ptxas info    : Function properties for _ZN8ies_fast12_GLOBAL__N_118close_epoch_kernelEPfPhPbliifPy
    512 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 512 bytes cumulative stack size, 48 bytes smem, 408 bytes cmem[0]
ptxas info    : Compiling entry function '_fwd' for 'sm_90a'
ptxas info    : Function properties for _fwd
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 87 registers, used 1 barriers
"""


def test_parse_ptxas_reads_stack_spills_registers_smem():
    first, second = gpu.parse_ptxas(PTXAS_LOG)
    assert first["arch"] == 80 and first["registers"] == 32 and first["smem"] == 48
    assert (first["stack"], first["spill_stores"], first["spill_loads"]) == (512, 8, 4)
    assert second == dict(name="_fwd", arch=90, registers=87, spill_stores=0, spill_loads=0, stack=0, smem=0)
    assert gpu.short_name(first["name"]).endswith("close_epoch_kernel")


def test_gate_reports_local_memory_spills_and_errors_but_not_long_histories():
    rows = [
        gpu.Usage("cuda", "k", "a.cu", 90, stack=512),
        gpu.Usage("triton", "t", "L=5", 80, spill_stores=64),
        gpu.Usage("triton", "t", "L=120", 90, gated=False, spill_stores=64),
        gpu.Usage("triton", "u", "x", 90, error="CompilationError: boom"),
        gpu.Usage("triton", "v", "y", 90, registers=255),
    ]
    problems = gpu.failures(rows)
    assert len(problems) == 3
    assert "512 B local memory" in problems[0] and "64 B spill stores" in problems[1]
    assert "does not compile" in problems[2]


def test_write_docs_replaces_only_the_generated_block(tmp_path):
    doc = tmp_path / "kernels.md"
    doc.write_text("# Kernels\n\nintro\n")
    gpu.write_docs(doc, "table one")
    gpu.write_docs(doc, "table two")
    text = doc.read_text()
    assert text.startswith("# Kernels\n\nintro\n") and "table two" in text and "table one" not in text
    assert text.count(gpu.DOC_BEGIN) == 1


def test_docs_hold_the_generated_table_for_every_kernel(rows):
    text = (ROOT / "docs" / "kernels.md").read_text()
    assert gpu.DOC_BEGIN in text and gpu.DOC_END in text
    block = text[text.index(gpu.DOC_BEGIN):text.index(gpu.DOC_END)]
    missing = {r.kernel for r in rows if f"`{r.kernel}`" not in block}
    assert not missing, f"regenerate: python tools/gpu_resources.py --write-docs docs/kernels.md ({missing})"
