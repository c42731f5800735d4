"""Build rules for the optional native extension ``ies_fast._C`` (sources in ``csrc/``).

``setup.py`` calls :func:`native_extension_and_cmdclass`. The extension holds the
C++/OpenMP CPU ops, plus the CUDA/CUB ops when torch is a CUDA build and a CUDA
toolkit is found. A failed compile only prints a warning (the package then runs
on its Triton / plain-torch paths) unless ``IES_FAST_REQUIRE_NATIVE=1``.

Environment switches:

* ``IES_FAST_NO_NATIVE=1``: build no extension at all;
* ``IES_FAST_NO_CUDA=1``: build the CPU ops only, even where CUDA is available;
* ``IES_FAST_REQUIRE_NATIVE=1``: a missing torch or a compile error fails the install.

Two fallbacks keep the CPU ops when the CUDA part cannot be built:

* with a CUDA torch but no visible GPU (a Docker or CI build) torch's own arch
  list is empty (it raises ``IndexError``); :func:`cuda_arch_flags` then compiles
  for the architectures the installed torch was built for, at least sm_80 and sm_90;
* when compiling or linking the CUDA part fails, the extension is rebuilt from the
  CPU sources alone (a warning says so).
"""
from __future__ import annotations

import os
import sys

CPU_SOURCES = ["csrc/ops_cpu.cpp"]
CUDA_SOURCES = ["csrc/ops_cuda.cu"]
#: architectures always compiled when no GPU is visible to pick them: A100 and H100
BASELINE_ARCHS = ("8.0", "9.0")
WITH_CUDA_DEFINE = "-DIES_FAST_WITH_CUDA"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _warn(message: str) -> None:
    print(f"\n*** ies_fast: {message}\n", file=sys.stderr, flush=True)


def _torch_built_archs(torch) -> list[str]:
    """``["8.0", "9.0", ...]``: the sm_ architectures the installed torch was compiled for
    (read without a GPU, unlike ``torch.cuda.get_arch_list()``, which is empty then)."""
    get_flags = getattr(torch._C, "_cuda_getArchFlags", None)
    try:
        flags = (get_flags() or "") if get_flags is not None else ""
    except Exception:
        flags = ""
    archs = []
    for token in flags.replace(";", " ").split():
        if token.startswith("sm_") and token[3:].isdigit() and int(token[3:]) >= 70:
            num = int(token[3:])
            archs.append(f"{num // 10}.{num % 10}")
    return archs


def cuda_arch_flags(torch) -> list[str]:
    """nvcc ``-gencode`` flags for a build where torch cannot pick the architectures
    itself: no ``TORCH_CUDA_ARCH_LIST`` and no visible GPU. Empty otherwise (torch's
    own choice then applies). The list is the installed torch's architectures plus
    sm_80 and sm_90, the newest also as PTX so later GPUs can JIT it."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.device_count() > 0:
        return []
    archs = sorted(set(_torch_built_archs(torch)) | set(BASELINE_ARCHS), key=lambda a: tuple(map(int, a.split("."))))
    nums = [a.replace(".", "") for a in archs]
    flags = [f"-gencode=arch=compute_{n},code=sm_{n}" for n in nums]
    return flags + [f"-gencode=arch=compute_{nums[-1]},code=compute_{nums[-1]}"]


def native_extension_and_cmdclass(root_dir: str):
    """``(ext_modules, cmdclass)`` for ``setup()``; empty when the extension cannot or should not be built."""
    if _flag("IES_FAST_NO_NATIVE"):
        _warn("IES_FAST_NO_NATIVE is set: not building the native extension ies_fast._C")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # no torch at build time (e.g. build isolation)
        if _flag("IES_FAST_REQUIRE_NATIVE"):
            raise RuntimeError(f"IES_FAST_REQUIRE_NATIVE=1 but torch is not importable: {exc}") from exc
        _warn(f"torch is not importable ({exc}); installing without ies_fast._C "
              "(install torch first and use `pip install --no-build-isolation`)")
        return [], {}

    with_cuda = (
        torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and not _flag("IES_FAST_NO_CUDA")
    )
    rel = lambda paths: [os.path.relpath(os.path.join(root_dir, p)) for p in paths]  # noqa: E731
    cxx = ["-O3", "-fopenmp"]
    kwargs = dict(
        name="ies_fast._C",
        include_dirs=[os.path.join(root_dir, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        arch_flags = cuda_arch_flags(torch)
        if arch_flags:
            _warn("no GPU visible and TORCH_CUDA_ARCH_LIST unset: compiling the CUDA ops for "
                  + " ".join(f.rsplit("=", 1)[1] for f in arch_flags))
        ext = cpp_extension.CUDAExtension(
            sources=rel(CPU_SOURCES + CUDA_SOURCES),
            extra_compile_args={"cxx": cxx + [WITH_CUDA_DEFINE], "nvcc": ["-O3", WITH_CUDA_DEFINE] + arch_flags},
            **kwargs,
        )
    else:
        ext = cpp_extension.CppExtension(sources=rel(CPU_SOURCES), extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": _tolerant_build_ext(cpp_extension.BuildExtension)}


def _tolerant_build_ext(base):
    """``base`` (torch's BuildExtension) whose compile errors become a warning."""

    class TolerantBuildExtension(base):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
                return
            except Exception as exc:
                if _flag("IES_FAST_REQUIRE_NATIVE"):
                    raise
                failure = f"{type(exc).__name__}: {exc}"
            if _cuda_sources(ext):
                _warn(f"building the CUDA part of {ext.name} failed ({failure}); building its CPU ops alone")
                _drop_cuda(ext)
                try:
                    super().build_extension(ext)
                    return
                except Exception as exc:
                    failure = f"{type(exc).__name__}: {exc}"
            _warn(f"building {ext.name} failed ({failure}); the package will run on "
                  "its Triton / plain-torch paths. Set IES_FAST_REQUIRE_NATIVE=1 to make this an error.")

        def copy_extensions_to_source(self):
            # an extension whose build failed has no file to copy (editable/inplace installs)
            for ext in list(self.extensions):
                if not os.path.exists(self.get_ext_fullpath(ext.name)) and not os.path.exists(
                    os.path.join(self.build_lib, self.get_ext_filename(ext.name))
                ):
                    self.extensions.remove(ext)
            super().copy_extensions_to_source()

    TolerantBuildExtension.__name__ = "TolerantBuildExtension"
    return TolerantBuildExtension.with_options(use_ninja=True)


def _cuda_sources(ext) -> list[str]:
    return [src for src in ext.sources if src.endswith(".cu")]


def _drop_cuda(ext) -> None:
    """Turn a CUDA extension into its CPU part, in place: C++ sources only, the cxx
    flags without the CUDA define, no nvcc flags, no link against the CUDA runtime."""
    ext.sources = [src for src in ext.sources if not src.endswith(".cu")]
    args = ext.extra_compile_args
    cxx = args.get("cxx", []) if isinstance(args, dict) else list(args)
    ext.extra_compile_args = {"cxx": [flag for flag in cxx if flag != WITH_CUDA_DEFINE]}
    ext.libraries = [lib for lib in ext.libraries if lib != "cudart"]
