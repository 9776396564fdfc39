"""The drift stage's result tables: per-depth measures of one task, per-seed drift, and the
across-seed tests of the summary. Plain computation on pooled states and DataFrames (no files)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .extract import depth_names
from .measures import MEASURES, get_measure
from .settings import base_vs_model
from .stats import bootstrap_ci, compare_groups, holm, permutation_null

SUMMARIES = ("last", "mean")  # drift at the final-norm output; averaged over the decoder layers


def _base_vs_models(task, reps, rids, cfg) -> list[dict]:
    """Base vs each model at every depth, each configured pooling x measure, with a bootstrap interval
    for the measures registered with one."""
    base, rows = reps["base"], []
    names = depth_names(base["masked"].shape[0] - 2)
    for rid, method, seed in rids:
        for pooling, meas in base_vs_model(cfg):
            m = get_measure(meas)
            for d, depth in enumerate(names):
                X, Y = base[pooling][d], reps[rid][pooling][d]
                v, lo, hi = (bootstrap_ci(X, Y, m, n_boot=cfg["n_boot"], alpha=cfg["alpha"], seed=cfg["boot_seed"])
                             if m.interval else (float(m.fn(X, Y)), None, None))
                rows.append({"task": task, "model": rid, "method": method, "seed": seed, "pooling": pooling,
                             "measure": meas, "depth": d, "depth_name": depth, "value": v, "lo": lo, "hi": hi})
    if ("original", "original_study_similarity") in base_vs_model(cfg):
        # the original formula's ceiling: the base compared with itself
        rows += [{"task": task, "model": "base", "method": "base", "seed": None, "pooling": "original",
                  "measure": "original_study_similarity", "depth": d, "depth_name": depth,
                  "value": MEASURES["original_study_similarity"].fn(X, X), "lo": None, "hi": None}
                 for d, depth in enumerate(names) for X in [base["original"][d]]]
    return rows


def control_pairs(rids, compare) -> list[tuple[str, str, str]]:
    """(kind, a, b): two seeds of one method (``within_<method>``), and a model of each compared method (``across``)."""
    by_method = {}
    for rid, m, _ in rids:
        by_method.setdefault(m, []).append(rid)
    pairs = [(f"within_{m}", ids[i], ids[j]) for m, ids in by_method.items()
             for i in range(len(ids)) for j in range(i + 1, len(ids))]
    a, b = compare
    return pairs + [("across", x, y) for x in by_method.get(a, []) for y in by_method.get(b, [])]


def task_measures(task: str, reps: dict, rids: list, cfg: dict):
    """Per-depth measures of one task -> (layers, pairs, null) DataFrames.

    layers: base vs each model (`_base_vs_models`), plus the base's self-similarity under the
    original's formula. pairs: model vs model (same method different seeds, and across the compared
    methods) on the controls' pooling. null: base vs the first seed of each method with the example
    pairing shuffled.
    """
    ctl, base = cfg["controls"], reps["base"]
    names = depth_names(base["masked"].shape[0] - 2)
    pairs = [{"task": task, "kind": kind, "a": x, "b": y, "pooling": ctl["pooling"], "measure": meas, "depth": d,
              "depth_name": depth, "value": get_measure(meas).fn(reps[x][ctl["pooling"]][d], reps[y][ctl["pooling"]][d])}
             for kind, x, y in control_pairs(rids, cfg["compare"]) for d, depth in enumerate(names)
             for meas in ctl["measures"]]
    first = {}
    for rid, m, _ in rids:
        first.setdefault(m, rid)
    null = []
    for m, rid in first.items():
        for d, depth in enumerate(names):
            X, Y = base[ctl["pooling"]][d], reps[rid][ctl["pooling"]][d]
            for meas in ctl["measures"]:
                nl = permutation_null(X, Y, meas, n_perm=cfg["n_perm"], seed=cfg["boot_seed"])
                null.append({"task": task, "model": rid, "method": m, "pooling": ctl["pooling"], "measure": meas,
                             "depth": d, "depth_name": depth, "null_mean": float(np.nanmean(nl)),
                             "null_q95": float(np.nanquantile(nl, 0.95)), "null_max": float(np.nanmax(nl)),
                             "n_perm": cfg["n_perm"]})
    return pd.DataFrame(_base_vs_models(task, reps, rids, cfg)), pd.DataFrame(pairs), pd.DataFrame(null)


def to_drift(measure: str, value):
    """1 - similarity, or a distance as it is (an unregistered measure counts as a similarity)."""
    m = MEASURES.get(measure)
    return m.drift(value) if m else 1 - value


def seed_drifts(layers: pd.DataFrame) -> pd.DataFrame:
    """Per (task, model, pooling, measure): drift (`to_drift`) at the final-norm output (``last``;
    what the classifier reads), at the last decoder layer, and averaged over the decoder layers (``mean``)."""
    df = layers[layers["method"] != "base"]
    out = []
    for (task, model, method, seed, pooling, meas), g in df.groupby(
            ["task", "model", "method", "seed", "pooling", "measure"], sort=False):
        g = g.sort_values("depth")
        dec = g[g["depth_name"].str.startswith("layer_")]
        out.append({"task": task, "model": model, "method": method, "seed": int(seed), "pooling": pooling,
                    "measure": meas, "last": float(to_drift(meas, g["value"].iloc[-1])),
                    "last_decoder": float(to_drift(meas, dec["value"].iloc[-1])),
                    "mean": float(to_drift(meas, dec["value"].mean()))})
    return pd.DataFrame(out)


def seed_tests(sd: pd.DataFrame, tasks, cfg: dict) -> list[dict]:
    """The claims: per task, (pooling, measure) and summary, the compared methods' per-seed drift
    (Welch, exact permutation test, Hedges' g), Holm-adjusted over every test listed."""
    a, b = cfg["compare"]
    tests = []
    for task in tasks:
        for pooling, meas in cfg["claims"]:
            g = sd[(sd["task"] == task) & (sd["pooling"] == pooling) & (sd["measure"] == meas)]
            for summary in SUMMARIES:
                va, vb = g[g["method"] == a][summary].to_numpy(), g[g["method"] == b][summary].to_numpy()
                if len(va) >= 2 and len(vb) >= 2:
                    tests.append({"task": task, "pooling": pooling, "measure": meas, "summary": summary,
                                  "claim": f"{a} drift != {b} drift ({meas}, {summary})", **compare_groups(va, vb)})
    if tests:
        for t, hw, hp in zip(tests, holm([t["welch_p"] for t in tests]), holm([t["perm_p"] for t in tests])):
            t["welch_p_holm"], t["perm_p_holm"] = float(hw), float(hp)
    return tests


def seed_noise(pairs: pd.DataFrame) -> list[dict]:
    """Seed noise vs method difference at the final-norm output: similarity of two models of the same
    method (different seeds) and of two models of different methods."""
    last = pairs[pairs["depth"] == pairs.groupby("task")["depth"].transform("max")]
    return (last.groupby(["task", "measure", "kind"])["value"].agg(["mean", "min", "max", "count"])
            .reset_index().to_dict("records"))
