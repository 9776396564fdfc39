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
LEAN = ["index.qmd", "chapters/setup.qmd", "chapters/training.qmd", "chapters/_search.qmd", "chapters/limitations.qmd",
        "chapters/drift.qmd", "chapters/deployment.qmd",
        "chapters/original.qmd"]


@pytest.mark.parametrize("name", LEAN)
def test_chapter_cells_are_short_and_code_is_a_minority(name):
    """No cell over 25 lines of code, and code (cell lines other than #| options) at most 40% of the file."""
    text = (ROOT / name).read_text()
    cells = [[ln for ln in m.group(1).splitlines() if not ln.startswith("#|")] for m in CELL.finditer(text)]
    assert max(map(len, cells)) <= 25
    assert sum(map(len, cells)) <= 0.4 * len(text.splitlines())


# ---------------------------------------------------------------------------- a damaged data/ folder
DAMAGED = {"runs/rte-lora-s42.json": "cut", "drift_mrpc.json": "cut", "drift_summary.json": "gone",
           "deployment_meta.json": "cut", "search/mrpc-full.json": "cut"}


@pytest.fixture
def damaged_root(tmp_path):
    """A copy of the book's data/ with result files cut short or missing (DAMAGED)."""
    import shutil
    (tmp_path / "_quarto.yml").write_text("project: {type: book}\n")
    shutil.copytree(ROOT / "data", tmp_path / "data")
    for name, how in DAMAGED.items():
        f = tmp_path / "data" / "cpu-v1" / name
        if how == "cut":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        else:
            f.unlink()
    return tmp_path


def test_readers_name_an_unreadable_result_and_carry_on(damaged_root, monkeypatch):
    """Every reader of data/ leaves out what it cannot read, names it in a warning, and returns the rest."""
    import warnings

    from loradrift import drift, findings, search_findings, serving
    from loradrift import search as lsearch
    from loradrift.store import UnreadableResult, data_dir
    monkeypatch.setenv("LORADRIFT_ROOT", str(damaged_root))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = findings.runs_frame("cpu-v1")
        res = drift.load_results("cpu-v1")
        rep = drift.results.replication_table(res)
        dep = serving.load_results(data_dir("cpu-v1"))
        t = findings.study_time("cpu-v1")
        findings.outdated("cpu-v1"), findings.headline_study("cpu-v1"), findings.limitations("cpu-v1")
        search_findings.projection("cpu-v1"), search_findings.summary("cpu-v1", lsearch.load_results("cpu-v1"))
    said = " ".join(str(w.message) for w in caught if issubclass(w.category, UnreadableResult))
    for name in DAMAGED:
        assert name in said, name
    assert len(runs) == 17 and "rte-lora-s42" not in set(runs.id)
    assert res["tasks"] == ["rte", "sst2"] and res["missing"] == ["mrpc"] and rep.empty and res["seeds"].empty
    assert dep is None and [s["stage"] for s in t["stages"]][:1] == ["setup"]


@pytest.mark.parametrize("chapter", ["index", "training", "drift"])
def test_a_chapter_shows_what_it_can_of_a_damaged_data_folder(damaged_root, chapter):
    """A chapter executed on a data/ with a cut run, a cut drift result, a missing drift summary and a cut
    serving record: no error, and a note names each file it left out."""
    path = ROOT / ("index.qmd" if chapter == "index" else f"chapters/{chapter}.qmd")
    nb = run_chapter(path, {"LORADRIFT_COMPUTE": "never", "LORADRIFT_ROOT": str(damaged_root),
                            "QUARTO_PROFILE": "cpu-v1", "LORADRIFT_ARTIFACTS": str(damaged_root / "artifacts")})
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[0]["evalue"] if errors else ""
    notes = " ".join(o["data"]["text/markdown"] for o in outputs(nb, "text/markdown")
                     if "Unreadable result" in o["data"]["text/markdown"])
    expected = {"index": ["rte-lora-s42.json", "drift_mrpc.json", "deployment_meta.json"],
                "training": ["rte-lora-s42.json"], "drift": ["drift_mrpc.json", "drift_summary.json"]}[chapter]
    for name in expected:
        assert name in notes, (name, notes)
