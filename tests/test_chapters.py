"""Execute every chapter's Python cells (and its inline `{python} expr` snippets) with nbclient,
the way Quarto's Jupyter engine would, so a broken chapter fails CI without Quarto.

Run twice: against the committed data/ (what the book shows) and against an empty book root
(a fresh clone before any study run), both with LORADRIFT_COMPUTE=never so nothing is trained.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [ROOT / "index.qmd", *sorted(p for p in (ROOT / "chapters").glob("*.qmd") if not p.name.startswith("_"))]
INCLUDE = re.compile(r"\{\{<\s*include\s+(\S+)\s*>\}\}")
CELL = re.compile(r"^```\{python\}[^\n]*\n(.*?)^```\s*$", re.S | re.M)
INLINE = re.compile(r"`\{python\}\s+([^`]+)`")


def qmd_to_notebook(path: Path) -> tuple[nbformat.NotebookNode, list[str]]:
    text = INCLUDE.sub(lambda m: (path.parent / m.group(1)).read_text(), path.read_text())
    cells = [m.group(1) for m in CELL.finditer(text)]
    prose = CELL.sub("", text)
    inline = INLINE.findall(prose)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    # evaluate every inline expression as Quarto would, after all cells (they may use any variable)
    nb.cells.append(nbformat.v4.new_code_cell(
        "__inline = []\n" + "".join(f"__inline.append(str({e.strip()}))\n" for e in inline) + "print(len(__inline))"))
    return nb, inline


def run_chapter(path: Path, env: dict) -> nbformat.NotebookNode:
    nb, _ = qmd_to_notebook(path)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def outputs(nb, mime):
    return [o for c in nb.cells for o in c.get("outputs", []) if mime in o.get("data", {})]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_executes_on_committed_results(chapter):
    nb = run_chapter(chapter, {"LORADRIFT_COMPUTE": "never", "LORADRIFT_ROOT": str(ROOT), "QUARTO_PROFILE": "cpu"})
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # every chart carries both an interactive (HTML) and a static (PDF) form
    assert len(outputs(nb, "text/html")) >= len(outputs(nb, "application/vnd.vegalite.v5+json"))
    for o in outputs(nb, "image/png"):
        assert len(o["data"]["image/png"]) > 1000


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_degrades_without_results(chapter, tmp_path):
    (tmp_path / "_quarto.yml").write_text("project: {type: book}\n")
    nb = run_chapter(chapter, {"LORADRIFT_COMPUTE": "never", "LORADRIFT_ROOT": str(tmp_path),
                               "QUARTO_PROFILE": "cpu", "LORADRIFT_ARTIFACTS": str(tmp_path / "artifacts")})
    assert not list((tmp_path / "artifacts").glob("**/*.safetensors")), "a chapter trained a model"


def test_inline_expressions_and_includes_are_found():
    nb, inline = qmd_to_notebook(ROOT / "chapters" / "training.qmd")
    assert any("counts" in e for e in inline)
    assert any("search" in c.source for c in nb.cells)  # the included _search.qmd section


# chapters already reduced to prose, figures and inline values (add the others as they are converted)
LEAN = ["index.qmd", "chapters/setup.qmd", "chapters/training.qmd", "chapters/_search.qmd", "chapters/limitations.qmd"]


@pytest.mark.parametrize("name", LEAN)
def test_chapter_cells_are_short_and_code_is_a_minority(name):
    """No cell over 25 lines of code, and code (cell lines other than #| options) at most 40% of the file."""
    text = (ROOT / name).read_text()
    cells = [[ln for ln in m.group(1).splitlines() if not ln.startswith("#|")] for m in CELL.finditer(text)]
    assert max(map(len, cells)) <= 25
    assert sum(map(len, cells)) <= 0.4 * len(text.splitlines())
