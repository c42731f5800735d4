"""The native extension is never dropped silently (issue 11, point 9): a CUDA torch
with no visible GPU still gets an architecture list, a failing CUDA part leaves the
CPU ops built, and a missing ``ies_fast._C`` is announced once at import and by
``ies-fast info``."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from setuptools import Extension
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ies_native_build", ROOT / "native_build.py")
native_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native_build)


# ---- no visible GPU: an architecture list all the same ---------------------------------


@pytest.fixture
def cuda_torch_without_gpu(monkeypatch, tmp_path):
    """This CPU torch dressed as a CUDA build (built for sm_80, sm_86, sm_120) in a
    container that sees no GPU, with a CUDA toolkit folder."""
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    for name in ("IES_FAST_NO_NATIVE", "IES_FAST_NO_CUDA", "IES_FAST_REQUIRE_NATIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getArchFlags", lambda: "sm_80 sm_86 sm_120", raising=False)
    (tmp_path / "lib64").mkdir()
    (tmp_path / "include").mkdir()
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path))


def _nvcc_flags(ext) -> list[str]:
    return ext.extra_compile_args["nvcc"]


def test_no_visible_gpu_compiles_for_torchs_archs_and_sm80_sm90(cuda_torch_without_gpu):
    with pytest.raises(IndexError):  # what torch itself does here: the whole _C was lost
        cpp_extension._get_cuda_arch_flags([])
    (ext,), _ = native_build.native_extension_and_cmdclass(str(ROOT))
    assert any(src.endswith(".cu") for src in ext.sources)
    flags = _nvcc_flags(ext)
    for num in ("80", "86", "90", "120"):
        assert f"-gencode=arch=compute_{num},code=sm_{num}" in flags
    assert "-gencode=arch=compute_120,code=compute_120" in flags  # PTX of the newest, for later GPUs
    assert cpp_extension._get_cuda_arch_flags(flags) == []  # torch keeps ours and no longer raises


def test_arch_list_left_to_torch_when_it_can_choose(cuda_torch_without_gpu, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert native_build.cuda_arch_flags(torch) == []
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert native_build.cuda_arch_flags(torch) == []


def test_arch_list_without_torch_arch_flags_is_sm80_sm90(cuda_torch_without_gpu, monkeypatch):
    monkeypatch.setattr(torch._C, "_cuda_getArchFlags", lambda: "", raising=False)
    assert native_build.cuda_arch_flags(torch) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]


# ---- a failing CUDA part: the CPU ops are built alone ----------------------------------


class FakeBuildExtension:
    """Stands in for torch's BuildExtension: any ``.cu`` source fails to compile."""

    def __init__(self, cpu_fails: bool = False):
        self.cpu_fails = cpu_fails
        self.built = []

    @classmethod
    def with_options(cls, **_):
        return cls

    def build_extension(self, ext):
        if any(src.endswith(".cu") for src in ext.sources):
            raise RuntimeError("nvcc: error: unsupported gpu architecture")
        if self.cpu_fails:
            raise RuntimeError("g++: internal compiler error")
        self.built.append((list(ext.sources), ext.extra_compile_args, list(ext.libraries)))


def _cuda_extension() -> Extension:
    return Extension(
        "ies_fast._C",
        sources=["csrc/ops_cpu.cpp", "csrc/ops_cuda.cu"],
        extra_compile_args={"cxx": ["-O3", "-fopenmp", "-DIES_FAST_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C"],
                            "nvcc": ["-O3", "-DIES_FAST_WITH_CUDA"]},
        libraries=["c10", "torch", "cudart", "c10_cuda", "torch_cuda"],
    )


def _tolerant(cpu_fails=False):
    cls = native_build._tolerant_build_ext(FakeBuildExtension)
    return cls(cpu_fails=cpu_fails)


def test_failing_cuda_part_builds_the_cpu_ops_alone(monkeypatch, capsys):
    monkeypatch.delenv("IES_FAST_REQUIRE_NATIVE", raising=False)
    build = _tolerant()
    build.build_extension(_cuda_extension())
    assert build.built == [(
        ["csrc/ops_cpu.cpp"],
        {"cxx": ["-O3", "-fopenmp", "-DTORCH_EXTENSION_NAME=_C"]},
        ["c10", "torch", "c10_cuda", "torch_cuda"],
    )]
    err = capsys.readouterr().err
    assert "CUDA part of ies_fast._C failed" in err and "unsupported gpu architecture" in err


def test_cpu_part_failing_too_is_a_warning(monkeypatch, capsys):
    monkeypatch.delenv("IES_FAST_REQUIRE_NATIVE", raising=False)
    build = _tolerant(cpu_fails=True)
    build.build_extension(_cuda_extension())
    assert build.built == []
    assert "internal compiler error" in capsys.readouterr().err


def test_require_native_makes_a_cuda_failure_an_error(monkeypatch):
    monkeypatch.setenv("IES_FAST_REQUIRE_NATIVE", "1")
    with pytest.raises(RuntimeError, match="unsupported gpu architecture"):
        _tolerant().build_extension(_cuda_extension())


# ---- a missing _C is announced -----------------------------------------------------------

#: run in a fresh interpreter where ``import ies_fast._C`` fails, as after ``pip install .``
WITHOUT_C = "import sys; sys.modules['ies_fast._C'] = None\n"


def _python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "IES_FAST_NO_NATIVE"}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=300)


COUNT_WARNINGS = WITHOUT_C + """
import warnings
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    import ies_fast
    import ies_fast.backend
    ies_fast.backend.warn_if_native_missing()
    import ies_fast.selectors.ies
mine = [str(w.message) for w in seen if w.category.__name__ == "NativeExtensionWarning"]
print(len(mine))
print(mine[0] if mine else "")
"""


def test_import_warns_once_with_the_fix_when_C_is_missing():
    done = _python(COUNT_WARNINGS)
    assert done.returncode == 0, done.stderr
    count, message = done.stdout.splitlines()[:2]
    assert count == "1"
    assert "ies_fast._C" in message and f"pip install --no-build-isolation -e {ROOT}" in message


def test_no_warning_when_C_is_built_or_opted_out():
    if not importlib.util.find_spec("ies_fast._C"):
        pytest.skip("ies_fast._C is not built here")
    built = _python(COUNT_WARNINGS.replace(WITHOUT_C, ""))
    assert built.returncode == 0, built.stderr
    assert built.stdout.splitlines()[0] == "0"
    opted_out = _python(COUNT_WARNINGS, IES_FAST_NO_NATIVE="1")
    assert opted_out.returncode == 0, opted_out.stderr
    assert opted_out.stdout.splitlines()[0] == "0"


def test_info_says_C_is_missing_and_how_to_build_it():
    done = _python(WITHOUT_C + "from ies_fast.app.cli import main; raise SystemExit(main(['info']))")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["native_cpu"] is False and info["native_cuda"] is False
    assert info["native_fix"] == f"pip install --no-build-isolation -e {ROOT}"
    assert "NativeExtensionWarning" in done.stderr


def test_readme_says_what_build_isolation_does():
    readme = (ROOT / "README.md").read_text()
    assert "would download a multi-GB CUDA build" not in readme  # what it used to claim, wrongly
    start = readme.index("`--no-build-isolation` is required")
    paragraph = readme[start:readme.index("\n\n", start)]
    assert "without `ies_fast._C`" in paragraph and "warns" in paragraph and "ies-fast info" in paragraph
