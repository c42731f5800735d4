"""Build rules for the optional native extension ``ies_fast._C`` (sources in ``csrc/``).

``setup.py`` calls :func:`native_extension_and_cmdclass`. The extension holds the
C++/OpenMP CPU ops, plus the CUDA/CUB ops when torch is a CUDA build and a CUDA
toolkit is found. A failed compile only prints a warning (the package then runs
on its Triton / plain-torch paths) unless ``IES_FAST_REQUIRE_NATIVE=1``.

Environment switches:

* ``IES_FAST_NO_NATIVE=1``: build no extension at all;
* ``IES_FAST_NO_CUDA=1``: build the CPU ops only, even where CUDA is available;
* ``IES_FAST_REQUIRE_NATIVE=1``: a missing torch or a compile error fails the install.
"""
from __future__ import annotations

import os
import sys

CPU_SOURCES = ["csrc/ops_cpu.cpp"]
CUDA_SOURCES = ["csrc/ops_cuda.cu"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _warn(message: str) -> None:
    print(f"\n*** ies_fast: {message}\n", file=sys.stderr, flush=True)


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
        ext = cpp_extension.CUDAExtension(
            sources=rel(CPU_SOURCES + CUDA_SOURCES),
            extra_compile_args={"cxx": cxx + ["-DIES_FAST_WITH_CUDA"], "nvcc": ["-O3", "-DIES_FAST_WITH_CUDA"]},
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
            except Exception as exc:
                if _flag("IES_FAST_REQUIRE_NATIVE"):
                    raise
                _warn(f"building {ext.name} failed ({type(exc).__name__}: {exc}); the package will run on "
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
