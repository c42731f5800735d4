"""Every path and module the docs and docstrings name exists (issue 28): the
layout moved files twice, and each move left pointers dangling.

Checked: ``ies_fast/...``, ``tests/...``, ``docs/...``, ``benchmarks/...``,
``tools/...`` and ``examples/...`` paths, and dotted ``ies_fast.x.y`` names
(a module, or an attribute of one), in README.md, CHANGELOG.md, docs/*.md and
the Python files of the package, tools/, benchmarks/ and examples/."""
from __future__ import annotations

import importlib
import importlib.util
import re
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = re.compile(r"(?<![\w./-])((?:ies_fast|tests|docs|benchmarks|tools|examples)/[\w./*<>-]*[\w/*>])")
DOTTED = re.compile(r"(?<![\w./-])(ies_fast(?:\.[A-Za-z_]\w*)+)(?![\w/])")
#: names that are generated at build time, not files in the tree
GENERATED = re.compile(r"ies_fast/_C\b|ies_fast\._C\b")


def _sources() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if (ROOT / "CHANGELOG.md").exists():
        files.append(ROOT / "CHANGELOG.md")
    for folder in ("ies_fast", "tools", "benchmarks", "examples"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def _without_old_names(text: str) -> str:
    """Markdown less what names old paths on purpose: a section headed "Old module
    paths", and the first cell of a table whose header starts with "old"."""
    kept, skipping_section, old_table = [], False, False
    for line in text.splitlines():
        if line.startswith("#"):
            skipping_section = "old module paths" in line.lower()
        if skipping_section:
            continue
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2:
            if cells[1].strip().lower().startswith("old"):
                old_table = True
            if old_table:
                line = "|".join(cells[2:])
        else:
            old_table = False
        kept.append(line)
    return "\n".join(kept)


def _named(pattern) -> dict:
    found: dict = {}
    for file in _sources():
        text = file.read_text()
        if file.suffix == ".md":
            text = _without_old_names(text)
        for match in pattern.findall(text):
            name = match.rstrip(".")
            if not GENERATED.search(name):
                found.setdefault(name, set()).add(str(file.relative_to(ROOT)))
    return found


def _exists(path: str) -> bool:
    """A path, or a glob (``tests/test_kernels_*.py``) that matches something; a
    template (``ies_fast/ops/<op>/``) counts as its existing prefix."""
    if "<" in path:
        path = path[:path.index("<")]
    if "*" in path:
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


def _resolves(dotted: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an old path that only warns is a stale name
        try:
            return _resolves_now(dotted)
        except Warning:
            return False


def _resolves_now(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except (ImportError, ValueError):
            continue
        obj = importlib.import_module(module)
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_path_named_in_docs_and_docstrings_exists():
    missing = sorted(f"{path}  (named in {', '.join(sorted(where))})"
                     for path, where in _named(PATH).items() if not _exists(path))
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_every_module_named_in_docs_and_docstrings_imports():
    missing = sorted(f"{name}  (named in {', '.join(sorted(where))})"
                     for name, where in _named(DOTTED).items() if not _resolves(name))
    assert not missing, "ies_fast names that do not resolve:\n" + "\n".join(missing)
