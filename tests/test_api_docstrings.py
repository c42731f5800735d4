"""The public API's docstrings (issue 28): every class and function named in the
README's "API" table, and each public method of those classes, has Google-style
sections (``Args:`` naming every argument, ``Returns:`` when it returns a value,
real exception names under ``Raises:``); and no docstring of the core (all but
``ies_fast/app``, whose format examples show durations) states a measured timing:
those go stale, and belong in docs/results.md.

Names are read from the README table itself, so a new row is checked too. The
framework wrappers (``IESCallback``, ``IESTrainer``) are checked like the rest
where Lightning and transformers are installed (skipped under ``[test-core]``);
a method that overrides a third-party base class's method (a Lightning
``Callback`` hook, a ``transformers.Trainer`` method) is documented by that
framework and exempt (:func:`_overrides_framework`). The timing check reads the
sources with ``ast`` and imports nothing."""
from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import inspect
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ies_fast"

#: named by the brief of issue 28 beyond the table's first column
EXTRA = ("ies_fast.causal_lm_cross_entropy", "ies_fast.make_selector", "ies_fast.PerExitIES", "ies_fast.Selector")


#: a number followed by a time unit or a speed-up factor
TIMING = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s*(?:(?:ms|µs|us|ns|s|secs?|seconds|x)\b|×)")


def _code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _api_table() -> list[tuple[str, list[str]]]:
    """``(dotted name, [method names])`` for each ``ies_fast`` object in the README's
    API table: the first column's names (a module followed by bare names means
    its members), the second column's bare names that are members of the object."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not line.startswith("|") or set(cells[0]) <= {"-"}:
            continue
        spans = [m.group(0) for m in (re.match(r"[\w.]+", s) for s in _code_spans(cells[0])) if m]
        bare = [s for s in spans if "." not in s]
        names = []
        for dotted in (s for s in spans if s.startswith("ies_fast.")):
            names += [f"{dotted}.{b}" for b in bare] if bare and _is_module(dotted) else [dotted]
        methods = [s for s in _code_spans(cells[1]) if re.fullmatch(r"\w+", s)]
        for name in names:
            rows.append((name, methods))
    return rows


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module (found without importing it: DALI is slow)."""
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError):
        return False


def _resolve(dotted: str):
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _framework_missing(dotted: str) -> bool:
    """Whether ``dotted`` cannot be imported because a third-party package it wraps
    (Lightning, transformers) is not installed (the ``[test-core]`` extra)."""
    try:
        _resolve(dotted)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] != "ies_fast":
            return True
        raise
    return False


def _section(doc: str, title: str) -> list[str]:
    """The lines of a Google-style section (``title:`` to the next unindented line)."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"{title}:" and not line.startswith(" "):
            body = []
            for follow in lines[i + 1:]:
                if follow.strip() and not follow.startswith(" "):
                    break
                body.append(follow)
            return body
    return []


def _returns_value(func) -> bool:
    ann = inspect.signature(func).return_annotation
    if ann in (None, "None"):
        return False
    if ann is not inspect.Signature.empty:
        return True
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    body = tree.body[0]
    todo, found = list(body.body), False
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Return) and node.value is not None:
            found = True
        todo.extend(ast.iter_child_nodes(node))
    return found


def _problems(name: str, obj, doc_of=None) -> list[str]:
    """What ``obj``'s docstring lacks: an ``Args:`` entry per parameter (a class's
    are its ``__init__``'s, documented on the class), ``Returns:`` for a function
    that returns a value, and real exception names under ``Raises:``."""
    doc = inspect.getdoc(doc_of if doc_of is not None else obj)
    if not doc:
        return [f"{name}: no docstring"]
    func = obj.__init__ if inspect.isclass(obj) else obj
    params = [p for p in inspect.signature(func).parameters.values() if p.name not in ("self", "cls")]
    problems = []
    args = _section(doc, "Args")
    if params and not args:
        problems.append(f"{name}: no Args: section")
    for p in params:
        star = "**" if p.kind is p.VAR_KEYWORD else "*" if p.kind is p.VAR_POSITIONAL else ""
        entry = re.compile(rf"^\s+{re.escape(star + p.name)}\b(\s*\([^)]*\))?:")
        if args and not any(entry.match(line) for line in args):
            problems.append(f"{name}: Args: has no entry for {star}{p.name}")
    if not inspect.isclass(obj) and _returns_value(func) and not _section(doc, "Returns"):
        problems.append(f"{name}: no Returns: section")
    for line in _section(doc, "Raises"):
        m = re.match(r"^\s{4}(\w+):", line)
        if m and not isinstance(getattr(builtins, m.group(1), None), type):
            problems.append(f"{name}: Raises: names {m.group(1)}, not a built-in exception")
    return problems


def _ours(obj) -> bool:
    """Whether ``obj`` (a class or function) is defined in the ``ies_fast`` package."""
    module = getattr(obj, "__module__", None) or ""
    return module == "ies_fast" or module.startswith("ies_fast.")


def _overrides_framework(cls, name: str) -> bool:
    """Whether ``cls.name`` overrides a method that a base class from outside
    ``ies_fast`` defines (found along the MRO): Lightning's ``Callback`` hooks,
    ``transformers.Trainer``'s ``train``, ``log``, ... That framework documents the
    method's arguments and return value; ours says only what it adds."""
    return any(name in vars(base) and not _ours(base) for base in cls.__mro__[1:])


def _public_methods(cls) -> dict:
    """``{name: function}``: the public methods of ``cls`` that ies_fast defines
    (its own or inherited; not properties, not torch's or object's), less those
    that override a third-party base class's method (:func:`_overrides_framework`)."""
    found = {}
    for name, value in inspect.getmembers(cls):
        if name.startswith("_") or isinstance(inspect.getattr_static(cls, name), property) or not callable(value):
            continue
        if _ours(value) and not _overrides_framework(cls, name):
            found[name] = value
    return found


def _checked() -> list[tuple[str, object]]:
    """``(name, object)`` for every class, function and method the test covers: the
    table's names and the methods it lists, :data:`EXTRA`, and every public method
    of each class."""
    found: dict = {}
    for name, methods in _api_table():
        if _is_module(name) or _framework_missing(name):
            continue
        obj = found[name] = _resolve(name)
        for m in methods:  # a class's methods; beside a function, sibling functions
            if inspect.isclass(obj):
                assert callable(getattr(obj, m, None)), f"the README names {name}.{m}, which does not exist"
            elif callable(getattr(importlib.import_module(obj.__module__.split(".")[0]), m, None)):
                found[f"ies_fast.{m}"] = _resolve(f"ies_fast.{m}")
    for name in EXTRA:
        found[name] = _resolve(name)
    for name, obj in list(found.items()):
        if inspect.isclass(obj):
            found.update({f"{name}.{m}": f for m, f in _public_methods(obj).items()})
    return sorted(found.items())


def test_the_table_is_read():
    names = {name for name, _ in _api_table()}
    assert {"ies_fast.IES", "ies_fast.cross_entropy", "ies_fast.data.IndexedDataset", "ies_fast.data.KeptSampler",
            "ies_fast.data.ScoringSampler", "ies_fast.InfoBatch", "ies_fast.RandomRemoval",
            "ies_fast.PatienceStopper", "ies_fast.backend_info", "ies_fast.IESDataset",
            "ies_fast.integrations.lightning.IESCallback", "ies_fast.integrations.huggingface.IESTrainer"} <= names, names
    assert ("ies_fast.IES", ["observe", "score", "step", "kept_indices", "mastered_mask", "stats", "state_dict"]) \
        in _api_table()


def test_public_api_has_args_returns_sections():
    problems = [p for name, obj in _checked() for p in _problems(name, obj)]
    assert not problems, "\n".join(problems)


def test_the_section_check_can_fail():
    def documented(a, b=1) -> int:
        """Add.

        Args:
            a: one.

        Raises:
            NoSuchError: never.
        """
        return a + b

    assert _problems("documented", documented) == [
        "documented: Args: has no entry for b", "documented: no Returns: section",
        "documented: Raises: names NoSuchError, not a built-in exception"]


def test_framework_overrides_are_exempt():
    """A method overriding a third-party base class's method is left to that
    framework's docs; a method of our own on the same class is still checked."""
    class Framework:  # stands for lightning's Callback or transformers.Trainer
        def on_epoch_end(self, trainer):
            pass

    class Wrapper(Framework):
        def on_epoch_end(self, trainer):
            pass

        def update(self, loss):
            pass

    for obj in (Wrapper, Wrapper.on_epoch_end, Wrapper.update):
        obj.__module__ = "ies_fast.integrations.example"
    assert set(_public_methods(Wrapper)) == {"update"}
    Framework.__module__ = "ies_fast.integrations.base"  # our own base class: its methods are ours
    assert set(_public_methods(Wrapper)) == {"on_epoch_end", "update"}


def _core_docstrings():
    """``(where, docstring)`` for every module, class and function of the package
    outside ``ies_fast/app`` (private ones too: a timing goes stale there as well;
    read with ``ast``: no import)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if "app" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text())
        todo = [(tree, path.relative_to(ROOT).as_posix())]
        while todo:
            node, where = todo.pop()
            doc = ast.get_docstring(node)
            if doc:
                yield where, doc
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    todo.append((child, f"{where}:{child.name}"))


def test_no_timings_in_core_docstrings():
    hits = [f"{where}: {m.group(0)!r}" for where, doc in _core_docstrings() for m in TIMING.finditer(doc)]
    assert not hits, "measured timings go in docs/results.md, not in docstrings:\n" + "\n".join(hits)
    assert TIMING.search("costs ~5 µs per call") and TIMING.search("a 1.8x speed-up")
    assert not TIMING.search("fp32 values, 12 samples, order 2")
