"""Old module paths (before the package was split into selectors/, losses/, ops/,
io/ and app/) keep importing for one release, with a DeprecationWarning naming the
new place. An old path is a read-only view of the modules that now hold its names;
nothing is imported until the old path is."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

#: old module -> the modules that hold its names now (first match wins)
MOVED = {
    "ies_fast.selection": ("ies_fast.selectors.base",),
    "ies_fast.selector": ("ies_fast.selectors.ies",),
    "ies_fast.multi_exit": ("ies_fast.selectors.per_exit", "ies_fast.losses.exits", "ies_fast.nn"),
    "ies_fast.infobatch": ("ies_fast.selectors.infobatch",),
    "ies_fast.random_removal": ("ies_fast.selectors.random_removal",),
    "ies_fast.criterion": ("ies_fast.selectors.rule",),
    "ies_fast.scoring_schedule": ("ies_fast.selectors.schedule",),
    "ies_fast.kept_floor": ("ies_fast.selectors.floor",),
    "ies_fast.stopper": ("ies_fast.selectors.stopping",),
    "ies_fast.scoring": ("ies_fast.selectors.scoring",),
    "ies_fast.loss": ("ies_fast.losses.cross_entropy_loss",),
    "ies_fast.kernels": ("ies_fast.ops.cross_entropy.triton", "ies_fast.ops.ring.triton", "ies_fast.ops.compact.triton"),
    "ies_fast.kernels.ring": ("ies_fast.ops.ring.triton",),
    "ies_fast.kernels.cross_entropy": ("ies_fast.ops.cross_entropy.triton",),
    "ies_fast.kernels.compact": ("ies_fast.ops.compact.triton",),
    "ies_fast.checkpoint_io": ("ies_fast.io.checkpoint",),
    "ies_fast.state_checks": ("ies_fast.io.state_checks",),
    "ies_fast.distributed": ("ies_fast.io.distributed", "ies_fast.selectors.sync"),
    "ies_fast.cli": ("ies_fast.app.cli",),
    "ies_fast.demo": ("ies_fast.app.demo",),
    "ies_fast.plots": ("ies_fast.app.plots",),
    "ies_fast.bench": ("ies_fast.app.bench",),
    "ies_fast.train": ("ies_fast.app.train",),
}
#: old packages whose submodules moved with them
MOVED_PACKAGES = {"ies_fast.train": "ies_fast.app.train"}


def new_places(name: str):
    """The new modules for an old module path, or ``None`` if it did not move."""
    if name in MOVED:
        return MOVED[name]
    for old, new in MOVED_PACKAGES.items():
        if name.startswith(old + "."):
            return (new + name[len(old):],)
    return None


class _View(types.ModuleType):
    """An old path: attribute reads go to the first new module that has the name."""

    def __getattr__(self, attr):
        for target in self.__dict__["_targets"]:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if new_places(fullname) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname in MOVED_PACKAGES)

    def create_module(self, spec):
        targets = new_places(spec.name)
        warnings.warn(f"{spec.name} moved to {' / '.join(targets)}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=4)
        view = _View(spec.name)
        view._targets = targets
        if spec.name in MOVED_PACKAGES:
            view.__path__ = []
        return view

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())
