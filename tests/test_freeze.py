"""The committed _freeze/ is what `quarto render` (and the Pages workflow) shows without running a
model. These tests fail when a chapter was edited without re-rendering it, or when an inline
expression was left unevaluated (Quarto prints it literally), so stale frozen output cannot land."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = yaml.safe_load((ROOT / "_quarto.yml").read_text())
# every chapter and appendix that runs code (a page of prose only, such as the references, has no frozen output)
CHAPTERS = [ROOT / c for c in BOOK["book"]["chapters"] + BOOK["book"].get("appendices", [])
            if "```{python}" in (ROOT / c).read_text()]


def frozen(source: Path) -> dict:
    rel = source.relative_to(ROOT).with_suffix("")
    path = ROOT / "_freeze" / rel / "execute-results" / "html.json"
    assert path.exists(), (f"no frozen output for {source.name}: render the book with Quarto >= 1.7 "
                           f"(`quarto render {source.relative_to(ROOT)}`) and commit _freeze/")
    return json.loads(path.read_text())


def frozen_markdown(source: Path, fmt: str) -> str:
    """The executed markdown Quarto froze for one output format (html or tex)."""
    rel = source.relative_to(ROOT).with_suffix("")
    return json.loads((ROOT / "_freeze" / rel / "execute-results" / f"{fmt}.json").read_text())["result"]["markdown"]


def quarto_hash(path: Path) -> str:
    """Quarto's freeze hash: md5 of the source with LF line endings (src/command/render/freeze.ts)."""
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def test_freeze_is_configured():
    assert BOOK["execute"]["freeze"] is True
    assert (ROOT / "_freeze").is_dir()


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_frozen_output_matches_the_source(source):
    assert frozen(source)["hash"] == quarto_hash(source), (
        f"{source.relative_to(ROOT)} changed after its frozen output was made: "
        f"re-render it (`quarto render {source.relative_to(ROOT)}`) and commit _freeze/")


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_frozen_output_has_no_unevaluated_inline_code(source):
    for fmt in ("html", "tex"):
        md = frozen_markdown(source, fmt)
        left = re.findall(r"\{python\}[^\n]{0,60}", md)
        assert not left, f"inline expressions Quarto did not evaluate in {source.name} ({fmt}): {left}"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_frozen_pdf_figures_are_committed(source):
    """Charts are PNG images in the PDF: every one the frozen LaTeX output points at is in _freeze/."""
    rel = source.relative_to(ROOT).with_suffix("")
    tex = ROOT / "_freeze" / rel / "execute-results" / "tex.json"
    assert tex.exists(), f"no frozen PDF output for {source.name}: render the book to PDF too"
    md = json.loads(tex.read_text())["result"]["markdown"]
    for m in re.findall(r"\]\(([^)\s]+\.png)\)", md):
        # Quarto keeps <name>_files/figure-pdf/x.png as _freeze/<dir>/<name>/figure-pdf/x.png
        assert (ROOT / "_freeze" / rel / m.split("_files/", 1)[1]).exists(), m


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_frozen_output_shows_no_stray_values(source):
    """A cell whose last line is a call returning True/False/None shows that value to the reader."""
    for fmt in ("html", "tex"):
        md = frozen_markdown(source, fmt)
        stray = re.findall(r"cell-output-display[^\n]*\}\n```\n(True|False|None)\n```", md)
        assert not stray, f"{source.name} ({fmt}) shows a bare {stray} to the reader: end that cell with a statement"
