"""The package's shape (issue 21): no import cycle, the core never imports the app,
the loss touches a selector only through the recording interface, every import
names a module that exists. Read with ``ast``, no third-party tool."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ies_fast"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_targets(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every ies_fast import in ``path`` (top-level and
    inside functions), relative ones resolved against the file's package."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("ies_fast")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("ies_fast"):
                found.append((node.lineno, target, [a.name for a in node.names]))
    return found


def _imports(path: Path) -> set[str]:
    """Every ies_fast module ``path`` imports, resolved to an existing module:
    ``from .x import y`` counts ``.x.y`` when that is a module."""
    found = set()
    for _line, target, names in _imported_targets(path):
        found.add(target)
        found.update(f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES)
    return {m for m in found if m in MODULES}


def _defined_names(path: Path):
    """The names ``path`` binds at module level, or None when it has a module
    ``__getattr__`` (then any name may exist)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(sub.name)
            elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in sub.names)
            elif isinstance(sub, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return None if "__getattr__" in names else names


FILES = {p: _module_name(p) for p in PACKAGE.rglob("*.py")}
MODULES = set(FILES.values())
DEFINED = {FILES[p]: _defined_names(p) for p in FILES}
GRAPH = {FILES[p]: _imports(p) for p in FILES}


def test_every_import_names_a_module_that_exists():
    """A relative import one level off (a file moved deeper) fails only when its
    function runs; read every import, lazy ones included, and resolve it here."""
    missing = []
    for path in FILES:
        for line, target, names in _imported_targets(path):
            if target.startswith("ies_fast._C"):
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line}: {target}"
            if target not in MODULES:
                missing.append(where)
                continue
            defined = DEFINED[target]
            missing += [f"{where}.{n}" for n in names
                        if defined is not None and n != "*" and n not in defined and f"{target}.{n}" not in MODULES]
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read():
    assert "ies_fast.selectors.ies" in GRAPH["ies_fast.selectors.per_exit"]
    assert "ies_fast.app.train.loop" in GRAPH["ies_fast.app.cli"]  # a lazy import inside a function


def test_no_import_cycle_between_modules():
    # a package's __init__ re-exporting its own modules is not a cycle of the layout
    def edges(m):
        return {t for t in GRAPH[m] if not (m.endswith("__init__") or _inside(m, t) and FILES_BY_NAME[t].name == "__init__.py")}

    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


FILES_BY_NAME = {v: k for k, v in FILES.items()}


def test_the_core_never_imports_the_app():
    bad = sorted((m, t) for m, ts in GRAPH.items() for t in ts
                 if not _inside(m, "ies_fast.app") and _inside(t, "ies_fast.app"))
    assert not bad, bad


def test_the_loss_touches_a_selector_only_through_the_recording_interface():
    interface = {"check_index", "record", "ring", "count_scored", "defer_bad_targets", "num_exits"}
    for path in (PACKAGE / "losses").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "selector":
                assert node.attr in interface, f"{path.name}: selector.{node.attr}"
        assert "ies_fast.selectors" not in " ".join(GRAPH[_module_name(path)])
