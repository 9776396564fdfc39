"""The drift stage: for every task whose training units are done, compute its drift results (or
skip them when they are current), then the across-seed summary.

Results: ``data/<profile>/drift_<task>.json`` (+ ``_layers.csv``, ``_pairs.csv``, ``_null.csv``,
``_intruders.csv``, ``_diagnostics.csv``), ``drift_summary.json``, ``drift_timing.json``. Everything is resumable: a task
whose key (`currency.task_key`) did not change is skipped without loading a model, and pooled
states are cached per model (`records`).
"""
from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pandas as pd

from ..config import drift_units, environment, load_profile, run_id
from ..store import artifacts_dir, read_json, result_path, write_csv, write_json
from ..tasks import task_metric
from .currency import (TABLES, computed_tasks, extract_settings, is_current, summary_is_current, summary_key,
                       task_key, task_rids)
from .extract import depth_names
from .forgetting import forgetting_rows, wikitext_path
from .records import Base, TaskContext, ensure_model, timed
from .settings import drift_config
from .diagnostics import task_diagnostics
from .tables import seed_drifts, seed_noise, seed_tests, task_measures


def drift_sample(prof: dict, task: str, cfg: dict, glue_source=None) -> dict:
    """The task's fixed drift sample: test-split indices (seeded subsample if capped), texts, hash."""
    from ..data import study_splits, texts
    test = study_splits(prof, task, glue_source)["test"]
    n = len(test)
    cap = cfg["max_examples"].get(task)
    idx = np.arange(n) if not cap or cap >= n else np.sort(
        np.random.default_rng(cfg["sample_seed"]).choice(n, int(cap), replace=False))
    sub = test.select(idx.tolist())
    t = texts(task, sub)
    return {"indices": idx.tolist(), "texts": t, "n_test": n,
            "hash": hashlib.sha256("\n".join(t).encode()).hexdigest()[:16]}


def task_units_done(prof: dict, task: str) -> tuple[bool, list[str]]:
    """(all units of the task done?, the ones that are not, with their status)."""
    from ..train import unit_status
    bad = [f"{rid} ({st})" for rid, m, s in drift_units(prof, task) if (st := unit_status(prof, task, m, s)) != "done"]
    return not bad, bad


def run_drift(prof: dict | str, tasks=None, glue_source=None) -> dict:
    """The drift stage for the profile's tasks (or ``tasks``); skips tasks whose units are not all
    done, and tasks whose results are current. Returns {task: "computed" | "current" | "skipped: ..."}."""
    prof = load_profile(prof) if isinstance(prof, str) else prof
    cfg = drift_config(prof)
    status, base = {}, Base(prof)
    for task in tasks or prof["tasks"]:
        ok, bad = task_units_done(prof, task)
        if not ok:
            status[task] = "skipped: units not done: " + ", ".join(bad)
            print(f"[drift {task}] skipped: not all training units are done: {', '.join(bad)}")
            continue
        key = task_key(prof, task, cfg)
        if is_current(prof, task, key):
            status[task] = "current"
            print(f"[drift {task}] results are current: drift_{task}.json (skipped)")
            continue
        run_task(prof, cfg, task, key, base, glue_source)
        status[task] = "computed"
    done = computed_tasks(prof)
    if done and not summary_is_current(prof, done, cfg):
        summarise(prof, cfg)
    return status


def run_task(prof: dict, cfg: dict, task: str, key: str, base: Base, glue_source=None) -> None:
    """One task's drift results from its models' (cached or computed) records, written to data/."""
    rec = {}
    with timed(rec, "this_call"):
        sample = drift_sample(prof, task, cfg, glue_source)
        ctx = TaskContext(prof, cfg, task, base, sample, extract_settings(prof, cfg, task),
                          artifacts_dir(prof["name"]) / "drift" / task, wikitext_path(cfg))
        rids = task_rids(prof, task)
        reps, recs = {}, {}
        for rid, method, _ in [("base", "base", None)] + rids:
            reps[rid], recs[rid] = ensure_model(ctx, rid, method)
        print(f"[drift {task}] measures")
        with timed(rec, "measures"):
            tables = task_measures(task, reps, rids, cfg)
            diagnostics = task_diagnostics(task, reps, rids, cfg)
        intruders = pd.DataFrame([{"task": task, "model": rid, "method": m, "seed": s, **w}
                                  for rid, m, s in rids for w in recs[rid]["weights"]])
        for name, df in zip(TABLES, (*tables, intruders, diagnostics), strict=True):
            write_csv(result_path(prof["name"], "drift_table", task=task, table=name), df)
        record = _task_record(prof, cfg, task, key, sample, reps, recs, rids, rec)
    record["timing"]["this_call"] = rec["this_call"]
    write_json(result_path(prof["name"], "drift", task=task), record)
    print(f"[drift {task}] done in {rec['this_call']['wall_s']:.0f} s (cpu {rec['this_call']['cpu_s']:.0f} s)")


def _task_record(prof, cfg, task, key, sample, reps, recs, rids, rec) -> dict:
    """drift_<task>.json: the key, settings, sample, checks, forgetting and timing of one task."""
    n_layers = reps["base"]["masked"].shape[0] - 2
    per_model = {rid: {k: r.get(k) for k in ("extract", "ppl_time", "weights_time")} for rid, r in recs.items()}
    # the cost of computing this task from scratch = the per-model records + the measures
    total = {k: sum((v.get(p) or {}).get(k, 0.0) for v in per_model.values() for p in v) + rec["measures"][k]
             for k in ("wall_s", "cpu_s")}
    return {
        "task": task, "profile": prof["name"], "key": key, "config": cfg,
        "sample": {"n": len(sample["indices"]), "n_test": sample["n_test"], "hash": sample["hash"],
                   "indices": sample["indices"], "tokens": recs["base"]["extract"]["tokens"],
                   "t_max": recs["base"].get("t_max")},
        "n_layers": n_layers, "depths": depth_names(n_layers), "hidden_size": int(reps["base"]["masked"].shape[2]),
        "models": [{"id": r, "method": m, "seed": s} for r, m, s in rids],
        "merge_check": {rid: recs[rid]["merge_check"] for rid, _, _ in rids if "merge_check" in recs[rid]},
        "sinks": {"rule": f"residual norm > {cfg['sink_ratio']} x the example's median at some decoder layer "
                          "(found on the base model; left out of `masked` pooling for every model)",
                  "base": recs["base"]["sink_summary"],
                  "models": {rid: recs[rid]["sink_summary"] for rid, _, _ in rids}},
        "original_pooling_check": recs["base"].get("original_pooling_check"),
        "forgetting": {"text": str(wikitext_path(cfg).name), "chunks": cfg["ppl_chunks"],
                       "chunk_len": cfg["ppl_chunk_len"], "base_chunk_nll": recs["base"]["chunk_nll"],
                       "models": forgetting_rows(recs["base"]["chunk_nll"],
                                                 [(r, m, s, recs[r]["chunk_nll"]) for r, m, s in rids], cfg)},
        "timing": {"per_model": per_model, "measures": rec["measures"], "total_from_scratch": total,
                   "this_call": None, "loadavg": os.getloadavg()},
        "environment": environment(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def summarise(prof: dict | str, cfg: dict | None = None) -> dict | None:
    """Across-seed statistics over every task with drift results -> data/<profile>/drift_summary.json
    and drift_timing.json. Cheap: reads the per-task CSV/JSON files only."""
    prof = load_profile(prof) if isinstance(prof, str) else prof
    cfg, name = cfg or drift_config(prof), prof["name"]
    path = lambda r, **f: result_path(name, r, **f)  # noqa: E731
    tasks = computed_tasks(prof)
    if not tasks:
        return None
    read = lambda table: pd.concat([pd.read_csv(path("drift_table", task=t, table=table)) for t in tasks],  # noqa: E731
                                   ignore_index=True)
    sd = seed_drifts(read("layers"))
    runs = {m: read_json(path("run", unit=m)) for m in sd["model"].unique() if path("run", unit=m).exists()}
    sd["test_score"] = [runs[m]["test"][task_metric(t)] if m in runs else None for m, t in zip(sd["model"], sd["task"])]
    sd["test_accuracy"] = [runs[m]["test"]["accuracy"] if m in runs else None for m in sd["model"]]
    tests = seed_tests(sd, tasks, cfg)
    summary = {"profile": name, "key": summary_key(prof, tasks, cfg), "tasks": tasks,
               "seed_drifts": sd.to_dict("records"), "tests": tests, "primary": cfg["primary"],
               "holm_family": len(cfg["primary"] or []), "seed_noise": seed_noise(read("pairs")),
               "note": "drift = 1 - similarity (a distance: its value); depth final_norm = the final-norm output "
                       "(column 'last'), decoder_mean = the mean over the decoder layers ('mean'); p-values "
                       "two-sided; family 'primary' (pre-registered in drift.primary): Holm over those only; "
                       "family 'exploratory': unadjusted p and Benjamini-Hochberg q within the exploratory tests"}
    write_json(path("drift_summary"), summary)
    write_json(path("drift_timing"), _timing({t: read_json(path("drift", task=t)) for t in tasks}, name))
    return summary


def _timing(per_task: dict, name: str) -> dict:
    timing = {t: j["timing"]["total_from_scratch"] for t, j in per_task.items()}
    return {
        "profile": name, "tasks": list(per_task), "per_task": timing,
        "tokens_run": {t: sum(v["extract"]["tokens_run"] for v in j["timing"]["per_model"].values())
                       for t, j in per_task.items()},
        "total_wall_s": sum(v["wall_s"] for v in timing.values()),
        "total_cpu_s": sum(v["cpu_s"] for v in timing.values()), "cores": os.cpu_count(),
        "note": "sum over tasks of the per-model extraction, perplexity and weight-space times plus the measures, "
                "as recorded when each piece was computed (cached pieces keep their original time). wall_s is "
                "inflated when the machine was shared; cpu_s / cores estimates the wall time on an idle machine.",
        "environment": {t: j.get("environment") for t, j in per_task.items()}}
