"""The result store: where every result of a profile lives, one atomic writer, and one answer to
"is this result current?".

Results a chapter shows live under ``data/<profile>/`` (committed); heavy, regenerable artifacts
(models, checkpoints, hidden states) under ``artifacts/<profile>/`` (ignored by git). ``RESULTS``
names every committed result once. A result records the *key* of the settings that made it
(``key(...)``: a hash of everything that changes the result); ``is_current`` compares that record
with the key the profile gives now, so a stage re-computes exactly what a changed setting touches.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import LoraDriftError

# result -> path under data/<profile>/ ({fields} filled by `result_path`)
RESULTS = {
    "data_stats": "data_stats.json",
    "baselines": "baselines.json",
    "sanity": "sanity.json",
    "bench": "bench.json",
    "run": "runs/{unit}.json",
    "runs": "runs",
    "search": "search/{task}-{method}.json",
    "search_summary": "search/summary.json",
    "drift": "drift_{task}.json",
    "drift_table": "drift_{task}_{table}.csv",
    "drift_summary": "drift_summary.json",
    "drift_timing": "drift_timing.json",
    "deploy_table": "deployment_{table}.csv",
    "deploy_meta": "deployment_meta.json",
    "study_time": "study_time.json",
}


def repo_root() -> Path:
    """The book's root: $LORADRIFT_ROOT, else the folder holding _quarto.yml above this file or the cwd."""
    if os.environ.get("LORADRIFT_ROOT"):
        return Path(os.environ["LORADRIFT_ROOT"]).resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for p in (start, *start.parents):
            if (p / "_quarto.yml").exists():
                return p
    return Path.cwd().resolve()


def data_dir(profile: str) -> Path:
    """Committed results of a profile: what the book shows."""
    return repo_root() / "data" / profile


def artifacts_dir(profile: str) -> Path:
    """Heavy, regenerable artifacts of a profile (models, checkpoints, hidden states): git-ignored."""
    base = os.environ.get("LORADRIFT_ARTIFACTS")
    return (Path(base) if base else repo_root() / "artifacts") / profile


def result_path(profile: str, result: str, **fields) -> Path:
    """The path of one named result (see RESULTS), e.g. ``result_path("cpu", "run", unit="rte-lora-s42")``."""
    if result not in RESULTS:
        raise KeyError(f"unknown result {result!r}: one of {sorted(RESULTS)}")
    return data_dir(profile) / RESULTS[result].format(**fields)


# ------------------------------------------------------------------------------ keys and currency
def key(settings: Any) -> str:
    """A short, stable hash of everything that determines a result (canonical JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recorded_key(path: Path, field: str = "key") -> str | None:
    """The key a result file recorded; None if it is absent or unreadable."""
    try:
        return read_json(path).get(field)
    except (LoraDriftError, FileNotFoundError, AttributeError):
        return None


def is_current(path: Path, expected: str, field: str = "key", companions=()) -> bool:
    """Does the result at ``path`` (and every companion file) exist, and was it made with ``expected``?"""
    return all(Path(p).exists() for p in companions) and recorded_key(path, field) == expected


# ------------------------------------------------------------------------------ atomic writes
def _atomic(path: Path, write) -> Path:
    """Write through ``write(tmp_path)`` into a temporary file beside ``path``, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, obj: Any) -> Path:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False, default=_json_default)
            f.write("\n")
    return _atomic(path, w)


def write_csv(path: Path, df) -> Path:
    """A pandas DataFrame as CSV."""
    return _atomic(path, lambda tmp: df.to_csv(tmp, index=False))


def write_text(path: Path, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_npz(path: Path, **arrays) -> Path:
    """Arrays as an uncompressed .npz."""
    import numpy as np

    def w(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return _atomic(path, w)


def replace_dir(tmp: Path, dest: Path) -> Path:
    """Put a fully written folder ``tmp`` in place of ``dest`` (the old one goes only once the new one is whole)."""
    dest = Path(dest)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def read_json(path: Path) -> Any:
    """Read a JSON result; a corrupt file is named in a one-line error that says how to recover."""
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise LoraDriftError(f"{path} is not valid JSON ({e}): restore it with git "
                             f"(`git checkout -- {path.name}`) or delete it and re-run its stage") from e


def _json_default(o):
    import numpy as np
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
