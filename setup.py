"""Builds the optional native extension ``ies_fast._C`` (C++/OpenMP, plus CUDA/CUB
where a CUDA toolkit and a CUDA build of torch are present).

If torch is not importable at build time, or the compiler fails, the package is
installed without ``_C`` and runs on its Triton / plain-torch paths
(``ies_fast.backend_info()`` says which). Set ``IES_FAST_REQUIRE_NATIVE=1`` to make
a failed native build an error instead.
"""
import os
import sys

from setuptools import setup

# PEP 517 builds (pip install .) do not put the project directory on sys.path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ext_modules = []
cmdclass = {}

try:
    from native_build import native_extension_and_cmdclass  # noqa: E402  (csrc/ build logic)
except ImportError as exc:
    print(f"warning: native_build.py not importable ({exc}); building without ies_fast._C", file=sys.stderr)
    native_extension_and_cmdclass = None

if native_extension_and_cmdclass is not None:
    ext_modules, cmdclass = native_extension_and_cmdclass(os.path.dirname(os.path.abspath(__file__)))

setup(ext_modules=ext_modules, cmdclass=cmdclass)
