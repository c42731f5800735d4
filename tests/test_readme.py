"""Every ```python block of README.md (and of the docs in ``DOCS``) runs as pasted
(issue 14, point 1).

Each block runs in its own fresh interpreter (a subprocess in an empty temporary
folder, CPU, TRITON_INTERPRET inherited from conftest) with a timeout. A block
may be preceded by a marker comment, which the README shows next to it:

* ``<!-- readme-test: needs lightning transformers -->``: skipped unless these
  modules import (an optional integration whose package is not a test extra);
* ``<!-- readme-test: skip (needs a GPU) -->``: never run here (the reason is required).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
#: docs whose blocks are held to the same rule (the README links to their complete scripts)
DOCS = [README.parent / "docs" / "integrations.md"]
TIMEOUT_S = 180  # a shared, loaded 2-core CI box; the blocks take a few seconds each

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme-test:\s*(skip|needs)\b\s*(.*?)\s*-->\s*$")


def python_blocks(text: str) -> list:
    """``[(name, code, marker)]`` for each ```python block of ``text``: ``name`` is the
    section heading's slug and the block's number in it, ``marker`` ``(kind, arg)`` or None."""
    blocks, heading, counts = [], "top", {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-") or "top"
        fence = _FENCE.match(line)
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise AssertionError(f"README.md line {i + 1}: unclosed code fence")
        if fence.group(1) == "python":
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = _MARKER.match(before.strip())
            counts[heading] = counts.get(heading, 0) + 1
            blocks.append((f"{heading}-{counts[heading]}", "\n".join(lines[i + 1:end]) + "\n",
                           marker.groups() if marker else None))
        i = end + 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8")) + [
    (f"{doc.stem}-{name}", code, marker) for doc in DOCS for name, code, marker in python_blocks(doc.read_text("utf-8"))]


def _skip_reason(marker) -> str | None:
    if marker is None:
        return None
    kind, arg = marker
    if kind == "skip":
        return arg or "README marker without a reason"
    missing = [m for m in arg.split() if importlib.util.find_spec(m) is None]
    return f"needs {' '.join(missing)} (not installed)" if missing else None


def test_the_readme_has_python_blocks_and_the_extractor_sees_markers():
    assert any(name.startswith("use-it-in-your-own-loop") for name, _, _ in BLOCKS), [b[0] for b in BLOCKS]
    sample = "# A\n<!-- readme-test: needs nosuchmodule_xyz -->\n```python\nprint(1)\n```\n## B c\n```python\nx=1\n```\n"
    got = python_blocks(sample)
    assert [(n, c) for n, c, _ in got] == [("a-1", "print(1)\n"), ("b-c-1", "x=1\n")]
    assert _skip_reason(got[0][2]) == "needs nosuchmodule_xyz (not installed)" and got[1][2] is None
    with pytest.raises(AssertionError, match="unclosed"):
        python_blocks("```python\nx = 1\n")


def test_a_failing_block_fails_the_runner(tmp_path):
    with pytest.raises(AssertionError, match="NameError"):
        run_block("loader = DataLoader([])\n", tmp_path)


def run_block(code: str, cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter in ``cwd``; AssertionError with its stderr if it fails."""
    script = cwd / "readme_block.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise AssertionError(f"README block failed (exit {proc.returncode}):\n{code}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.mark.parametrize("code,marker", [pytest.param(c, m, id=n) for n, c, m in BLOCKS])
def test_readme_python_block_runs_as_pasted(code, marker, tmp_path):
    reason = _skip_reason(marker)
    if reason:
        pytest.skip(reason)
    run_block(code, tmp_path)


def test_every_test_file_the_docs_name_exists():
    """The docs point readers at the tests that check a claim; a moved test file
    leaves the pointer dangling (the layout moved every test once)."""
    root = README.parent
    docs = [README, *sorted((root / "docs").glob("*.md"))]
    named = {(d.name, m) for d in docs for m in re.findall(r"\btests/[\w/]*\w+\.py\b", d.read_text())}
    missing = sorted(f"{doc}: {path}" for doc, path in named if not (root / path).is_file())
    assert not missing, "docs name test files that do not exist:\n" + "\n".join(missing)
