"""The drift stage's result tables: per-depth measures of one task, per-seed drift, and the
across-seed tests of the summary. Plain computation on pooled states and DataFrames (no files)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from .extract import depth_names
from .grams import Grams
from .measures import MEASURES, get_measure
from .settings import DEPTHS, EXPLORATORY_DEPTHS, base_vs_model
from .stats import bh, bootstrap_ci, compare_groups, holm_family, permutation_null

SELF = ("original", "original_study_similarity")  # the original formula's ceiling: the base vs itself


def control_pairs(rids, compare) -> list[tuple[str, str, str]]:
    """(kind, a, b): two seeds of one compared method (``within_<method>``), and a model of each compared
    method (``across``). Other methods (a sweep's variants) get no pairs: the controls are about the comparison."""
    by_method = {}
    for rid, m, _ in rids:
        if m in compare:
            by_method.setdefault(m, []).append(rid)
    pairs = [(f"within_{m}", ids[i], ids[j]) for m, ids in by_method.items()
             for i in range(len(ids)) for j in range(i + 1, len(ids))]
    a, b = compare
    return pairs + [("across", x, y) for x in by_method.get(a, []) for y in by_method.get(b, [])]


def _first_seeds(rids) -> dict[str, str]:
    """method -> its first model: the null compares the base with these."""
    first = {}
    for rid, m, _ in rids:
        first.setdefault(m, rid)
    return first


def _poolings(cfg) -> list[str]:
    """The poolings some measure reads, in the configured order."""
    used = {p for p, _ in base_vs_model(cfg)} | {cfg["controls"]["pooling"]}
    return [p for p in cfg["poolings"] if p in used]


def _depth_values(values: dict, rep, d: int, pooling: str, rids, cfg) -> None:
    """Every measure of one (depth, pooling) into ``values``: base vs each model (with a bootstrap
    interval for the measures registered with one), the base vs itself under the original's formula,
    and, on the controls' pooling, the model pairs and the permutation null. ``rep(id)``: that
    model's representation (a cached `Gram`, or the array itself)."""
    ctl, base = cfg["controls"], rep("base")
    for rid, _, _ in rids:
        for meas in [m for p, m in base_vs_model(cfg) if p == pooling]:
            m = get_measure(meas)
            values["layers", rid, pooling, meas, d] = (
                bootstrap_ci(base, rep(rid), m, n_boot=cfg["n_boot"], alpha=cfg["alpha"], seed=cfg["boot_seed"])
                if m.interval else (float(m.value(base, rep(rid))), None, None))
            values["unmatched", rid, pooling, meas, d] = m.unmatched_value(base, rep(rid))
    if pooling == SELF[0] and SELF in base_vs_model(cfg):
        values["self", d] = MEASURES[SELF[1]].value(base, base)
    if pooling != ctl["pooling"]:
        return
    for kind, x, y in control_pairs(rids, cfg["compare"]):
        for meas in ctl["measures"]:
            values["pairs", x, y, meas, d] = get_measure(meas).value(rep(x), rep(y))
    for rid in _first_seeds(rids).values():
        for meas in ctl["measures"]:
            values["null", rid, meas, d] = permutation_null(base, rep(rid), meas, n_perm=cfg["n_perm"],
                                                            seed=cfg["boot_seed"])


def _rows(task, values, rids, cfg, names) -> tuple[list, list, list]:
    """The (layers, pairs, null) rows from `_depth_values`, in the tables' order."""
    ctl, depths = cfg["controls"], list(enumerate(names))
    layers = [{"task": task, "model": rid, "method": method, "seed": seed, "pooling": pooling, "measure": meas,
               "depth": d, "depth_name": depth, **dict(zip(("value", "lo", "hi"), values["layers", rid, pooling, meas, d])),
               "unmatched": values["unmatched", rid, pooling, meas, d]}
              for rid, method, seed in rids for pooling, meas in base_vs_model(cfg) for d, depth in depths]
    if SELF in base_vs_model(cfg):
        layers += [{"task": task, "model": "base", "method": "base", "seed": None, "pooling": SELF[0],
                    "measure": SELF[1], "depth": d, "depth_name": depth, "value": values["self", d],
                    "lo": None, "hi": None, "unmatched": None} for d, depth in depths]
    pairs = [{"task": task, "kind": kind, "a": x, "b": y, "pooling": ctl["pooling"], "measure": meas, "depth": d,
              "depth_name": depth, "value": values["pairs", x, y, meas, d]}
             for kind, x, y in control_pairs(rids, cfg["compare"]) for d, depth in depths for meas in ctl["measures"]]
    null = [{"task": task, "model": rid, "method": m, "pooling": ctl["pooling"], "measure": meas, "depth": d,
             "depth_name": depth, **_null_summary(values["null", rid, meas, d]), "n_perm": cfg["n_perm"]}
            for m, rid in _first_seeds(rids).items() for d, depth in depths for meas in ctl["measures"]]
    return layers, pairs, null


def _null_summary(nl) -> dict:
    return {"null_mean": float(np.nanmean(nl)), "null_q95": float(np.nanquantile(nl, 0.95)),
            "null_max": float(np.nanmax(nl))}


def task_measures(task: str, reps: dict, rids: list, cfg: dict, grams: Grams | None = None):
    """Per-depth measures of one task -> (layers, pairs, null) DataFrames.

    layers: base vs each model at every depth, each configured pooling x measure, with a bootstrap
    interval for the measures registered with one and, for those registered with a null over
    different examples (cosine), that null (``unmatched``); plus the base's self-similarity under
    the original's formula. pairs: model vs model (same method different seeds, and across the compared
    methods) on the controls' pooling. null: base vs the first seed of each method with the example
    pairing shuffled.

    The work runs one (depth, pooling) at a time through ``grams`` (a fresh `Grams` cache by
    default): each model's Gram matrix there is built once and read by every measure, interval and
    null, then dropped. ``Grams(enabled=False)``: every measure builds its own (the same numbers up to
    float64 rounding, slower).
    """
    grams = Grams() if grams is None else grams
    names = depth_names(reps["base"]["masked"].shape[0] - 2)
    values = {}
    for d in range(len(names)):
        for pooling in _poolings(cfg):
            _depth_values(values, lambda rid: grams.get((rid, d, pooling), reps[rid][pooling][d]),  # noqa: B023
                          d, pooling, rids, cfg)
            grams.clear()
    return tuple(pd.DataFrame(rows) for rows in _rows(task, values, rids, cfg, names))


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


def _endpoint_test(sd: pd.DataFrame, task: str, pooling: str, meas: str, depth: str, cfg: dict, family: str) -> dict:
    """One seed-level test: the compared methods' per-seed drift at ``depth`` (`settings.DEPTHS`),
    nan values left out; ``status`` ok, no_variance (both methods constant) or too_few_seeds (fewer
    than 2 finite values on a side: no p-values)."""
    a, b = cfg["compare"]
    col = DEPTHS[depth]
    g = sd[(sd["task"] == task) & (sd["pooling"] == pooling) & (sd["measure"] == meas)] if not sd.empty else sd
    va, vb = (g[g["method"] == m][col].dropna().to_numpy() if not g.empty else np.array([]) for m in (a, b))
    row = {"task": task, "pooling": pooling, "measure": meas, "depth": depth, "summary": col, "family": family,
           "claim": f"{a} drift != {b} drift ({task}, {pooling}, {meas}, {depth})"}
    if len(va) < 2 or len(vb) < 2:
        return {**row, "status": "too_few_seeds", "n_a": len(va), "n_b": len(vb), "welch_p": np.nan, "perm_p": np.nan}
    out = compare_groups(va, vb)
    return {**row, "status": "no_variance" if out["no_variance"] else "ok", **out}


def seed_tests(sd: pd.DataFrame, tasks, cfg: dict) -> list[dict]:
    """The seed-level tests of the compared methods' drift (Welch, exact permutation test, Hedges' g).

    family "primary": the profile's pre-registered endpoints (``drift.primary``, at most 3), each
    listed even without results (p nan), Holm-adjusted over the registered family only
    (``welch_p_holm``, ``perm_p_holm``). family "exploratory": every task with results x
    ``drift.exploratory`` (pooling, measure) x `settings.EXPLORATORY_DEPTHS`, less the primary ones,
    with unadjusted p-values and Benjamini-Hochberg q-values within the exploratory family
    (``welch_p_bh``, ``perm_p_bh``). A test with fewer than 2 seeds on a side is listed (primary) or
    left out (exploratory)."""
    primary = [(e["task"], e["pooling"], e["measure"], e["depth"]) for e in cfg["primary"] or []]
    tests = [_endpoint_test(sd, *e, cfg, "primary") for e in primary]
    for task in tasks:
        for (pooling, meas), depth in itertools.product(cfg["exploratory"], EXPLORATORY_DEPTHS):
            if (task, pooling, meas, depth) not in primary:
                t = _endpoint_test(sd, task, pooling, meas, depth, cfg, "exploratory")
                tests += [t] if t["status"] != "too_few_seeds" else []
    for family, adjust, suffix in (("primary", lambda p: holm_family(p, len(primary)), "holm"), ("exploratory", bh, "bh")):
        rows = [t for t in tests if t["family"] == family]
        for col in ("welch_p", "perm_p"):
            for t, q in zip(rows, adjust([t[col] for t in rows]) if rows else []):
                t[f"{col}_{suffix}"] = float(q)
    return tests


def seed_noise(pairs: pd.DataFrame) -> list[dict]:
    """Seed noise vs method difference at the final-norm output: similarity of two models of the same
    method (different seeds) and of two models of different methods."""
    last = pairs[pairs["depth"] == pairs.groupby("task")["depth"].transform("max")]
    return (last.groupby(["task", "measure", "kind"])["value"].agg(["mean", "min", "max", "count"])
            .reset_index().to_dict("records"))
