"""The result store: where every result of a profile lives, one atomic writer, one answer to
"is this result current?", tolerant readers for display, and locks on what a process writes.

Results a chapter shows live under ``data/<profile>/`` (committed); heavy, regenerable artifacts
(models, checkpoints, hidden states) under ``artifacts/<profile>/`` (ignored by git). ``RESULTS``
names every committed result once. A result records the *key* of the settings that made it
(``key(...)``: a hash of everything that changes the result); ``is_current`` compares that record
with the key the profile gives now, so a stage re-computes exactly what a changed setting touches.

Readers of results for display (``read_or``, ``read_csv_or``) carry on without a file they cannot
read and name it in an ``UnreadableResult`` warning (the book shows it as a note). Writers hold a
``lock`` on what they write (a training unit, a stage's results): a second process refuses with
one line naming the holder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
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
    "memory_plan": "memory_plan.json",   # loradrift/plan.py: the l4 profile's plans
    "time_plan": "time_plan.json",
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


def folder_fingerprint(folder: Path, pattern: str = "*") -> str:
    """A hash of every file in a folder (or of those matching ``pattern``), names, sizes and bytes: which saved
    model a result belongs to."""
    folder, h = Path(folder), hashlib.sha256()
    for f in sorted(p for p in folder.rglob(pattern) if p.is_file()):
        h.update(f"{f.relative_to(folder)}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def weights_fingerprint(folder: Path) -> str | None:
    """A hash of a saved model's weight files only (``*.safetensors``): the same weights give the same hash
    whatever the configs and tokenizer files beside them say; None when the folder holds no weights."""
    return folder_fingerprint(folder, "*.safetensors") if any(Path(folder).rglob("*.safetensors")) else None


IDENTITY = ("config_hash", "weights_fingerprint", "model_fingerprint", "finished_at")  # what unit_identity may give


def unit_identity(rec: dict) -> dict:
    """What a trained unit's result contributes to the keys of the results made from its model: its config hash
    and its weights' fingerprint (the saved tensors' bytes), so that a re-run that reproduces the weights bit for
    bit leaves them current and one that does not makes them stale. Older results contribute what they
    recorded: the whole model folder's fingerprint, else their finish time (any re-run changes either)."""
    for field in ("weights_fingerprint", "model_fingerprint"):
        if rec.get(field):
            return {"config_hash": rec.get("config_hash"), field: rec[field]}
    return {"config_hash": rec.get("config_hash"), "finished_at": rec.get("finished_at")}


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
    dest.parent.mkdir(parents=True, exist_ok=True)
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
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:  # invalid JSON, or bytes that are not UTF-8 (a file cut inside a character)
        raise LoraDriftError(f"{path} is not valid JSON ({e}): restore it with git "
                             f"(`git checkout -- {path.name}`) or delete it and re-run its stage") from e


# ------------------------------------------------------------------------------ readers for display
class UnreadableResult(UserWarning):
    """A result file a reader could not read; it carried on without it (``report`` shows it as a note)."""


def unreadable(message: str, stacklevel: int = 3) -> None:
    """Report a result a reader skips (once per message and place, as warnings are)."""
    warnings.warn(message, UnreadableResult, stacklevel=stacklevel)


def read_or(path: Path, default: Any = None) -> Any:
    """A JSON result, or ``default`` when it is absent or unreadable (then named in a warning)."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        return read_json(path)
    except LoraDriftError as e:
        unreadable(f"{e}; shown without it")
        return default


def read_csv_or(path: Path, default=None):
    """A CSV result as a DataFrame, or ``default`` (an empty frame) when absent or unreadable (named in a warning)."""
    import pandas as pd
    path = Path(path)
    empty = pd.DataFrame() if default is None else default
    if not path.exists():
        return empty
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return empty
    except (pd.errors.ParserError, ValueError) as e:
        unreadable(f"{path} is not a valid CSV table ({type(e).__name__}: {str(e).splitlines()[0]}): restore it "
                   f"with git (`git checkout -- {path.name}`) or delete it and re-run its stage; shown without it")
        return empty


# ------------------------------------------------------------------------------ locks
_HELD: set[str] = set()   # the lock files this process holds: it may enter them again (a stage in `all`)


def lock_path(profile: str, what: str) -> Path:
    """The lock file of one thing a process writes (``unit-<id>``, ``stage-<name>``): artifacts/<profile>/locks/."""
    return artifacts_dir(profile) / "locks" / f"{what}.lock"


@contextlib.contextmanager
def lock(profile: str, what: str, doing: str = ""):
    """Hold the lock of ``what`` (an OS file lock, released when this process ends, even killed: a lock is never
    stale). A second process refuses at once with a ``LoraDriftError`` naming the holder (pid, host, since)."""
    from filelock import FileLock, Timeout
    path = lock_path(profile, what)
    if str(path) in _HELD:
        yield path
        return
    flock = FileLock(str(path), timeout=0)
    holder = path.with_name(path.name + ".holder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        flock.acquire()
    except Timeout:
        raise LoraDriftError(f"{what} is busy: {_describe_holder(holder)} (lock {path}); wait for it to finish "
                             "or stop that process, then run this again") from None
    except OSError as e:
        raise LoraDriftError(f"cannot take the lock {path} ({e.strerror or e}): make {path.parent} a writable "
                             "folder, then run again") from None
    _HELD.add(str(path))
    try:
        write_json(holder, {"pid": os.getpid(), "host": socket.gethostname(), "doing": doing,
                            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        yield path
    finally:
        _HELD.discard(str(path))
        holder.unlink(missing_ok=True)
        flock.release()


def _describe_holder(holder: Path) -> str:
    try:
        h = read_json(holder)
        return (f"held by pid {h['pid']} on {h['host']} since {h['since']}"
                + (f" ({h['doing']})" if h.get("doing") else ""))
    except (OSError, LoraDriftError, KeyError, TypeError):
        return "held by another process (it has not recorded itself yet)"


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
