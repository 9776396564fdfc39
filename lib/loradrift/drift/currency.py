"""Is a drift result current? The keys of the drift stage's results (`loradrift.store.key`).

- A task's results (``drift_<task>.json`` and its CSVs) record the key of every setting that
  changes them: the model, the data settings, the task's sample, every drift setting of the profile
  except the summary-only ``primary`` and ``exploratory`` (so measures, poolings, the sink rule, the
  dominance threshold, bootstrap and permutation counts...),
  and each trained unit it reads (its config hash and its weights' fingerprint: `store.unit_identity`).
- ``drift_summary.json`` records the key of the endpoints it tests and of the tasks' keys it summarises.
- A model's cached pooled states (``artifacts/``) record the key of what extraction depends on.
"""
from __future__ import annotations

from ..config import drift_units
from ..store import is_current as _store_is_current
from ..store import key, read_or, recorded_key, result_path, unit_identity
from .settings import SUMMARY_ONLY, drift_config

TABLES = ("layers", "pairs", "null", "intruders", "diagnostics")


def task_rids(prof: dict, task: str) -> list[tuple[str, str, int]]:
    """(run id, method, seed) of every unit a task's drift reads."""
    return drift_units(prof, task)


def unit_fingerprint(prof: dict, rid: str) -> dict:
    """What a trained unit contributes to a key (`store.unit_identity`: its config hash and its weights' bytes);
    ``missing`` when its result does not exist or cannot be read (named in a warning)."""
    rec = read_or(result_path(prof["name"], "run", unit=rid))
    if rec is None:
        return {"id": rid, "missing": True}
    return {"id": rid, **unit_identity(rec)}


def extract_settings(prof: dict, cfg: dict, task: str) -> dict:
    """What one model's cached pooled states, forgetting losses and weight change depend on."""
    return {"task": task, "model": prof["model"], "data": {k: v for k, v in prof["data"].items() if k != "source"},
            "max_examples": cfg["max_examples"].get(task), "sample_seed": cfg["sample_seed"],
            "original_pad_positions": cfg["original_pad_positions"], "ppl": [cfg["ppl_chunks"], cfg["ppl_chunk_len"]],
            "intruders": [cfg["intruder_k"], cfg["intruder_thresholds"], cfg["intruder_modules"]],
            "merge_check_examples": cfg["merge_check_examples"], "poolings": cfg["poolings"],
            "sink_ratio": cfg["sink_ratio"]}


def task_settings(prof: dict, task: str, cfg: dict | None = None) -> dict:
    """Every setting a task's drift results depend on (what `task_key` hashes)."""
    cfg = cfg or drift_config(prof)
    return {"extract": extract_settings(prof, cfg, task),
            "drift": {k: v for k, v in cfg.items() if k not in SUMMARY_ONLY},
            "units": [unit_fingerprint(prof, r) for r, _, _ in task_rids(prof, task)]}


def task_key(prof: dict, task: str, cfg: dict | None = None) -> str:
    return key(task_settings(prof, task, cfg))


def task_paths(prof: dict, task: str) -> tuple:
    """(drift_<task>.json, its CSV tables)."""
    name = prof["name"]
    return (result_path(name, "drift", task=task),
            *[result_path(name, "drift_table", task=task, table=t) for t in TABLES])


def computed_tasks(prof: dict) -> list[str]:
    """The profile's tasks that have drift results (the JSON and its layers table), in profile order."""
    return [t for t in prof["tasks"] if all(p.exists() for p in task_paths(prof, t)[:2])]


def is_current(prof: dict, task: str, expected: str | None = None) -> bool:
    """Were the task's drift results computed with the profile's current settings and trained units?
    False when they are absent, unreadable, or made from other settings or since re-trained units."""
    path, *tables = task_paths(prof, task)
    return _store_is_current(path, expected or task_key(prof, task), companions=tables)


def summary_key(prof: dict, tasks: list[str], cfg: dict | None = None) -> str:
    """What drift_summary.json depends on: the endpoints it tests and the results of the tasks it reads."""
    cfg = cfg or drift_config(prof)
    return key({"primary": cfg["primary"], "exploratory": cfg["exploratory"], "compare": cfg["compare"],
                "tasks": {t: recorded_key(result_path(prof["name"], "drift", task=t)) for t in tasks}})


def summary_is_current(prof: dict, tasks: list[str], cfg: dict | None = None) -> bool:
    name = prof["name"]
    return _store_is_current(result_path(name, "drift_summary"), summary_key(prof, tasks, cfg),
                             companions=[result_path(name, "drift_timing")])
