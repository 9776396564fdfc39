"""What the Setup chapter shows about the study's speed and its precision: numbers only.

- ``bench_frames``: the device's matrix-multiply ceilings and the measured training and extraction
  rates against them (``data/<profile>/bench.json``, written by ``python -m loradrift bench``).
- ``precision_check``: units trained in bf16 autocast (the ``cpu-bf16`` profile) against the same units
  in fp32 (the ``cpu`` profile): test metric and drift per method, the difference with its Welch 95%
  interval and the seeds' spread, so that a reader sees whether bf16 changes the science.
- ``unit_rates``: real training tokens per second of a unit's whole wall time (loading, evaluations,
  checkpoints and saving included) and the share of that time outside optimizer steps, per profile and
  method, with the machine's load average while the units ran.
"""
from __future__ import annotations

import math

from .config import load_profile
from .store import read_json, result_path


def bench_result(profile: str) -> dict | None:
    path = result_path(profile, "bench")
    return read_json(path) if path.exists() else None


def bench_frames(bench: dict):
    """(ceilings: best GFLOP/s per dtype and shape, throughput: one row per method x precision)."""
    import pandas as pd
    ceil = pd.DataFrame(bench["ceilings"])
    thr = pd.DataFrame(bench["throughput"])
    return ceil, thr


def bf16_speedup(bench: dict) -> dict[str, float]:
    """bf16 tokens/s over fp32 tokens/s per method (and ``extract``), measured side by side."""
    rate = {(r["method"], r["precision"]): r["tokens_per_s"] for r in bench["throughput"]}
    return {m: rate[(m, "bf16")] / rate[(m, "fp32")] for m, p in rate if p == "fp32" and (m, "bf16") in rate}


def _runs(profile: str, task: str):
    from .findings import runs_frame
    r = runs_frame(profile)
    return r[(r.task == task) & (r.status == "done")] if not r.empty else r


def _final_drift(profile: str, task: str, pooling: str, measure: str):
    """{(method, seed): 1 - similarity at the final norm} from a profile's committed drift results."""
    from .drift import load_results
    res = load_results(profile)
    L = res["layers"]
    if L.empty:
        return {}
    g = L[(L.task == task) & (L.pooling == pooling) & (L.measure == measure) & (L.depth_name == "final_norm")
          & (L.method != "base")]
    return {(m, int(s)): 1 - float(v) for m, s, v in zip(g.method, g.seed, g.value)}


def _compare(a, b) -> dict:
    """Means, sds, b - a and its Welch 95% interval (NaN with fewer than two values a side)."""
    import numpy as np
    from scipy import stats
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = len(a) >= 2 and len(b) >= 2
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95) if ok else None
    sd = lambda x: x.std(ddof=1) if len(x) >= 2 else math.nan  # noqa: E731
    return {"n_a": len(a), "mean_a": a.mean() if len(a) else math.nan, "sd_a": sd(a),
            "n_b": len(b), "mean_b": b.mean() if len(b) else math.nan, "sd_b": sd(b),
            "diff": b.mean() - a.mean() if len(a) and len(b) else math.nan,
            "ci_low": ci.low if ok else math.nan, "ci_high": ci.high if ok else math.nan,
            "agree": bool(ci.low <= 0 <= ci.high) if ok else None}


QUANTITIES = (("test metric", None, None), ("drift, final norm, last token, 1 − debiased CKA", "last", "debiased_cka"),
              ("drift, final norm, masked mean, 1 − CKA", "masked", "cka"))


def precision_check(fp32: str = "cpu-v1", bf16: str = "cpu-bf16", task: str | None = None):
    """One row per method x quantity: the fp32 units (a) against the bf16 units (b) of the same task,
    seeds and settings. ``agree``: the difference's Welch 95% interval contains 0 (None without data)."""
    import pandas as pd
    task = task or load_profile(bf16)["tasks"][0]
    ra, rb = _runs(fp32, task), _runs(bf16, task)
    rows = []
    score = lambda r: {} if r.empty else {(m, int(s)): v for m, s, v in zip(r.method, r.seed, r.test_score)}  # noqa: E731
    for method in load_profile(bf16)["methods"]:
        for what, pooling, measure in QUANTITIES:
            da, db = ((score(ra), score(rb)) if pooling is None else
                      (_final_drift(fp32, task, pooling, measure), _final_drift(bf16, task, pooling, measure)))
            a = {s: v for (m, s), v in da.items() if m == method}
            b = {s: v for (m, s), v in db.items() if m == method}
            paired = [abs(b[s] - a[s]) for s in a if s in b]
            rows.append({"task": task, "method": method, "quantity": what, **_compare(list(a.values()), list(b.values())),
                         "max_paired_diff": max(paired) if paired else math.nan})
    return pd.DataFrame(rows)


def unit_rates(profiles=("cpu-v1", "cpu-bf16"), task: str | None = None):
    """One row per unit: real training tokens per second of its whole wall time, the share of that
    time outside optimizer steps, and the 1-minute load average it recorded (a CPU timing is only
    comparable with others made at a similar load)."""
    import pandas as pd

    from .train import load_runs
    rows = []
    for prof in profiles:
        for r in load_runs(prof):
            if task and r["task"] != task or r.get("status") != "done":
                continue
            rows.append({"profile": prof, "task": r["task"], "method": r["method"], "seed": r["seed"],
                         "precision": r.get("precision", "fp32"),
                         "tokens_per_wall_s": r["train_tokens_real"] / r["wall_time_s"],
                         "overhead": 1 - r["train_step_s"] / r["wall_time_s"],
                         "load": (r["environment"].get("load_avg") or [math.nan])[0]})
    return pd.DataFrame(rows)


def rate_gain(rates, cores: int = 2) -> dict[str, float]:
    """Per method: the mean rate of bf16 units over that of fp32 units, counting only units that ran
    with a load average of at most ``cores`` + 0.25 (the machine otherwise idle); NaN without both."""
    if rates.empty:
        return {}
    quiet = rates[rates.load <= cores + 0.25]
    mean = quiet.groupby(["method", "precision"]).tokens_per_wall_s.mean()
    return {m: mean.get((m, "bf16-autocast"), math.nan) / mean.get((m, "fp32"), math.nan)
            for m in rates.method.unique()}


def extraction_check(bench: dict | None, profile: str = "cpu-bf16") -> dict:
    """Does bf16 extraction leave the drift measures within their noise? For every (method, pooling,
    measure, depth) the difference between bf16 and fp32 extraction of the same model
    (``bench.extraction_agreement``) against the seeds' sd of that drift in the profile's committed
    results. ``exceed``: cells where the difference is larger than that sd; ``worst``: the cell with
    the largest difference relative to the drift it measures."""
    import pandas as pd
    ext = (bench or {}).get("extraction")
    if not ext:
        return {}
    from .drift import load_results
    d = pd.DataFrame(ext["rows"])
    L = load_results(profile)["layers"]
    L = L[(L.task == ext["task"]) & (L.method != "base")].assign(drift=lambda x: 1 - x.value)
    sd = L.groupby(["method", "pooling", "measure", "depth"], as_index=False).drift.std().rename(columns={"drift": "seed_sd"})
    d = d.merge(sd, on=["method", "pooling", "measure", "depth"], how="left")
    d["relative"] = d["diff"] / d["fp32"].abs().clip(lower=1e-12)
    worst = d.loc[d.relative.idxmax()]
    return {"n": ext["n"], "seed": ext.get("seed"), "cells": len(d), "exceed": int((d["diff"] > d["seed_sd"]).sum()),
            "max_abs_diff": float(d["diff"].max()), "median_abs_diff": float(d["diff"].median()),
            "worst": {k: (v.item() if hasattr(v, "item") else v) for k, v in worst[
                ["method", "pooling", "measure", "depth", "fp32", "bf16", "diff", "seed_sd", "relative"]].items()}}
