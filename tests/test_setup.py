"""The install: constraints.txt pins what pyproject.toml asks for (CPU torch by default), `make setup`
is incremental and `make clean-book` removes the rendered book only."""
from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    lines = [ln.strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    return {canonicalize_name(n): v for n, v in (ln.split("==") for ln in lines if ln and not ln.startswith("#"))}


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for e, rs in project["optional-dependencies"].items() if e != "vllm" for r in rs]
    return [r for r in map(Requirement, reqs) if r.name != "loradrift"]


def test_constraints_pin_every_declared_dependency_within_its_floor():
    p = pins()
    assert p["torch"] == "2.13.0", "torch without a build label: the CPU and the CUDA build both satisfy it"
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in p, f"{req.name} is declared but not pinned: run `make constraints`"
        assert req.specifier.contains(p[name], prereleases=True), f"{req.name}=={p[name]} is outside {req}"
    assert "vllm" not in p  # vLLM lives in its own virtualenv
    for name in ("safetensors", "ruamel-yaml", "optuna", "wandb", "tokenizers", "peft", "datasets"):
        assert name in p, name


def test_the_recorded_versions_are_the_installed_ones():
    for req in declared():
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            continue
        assert have.split("+")[0] == pins()[canonicalize_name(req.name)], req.name


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_setup_is_incremental_and_cpu_torch_by_default(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()

    def dry(target):
        return subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), target, f"VENV={venv}"], capture_output=True,
                              text=True, check=True).stdout

    out = dry("setup")  # no stamp yet: every install, pinned, torch's CPU build from its index
    assert "-c constraints.txt" in out and '"torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu' in out
    assert all("-c constraints.txt" in ln for ln in out.splitlines() if "pip install" in ln and "--upgrade pip" not in ln)
    stamp = venv / ".loradrift-setup"
    stamp.touch()
    newer = max(os.path.getmtime(ROOT / f) for f in ("pyproject.toml", "constraints.txt")) + 10
    os.utime(stamp, (newer, newer))
    assert "pip install" not in dry("setup")  # done, and nothing it depends on changed
    assert dry("clean-book").split() == ["rm", "-rf", "_book", "_book-l4", ".quarto"]
