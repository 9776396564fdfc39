"""One-off migration (issue #12): give the committed drift results the new currency keys.

Until now a task's drift results recorded a ``fingerprint`` that ignored the measures, poolings and
controls (they were constants in drift.py); now they record ``key`` (`currency.task_key`), which
holds every setting that changes them. This script rewrites only that field, and only after
checking that the file's results were made with exactly the profile's settings:

1. the old fingerprint, recomputed with the old formula from the profile as it is now, equals the
   recorded one (so the trained units and the extraction settings are the profile's);
2. the config recorded in the JSON equals the profile's drift settings, key by key;
3. the measures and poolings present in the CSVs are the profile's ``drift.measures`` (base vs
   model), ``drift.controls`` (pairs and null: pooling, measures, n_perm) and ``drift.compare``.

drift_summary.json gets its ``key`` (`currency.summary_key`) after checking that its tests are the
profile's claims x (last, mean), comparing ``compare[0]`` (mean_a) with ``compare[1]`` (mean_b).

    python -m loradrift.drift.migrate_keys cpu
"""
from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pandas as pd

from ..config import load_profile
from ..store import read_json, result_path, write_json
from .currency import summary_key, task_key, task_rids, unit_fingerprint
from .settings import base_vs_model, drift_config
from .tables import SUMMARIES


def _old_fingerprint(prof, cfg_old, task) -> str:
    """drift.py's task_fingerprint before the refactor (c306580), from the recorded config."""
    settings = {"task": task, "model": prof["model"], "data": {k: v for k, v in prof["data"].items() if k != "source"},
                "max_examples": cfg_old["max_examples"].get(task), "sample_seed": cfg_old["sample_seed"],
                "original_pad_positions": cfg_old["original_pad_positions"],
                "ppl": [cfg_old["ppl_chunks"], cfg_old["ppl_chunk_len"]],
                "intruders": [cfg_old["intruder_k"], cfg_old["intruder_threshold"], cfg_old["intruder_modules"]],
                "merge_check_examples": cfg_old["merge_check_examples"]}
    obj = {"settings": settings, "cfg": cfg_old, "units": [unit_fingerprint(prof, r) for r, _, _ in task_rids(prof, task)]}
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"not migrated: {what}")
    print(f"  ok: {what}")


def check_task(prof, cfg, task) -> dict:
    rec = read_json(result_path(prof["name"], "drift", task=task))
    csv = lambda t: pd.read_csv(result_path(prof["name"], "drift_table", task=task, table=t))  # noqa: E731
    _check(rec.get("fingerprint") == _old_fingerprint(prof, rec["config"], task), "old fingerprint matches the profile")
    _check(all(cfg[k] == v for k, v in rec["config"].items()), "recorded config equals the profile's drift settings")
    lay, pairs, null = csv("layers"), csv("pairs"), csv("null")
    models = lay[lay.method != "base"]
    _check(set(zip(models.pooling, models.measure)) == set(base_vs_model(cfg)), "base-vs-model measures = drift.measures")
    _check(set(lay.pooling) == set(cfg["poolings"]), "poolings = drift.poolings")
    ctl = cfg["controls"]
    for name, df in (("pairs", pairs), ("null", null)):
        _check(set(df.pooling) == {ctl["pooling"]} and set(df.measure) == set(ctl["measures"]),
               f"{name}: pooling and measures = drift.controls")
    _check(set(null.n_perm) == {cfg["n_perm"]}, "null: n_perm")
    a, b = cfg["compare"]
    across = pairs[pairs.kind == "across"]
    _check(across.a.str.contains(f"-{a}-").all() and across.b.str.contains(f"-{b}-").all(), "across pairs = drift.compare")
    return rec


def check_summary(prof, cfg, tasks) -> dict:
    summ = read_json(result_path(prof["name"], "drift_summary"))
    tests, sd = pd.DataFrame(summ["tests"]), pd.DataFrame(summ["seed_drifts"])
    want = {(t, p, m, s) for t in tasks for p, m in cfg["claims"] for s in SUMMARIES}
    _check(set(zip(tests.task, tests.pooling, tests.measure, tests.summary)) == want and len(tests) == len(want),
           "summary tests = drift.claims x (last, mean) for every task")
    a, b = cfg["compare"]
    for t in summ["tests"]:
        g = sd[(sd.task == t["task"]) & (sd.pooling == t["pooling"]) & (sd.measure == t["measure"])]
        ok = np.isclose(g[g.method == a][t["summary"]].mean(), t["mean_a"]) and \
            np.isclose(g[g.method == b][t["summary"]].mean(), t["mean_b"])
        if not ok:
            _check(False, f"summary test {t['task']} {t['measure']} {t['summary']} compares {a} with {b}")
    _check(True, "summary tests compare drift.compare[0] (mean_a) with drift.compare[1] (mean_b)")
    return summ


def migrate(profile: str) -> None:
    prof = load_profile(profile)
    cfg = drift_config(prof)
    tasks = [t for t in prof["tasks"] if result_path(prof["name"], "drift", task=t).exists()]
    for task in tasks:
        print(f"{task}:")
        rec = check_task(prof, cfg, task)
        new = {("key" if k == "fingerprint" else k): (task_key(prof, task, cfg) if k == "fingerprint" else v)
               for k, v in rec.items()}
        write_json(result_path(prof["name"], "drift", task=task), new)
    print("summary:")
    summ = check_summary(prof, cfg, tasks)
    out = {}
    for k, v in summ.items():
        out[k] = v
        if k == "profile":
            out["key"] = summary_key(prof, tasks, cfg)
    write_json(result_path(prof["name"], "drift_summary"), out)


if __name__ == "__main__":
    migrate(sys.argv[1] if len(sys.argv) > 1 else "cpu")
