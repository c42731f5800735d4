"""Optional dependencies (the ``demo`` extra: scikit-learn, matplotlib, mnist1d),
checked before a command does any work, so a missing package costs one line,
not a finished training budget (issue 14)."""
from __future__ import annotations

import importlib.util

#: import name -> (pip name, the extra that installs it)
PACKAGES = {"sklearn": ("scikit-learn", "demo"), "matplotlib": ("matplotlib", "demo"), "mnist1d": ("mnist1d", "demo")}

#: what each built-in data set needs
DATASET_NEEDS = {"digits": ("sklearn",), "mnist1d": ("mnist1d",)}


def available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_hint(module: str) -> str:
    pip_name, extra = PACKAGES.get(module, (module, "demo"))
    return f"{pip_name} is not installed: pip install {pip_name} (or pip install --no-build-isolation -e \".[{extra}]\")"


def require(modules, what: str) -> None:
    """Raise ``ImportError`` (one line naming the package and the extra) unless every
    module of ``modules`` imports."""
    for module in modules:
        if not available(module):
            raise ImportError(f"{what} needs {install_hint(module)}")


def can_plot(path: str, print_fn=print) -> bool:
    """Whether a plot asked for at ``path`` ('' or None: none) can be written; says
    once, up front, that it will be skipped when matplotlib is missing."""
    if not path:
        return False
    if available("matplotlib"):
        return True
    print_fn(f"ies-fast: the plot {path} will be skipped: {install_hint('matplotlib')}")
    return False
