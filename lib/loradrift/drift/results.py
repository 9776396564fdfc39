"""The drift results a chapter shows, read from ``data/<profile>/``, and the tables built from them
(numbers only: formatting happens where a table is displayed)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import original
from ..config import load_profile
from ..store import read_csv_or, read_or, result_path, unreadable
from .currency import TABLES, computed_tasks
from .settings import drift_config


def load_results(profile: dict | str) -> dict:
    """Everything the chapter shows, as DataFrames / dicts; empty frames for what is missing.
    ``profile``: a profile name, a YAML path or a loaded profile. A task whose files cannot be read is
    left out (named in a warning, like a missing summary), and the rest is shown."""
    prof = load_profile(profile) if isinstance(profile, str) else profile
    name = prof["name"]
    path = lambda r, **f: result_path(name, r, **f)  # noqa: E731
    task_json, frames = {}, {}
    for t in computed_tasks(prof):
        js = read_or(path("drift", task=t))
        tables = {table: read_csv_or(path("drift_table", task=t, table=table), None) for table in TABLES}
        if js is not None and not tables["layers"].empty:
            task_json[t], frames[t] = js, tables
    tasks = list(task_json)
    cat = lambda table: (pd.concat([frames[t][table] for t in tasks], ignore_index=True)  # noqa: E731
                         if tasks else pd.DataFrame())
    summary = read_or(path("drift_summary"), {}) if tasks else {}
    if tasks and not path("drift_summary").exists():
        unreadable(f"{path('drift_summary')} is missing: run `python -m loradrift drift --profile {name}` to write "
                   "the seed-level tests; shown without them")
    return {"tasks": tasks, "missing": [t for t in prof["tasks"] if t not in tasks],
            "compare": drift_config(prof)["compare"], "seeds_configured": len(prof["seeds"]),
            "config": task_json[tasks[0]]["config"] if tasks else drift_config(prof),
            "layers": cat("layers"), "pairs": cat("pairs"), "null": cat("null"), "intruders": cat("intruders"),
            "diagnostics": cat("diagnostics"),
            "task_json": task_json, "summary": summary, "seeds": pd.DataFrame(summary.get("seed_drifts", [])),
            "tests": pd.DataFrame(summary.get("tests", [])),
            "timing": read_or(path("drift_timing"), {}) if tasks else {}}


def replication_table(res: dict) -> pd.DataFrame:
    """Per task x method: the original's figure, our reproduction of its quantity, and correct measures."""
    sd, rows = res["seeds"], []
    if sd.empty:  # no seed-level results (drift_summary.json missing or unreadable)
        return pd.DataFrame()
    for task in res["tasks"]:
        for method in res["compare"]:
            g = sd[(sd["task"] == task) & (sd["method"] == method)]
            if g.empty:
                continue
            pick = lambda p, m, col="mean": g[(g["pooling"] == p) & (g["measure"] == m)][col]  # noqa: E731
            orig = original.DRIFT.get((task, method), {})
            rep = pick("original", "original_study_similarity")
            rows.append({"task": task, "method": method,
                         "original: mean drift": float(np.mean(orig["mean_drift"])) if orig else None,
                         "ours, their quantity": float(rep.mean()), "ours, their quantity sd": float(rep.std(ddof=1)),
                         "original: mean cosine": float(np.mean(orig["mean_cosine"])) if orig else None,
                         "ours, their cosine": 1 - float(pick("original", "cosine").mean()),
                         "1 - CKA (masked)": float(pick("masked", "cka").mean()),
                         "1 - debiased CKA (masked)": float(pick("masked", "debiased_cka").mean()),
                         "1 - CKA, final norm": float(pick("masked", "cka", "last").mean()),
                         "1 - debiased CKA, final norm": float(pick("masked", "debiased_cka", "last").mean())})
    return pd.DataFrame(rows)


def seed_table(res: dict, pooling: str = "masked") -> pd.DataFrame:
    """Per task, measure and method: seeds, and the mean and sd over seeds of the drift at the final
    norm (``last``) and averaged over the decoder layers (``mean``)."""
    s = res["seeds"]
    if s.empty:
        return s
    g = s[s.pooling == pooling].groupby(["task", "measure", "method"])
    return g.agg(seeds=("seed", "size"), last=("last", "mean"), last_sd=("last", "std"),
                 mean=("mean", "mean"), mean_sd=("mean", "std")).reset_index()


def intruder_table(res: dict, threshold: float | None = None) -> pd.DataFrame:
    """Per task, method and matrix: intruders per model, layers, median relative change, lowest best-match
    cosine; at one ``threshold`` of the sweep (default: the one nearest 0.5; results from before the
    sweep have a single threshold and no ``threshold`` column)."""
    i = at_threshold(res["intruders"], threshold)
    return (i.groupby(["task", "method", "matrix", "model"]).agg(
                intruders=("n_intruders", "sum"), layers=("n_intruders", "size"),
                median_rel_change=("rel_change", "median"), min_max_sim=("min_max_sim", "min"))
            .groupby(["task", "method", "matrix"]).agg(
                **{"intruders per model": ("intruders", "mean"), "layers": ("layers", "first"),
                   "median relative change": ("median_rel_change", "mean"),
                   "lowest best-match cosine": ("min_max_sim", "min")}).reset_index())


def nearest_half(thresholds) -> float:
    """The threshold of a sweep nearest 0.5 (the single threshold before the sweep): the one a
    chapter quotes by default."""
    ts = np.sort(np.asarray(thresholds, dtype=float))
    return float(ts[np.abs(ts - 0.5).argmin()])


def at_threshold(intruders: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
    """The intruder rows of one threshold of the sweep (default: `nearest_half`)."""
    if intruders.empty or "threshold" not in intruders:
        return intruders
    ts = np.sort(intruders["threshold"].unique())
    t = nearest_half(ts) if threshold is None else threshold
    if not np.isclose(ts, t).any():
        raise ValueError(f"intruder threshold {t} was not computed: the sweep holds {ts.tolist()}")
    return intruders[np.isclose(intruders["threshold"], t)]


def intruder_sweep(res: dict, models=None) -> pd.DataFrame:
    """Per task, method and threshold of the sweep: intruders per model (summed over the adapted
    matrices), mean and sd over the method's models (only ``models``, ids, when given)."""
    i = res["intruders"]
    if i.empty or "threshold" not in i:
        return pd.DataFrame()
    if models is not None:
        i = i[i.model.isin(models)]
    per_model = i.groupby(["task", "method", "threshold", "model"]).n_intruders.sum().reset_index()
    return (per_model.groupby(["task", "method", "threshold"]).n_intruders
            .agg(mean="mean", sd="std", models="size").reset_index())


def forgetting_table(res: dict) -> pd.DataFrame:
    """Every fine-tuned model's forgetting record, with its task."""
    tj = res["task_json"]
    return pd.concat([pd.DataFrame(tj[t]["forgetting"]["models"]).assign(task=t) for t in res["tasks"]]) \
        if res["tasks"] else pd.DataFrame()


def timing_table(res: dict) -> pd.DataFrame:
    tim = res["timing"]
    return pd.DataFrame([{"task": t, "tokens run": tim["tokens_run"][t], "wall s": v["wall_s"], "cpu s": v["cpu_s"]}
                         for t, v in tim["per_task"].items()])


def compared_only(res: dict) -> dict:
    """``res`` restricted to the base and the compared methods at their primary settings (``res["compare"]``):
    what the per-depth, control, seed, intruder and forgetting views show; the sweeps' variants (a learning
    rate, a rank) appear in the views made for them."""
    keep = set(res["compare"]) | {"base"}
    out = dict(res)
    for k in ("layers", "seeds", "intruders", "null"):
        df = res.get(k)
        if isinstance(df, pd.DataFrame) and "method" in df:
            out[k] = df[df["method"].isin(keep)].reset_index(drop=True)
    ids = {m["id"] for j in res["task_json"].values() for m in j.get("models", []) if m["method"] in keep} | {"base"}
    D = res.get("diagnostics")
    if isinstance(D, pd.DataFrame) and "model" in D:
        out["diagnostics"] = D[D["model"].isin(ids)].reset_index(drop=True)
    out["task_json"] = {t: {**j, "forgetting": {**j["forgetting"], "models": [
        m for m in j["forgetting"]["models"] if m.get("method") in keep]}} for t, j in res["task_json"].items()}
    return out
