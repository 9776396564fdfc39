"""Profiles, paths and the small utilities every stage shares.

A *profile* (``cpu``, ``l4``) is a YAML file in ``loradrift/profiles``: the model, the data sizes
and the training settings of one scale of the study. Results of a profile live under
``data/<profile>/`` (committed, shown by the book) and heavy artifacts under
``artifacts/<profile>/`` (ignored by git).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import yaml

from . import METHODS, TASKS, LoraDriftError

PROFILE_DIR = Path(__file__).parent / "profiles"


def repo_root() -> Path:
    """The book's root: $LORADRIFT_ROOT, else the folder holding _quarto.yml above this file or the cwd."""
    if os.environ.get("LORADRIFT_ROOT"):
        return Path(os.environ["LORADRIFT_ROOT"]).resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for p in (start, *start.parents):
            if (p / "_quarto.yml").exists():
                return p
    return Path.cwd().resolve()


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def active_profile(explicit: str | None = None) -> str:
    """The profile named explicitly, else by QUARTO_PROFILE (first known entry), else ``cpu``."""
    if explicit:
        return explicit
    for name in os.environ.get("QUARTO_PROFILE", "").split(","):
        if name.strip() in available_profiles():
            return name.strip()
    return "cpu"


def load_profile(name: str | None = None) -> dict[str, Any]:
    name = active_profile(name)
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"
    name = path.stem
    if not path.exists():
        raise LoraDriftError(
            f"unknown profile {name!r}: choose one of {available_profiles()} "
            f"(or add {path.name} to {PROFILE_DIR})")
    with open(path) as f:
        prof = yaml.safe_load(f)
    prof["name"] = name
    for t in prof["tasks"]:
        check_task(t)
    for m in prof["methods"]:
        check_method(m)
    return prof


def check_task(task: str) -> str:
    if task not in TASKS:
        raise LoraDriftError(f"unknown task {task!r}: choose one of {list(TASKS)}")
    return task


def check_method(method: str) -> str:
    if method not in METHODS:
        raise LoraDriftError(f"unknown method {method!r}: choose one of {list(METHODS)}")
    return method


def data_dir(profile: str) -> Path:
    """Committed results of a profile: what the book shows."""
    return repo_root() / "data" / profile


def artifacts_dir(profile: str) -> Path:
    """Heavy, regenerable artifacts of a profile (models, checkpoints, hidden states): git-ignored."""
    base = os.environ.get("LORADRIFT_ARTIFACTS")
    return (Path(base) if base else repo_root() / "artifacts") / profile


def searched_values(prof: dict, task: str, method: str) -> dict[str, Any]:
    """The values a search chose for one task x method (``training.per_task``); {} when it has none."""
    return ((prof["training"].get("per_task") or {}).get(task) or {}).get(method) or {}


def unit_config(prof: dict, task: str, method: str, seed: int) -> dict[str, Any]:
    """Everything that determines one training unit's result (recorded with it, hashed for staleness)."""
    check_task(task), check_method(method)
    train = {**prof["training"]["common"], **prof["training"][method], **searched_values(prof, task, method)}
    return {
        "profile": prof["name"], "task": task, "method": method, "seed": int(seed),
        "model": copy.deepcopy(prof["model"]),
        "data": {k: v for k, v in prof["data"].items() if k not in ("tasks", "source")}
        | {"sizes": prof["data"]["tasks"][task]},
        "training": train,
    }


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_id(task: str, method: str, seed: int) -> str:
    return f"{task}-{method}-s{seed}"


def write_json(path: Path, obj: Any) -> Path:
    """Write JSON atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False, default=_json_default)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_csv(path: Path, df) -> Path:
    """Write a pandas DataFrame as CSV atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_csv(tmp, index=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def _json_default(o):
    import numpy as np
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def environment() -> dict[str, Any]:
    """Hardware and software a result came from."""
    import importlib.metadata as md

    import torch
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # other work on the machine slows CPU timings: the 1/5/15-minute load averages say how much
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {},
    }
    for pkg in ("torch", "transformers", "peft", "datasets", "accelerate", "numpy", "scipy", "loradrift"):
        try:
            env["versions"][pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env["versions"][pkg] = None
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
