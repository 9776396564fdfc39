"""What the drift chapter says, as numbers and verdicts per task (floats, ints, booleans; None where
a result is missing). Formatting happens where a number is displayed, never here.

Drift is 1 - similarity (a distance measure: the value itself), at the final-norm output unless a
depth is named. ``res`` is `results.load_results`' dict; the two compared methods are
``res["compare"]`` (a, b), e.g. full fine-tuning and LoRA.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from .. import original
from .measures import MEASURES
from .results import at_threshold, nearest_half, replication_table

FINAL = "final_norm"


def _num(x):
    """A plain float (None for a missing or nan value)."""
    return None if x is None or pd.isna(x) else float(x)


# ------------------------------------------------------------------------------------ base vs model
def drift_at(res, task, method, pooling, measure, depth=FINAL) -> tuple:
    """(mean over seeds, lowest and highest end of the seeds' intervals) of the drift of ``method``'s
    models from the base at one depth; (None, None, None) when missing."""
    L = res["layers"]
    g = L[(L.task == task) & (L.method == method) & (L.pooling == pooling) & (L.measure == measure)
          & (L.depth_name == depth)] if not L.empty else L
    if g.empty:
        return None, None, None
    if MEASURES.get(measure) is None or MEASURES[measure].similarity:
        return 1 - float(g.value.mean()), 1 - float(g.hi.max()), 1 - float(g.lo.min())
    return float(g.value.mean()), float(g.lo.min()), float(g.hi.max())


def self_similarity(res, task) -> tuple:
    """The original formula's ceiling: the base compared with itself, (min, max) over depths and after layer 1."""
    L = res["layers"]
    s = L[(L.task == task) & (L.method == "base")] if not L.empty else L
    if s.empty:
        return None, None, None
    return float(s.value.min()), float(s.value.max()), float(s[s.depth_name == "layer_1"].value.iloc[0])


def max_drift(res, task, measure="cka", pooling="masked") -> float | None:
    """The largest drift from the base of any fine-tuned model at the final norm."""
    L = res["layers"]
    g = L[(L.task == task) & (L.method != "base") & (L.pooling == pooling) & (L.measure == measure)
          & (L.depth_name == FINAL)] if not L.empty else L
    return None if g.empty else float((1 - g.value).max())


# ------------------------------------------------------------------------------------ controls
def null_drift(res, task, measure="cka") -> float | None:
    """The drift of unrelated examples at the final norm: 1 - the shuffled-pairing null's 95th percentile."""
    N = res["null"]
    g = N[(N.task == task) & (N.measure == measure) & (N.depth_name == FINAL)] if not N.empty else N
    return None if g.empty else 1 - float(g.null_q95.max())


def unchanged_by_null(res, task) -> bool | None:
    """Is every model's drift (linear CKA, final norm) under a hundredth of the unrelated examples'?"""
    mx, nd = max_drift(res, task), null_drift(res, task)
    if mx is None or nd is None:
        return None
    return mx < nd / 100


def pair_distance(res, task, kind, measure="cka") -> float | None:
    """1 - similarity at the final norm between two models: ``within_<method>`` (two seeds) or ``across``."""
    P = res["pairs"]
    g = P[(P.task == task) & (P.kind == kind) & (P.measure == measure) & (P.depth_name == FINAL)] if not P.empty else P
    return None if g.empty else 1 - float(g.value.mean())


def methods_further_apart(res, task, measure="cka") -> bool | None:
    """Are a model of each compared method further apart than two seeds of either method?"""
    a, b = res["compare"]
    x, wa, wb = (pair_distance(res, task, k, measure) for k in ("across", f"within_{a}", f"within_{b}"))
    return None if None in (x, wa, wb) else x > max(wa, wb)


def within_max(res, task, measure="cka") -> float | None:
    """The largest distance between two seeds of one method at the last depth."""
    P = res["pairs"]
    pr = P[(P.task == task) & (P.measure == measure) & (P.kind != "across")] if not P.empty else P
    pr = pr[pr.depth == pr.depth.max()] if len(pr) else pr
    return 1 - float(pr.value.min()) if len(pr) else None


# ------------------------------------------------------------------------------------ across seeds
def test(res, task, measure="cka", summary="last", pooling="masked") -> dict:
    """The seed-level test of one task, pooling, measure and summary (a row of the summary's tests; {} if missing)."""
    T = res["tests"]
    g = T[(T.task == task) & (T.pooling == pooling) & (T.measure == measure) & (T.summary == summary)] \
        if not T.empty else T
    return {k: _num(v) if isinstance(v, (float, np.floating)) else v for k, v in g.iloc[0].items()} if len(g) else {}


def tests_overview(res) -> dict:
    """Over the seed-level tests: how many (``n``; ``n_primary`` of them pre-registered), the smallest
    attainable permutation p, how often the first method drifted more, and how many primary tests
    survive Holm's adjustment over the primary family (Welch, permutation, both). Summaries from
    before the families (every test Holm-adjusted) count every test as primary."""
    T = res["tests"]
    if T.empty:
        return {"n": 0, **dict.fromkeys(("n_primary", "min_p", "a_more", "holm_welch", "holm_perm", "holm_both"))}
    P = T[T.family == "primary"] if "family" in T else T
    return {"n": len(T), "n_primary": len(P), "min_p": _num(T.min_attainable_p.min()),
            "a_more": int((T["diff"] > 0).sum()),
            "holm_welch": int((P.welch_p_holm < 0.05).sum()), "holm_perm": int((P.perm_p_holm < 0.05).sum()),
            "holm_both": int(((P.welch_p_holm < 0.05) & (P.perm_p_holm < 0.05)).sum())}


def primary_tests(res) -> pd.DataFrame:
    """The pre-registered primary endpoints' tests (``drift.primary``), in their registered order,
    Holm-adjusted over them only; empty before there is a summary."""
    T = res["tests"]
    return T[T.family == "primary"].reset_index(drop=True) if "family" in T else T.iloc[:0]


def n_seeds(res) -> int:
    """Seeds per task and method in the results (the profile's count before there are any)."""
    S = res["seeds"]
    return int(S[S.pooling == "masked"].groupby(["task", "method"]).seed.nunique().min()) if not S.empty \
        else res["seeds_configured"]


def separated(res, a, b, pooling="masked", measure="cka") -> list[str]:
    """Tasks on which every seed of method a drifted more (at the final norm) than every seed of b."""
    S = res["seeds"]
    s = S[(S.pooling == pooling) & (S.measure == measure)] if not S.empty else S
    return [t for t in res["tasks"] if not s.empty
            and s[(s.task == t) & (s.method == a)]["last"].min() > s[(s.task == t) & (s.method == b)]["last"].max()]


# ------------------------------------------------------------------------------------ checks, weights, forgetting
def merge_check(res, task) -> dict:
    """LoRA merged vs unmerged: examples compared, largest absolute and relative difference."""
    mc = res["task_json"][task]["merge_check"] if task else {}
    if not mc:
        return {"n": None, "max_abs": None, "max_rel": None}
    return {"n": next(iter(mc.values()))["n_examples"],
            "max_abs": max(max(v["max_abs_diff_masked"], v["max_abs_diff_last"]) for v in mc.values()),
            "max_rel": max(max(v["max_rel_diff_masked"], v["max_rel_diff_last"]) for v in mc.values())}


def intruder_threshold(res) -> float:
    """The intruder threshold a chapter quotes: the sweep's threshold nearest 0.5 (``drift.intruder_thresholds``
    of the results, or of the profile before there are any); results from before the sweep: their one threshold."""
    cfg = res["config"]
    return float(cfg["intruder_threshold"]) if "intruder_threshold" in cfg else nearest_half(cfg["intruder_thresholds"])


def intruders(res, task, threshold: float | None = None) -> dict:
    """Per method: intruders per model at one threshold of the sweep (default: the one nearest 0.5),
    median relative weight change; and the adapted matrices per model."""
    I = at_threshold(res["intruders"], threshold)
    i = I[I.task == task] if not I.empty else I
    if i.empty:
        return {"per_model": {}, "rel_change": {}, "matrices": None}
    return {"per_model": i.groupby(["method", "model"]).n_intruders.sum().groupby("method").mean().to_dict(),
            "rel_change": i.groupby("method").rel_change.median().to_dict(),
            "matrices": int((i.model == i.model.iloc[0]).sum())}


def forgetting(res, task) -> dict:
    """The base's perplexity, the fine-tuned/base perplexity ratio per method, and the text slice."""
    if not task:
        return {"base_ppl": None, "ratio": {}, "tokens": None, "text": None}
    f = res["task_json"][task]["forgetting"]
    fg = pd.DataFrame(f["models"])
    return {"base_ppl": float(fg.base_ppl.iloc[0]), "ratio": fg.groupby("method").ppl_ratio.mean().to_dict(),
            "tokens": f["chunks"] * f["chunk_len"], "text": f["text"]}


def timing(res) -> dict:
    """The stage's cost in minutes, the cores and threads it ran on, and the highest load average."""
    tim = res["timing"]
    if not tim:
        return dict.fromkeys(("wall_min", "cpu_min", "idle_min", "cores", "tasks", "threads", "max_load"))
    cores = tim.get("cores", 2)
    loads = [res["task_json"][t]["timing"].get("loadavg", [0])[0] for t in res["tasks"]]
    return {"wall_min": tim.get("total_wall_s", float("nan")) / 60, "cpu_min": tim.get("total_cpu_s", float("nan")) / 60,
            "idle_min": tim.get("total_cpu_s", float("nan")) / cores / 60, "cores": tim.get("cores"),
            "tasks": tim.get("tasks", []), "max_load": max(loads) if loads else None,
            "threads": sorted({str((e or {}).get("torch_threads")) for e in tim.get("environment", {}).values()})}


# ------------------------------------------------------------------------------------ dominance, sinks, cosine null
def dominance(res, task=None) -> pd.DataFrame:
    """Per task, pooling and depth: the top coordinate's share of the centred variance in the base's
    pooled states (``base_share``) and its correlation with 1/length (``base_corr``), the largest
    share over the base and every fine-tuned model (``max_share``), and ``flagged``: that largest
    share is above the profile's ``drift.dominance_threshold`` (a measure of that pooling and depth
    compares what one coordinate holds, e.g. sentence length; mark it where it is shown)."""
    D = res.get("diagnostics", pd.DataFrame())
    if D.empty:
        return pd.DataFrame(columns=["task", "pooling", "depth", "depth_name", "base_share", "base_corr",
                                     "max_share", "flagged"])
    D = D[D.task == task] if task else D
    keys = ["task", "pooling", "depth", "depth_name"]
    base = D[D.model == "base"].set_index(keys)[["top_share", "corr_inv_length"]]
    out = D.groupby(keys).agg(max_share=("top_share", "max"), flagged=("dominated", "any"))
    return (base.rename(columns={"top_share": "base_share", "corr_inv_length": "base_corr"}).join(out)
            .reset_index().sort_values(["task", "pooling", "depth"], kind="stable").reset_index(drop=True))


def dominated(res, task, pooling, depth=FINAL) -> bool | None:
    """Is the (pooling, depth) of a task flagged by `dominance`? None without a diagnostic."""
    D = dominance(res, task)
    g = D[(D.pooling == pooling) & (D.depth_name == depth)]
    return bool(g.flagged.iloc[0]) if len(g) else None


def sink_fix(res, task, depths=tuple(f"layer_{i}" for i in range(15, 26))) -> dict:
    """The base's top-coordinate share over ``depths`` (default layers 15-25) before the sink rule
    (``masked_all``) and after it (``masked``): {before_min, before_max, after_min, after_max,
    before_corr_min: the smallest |correlation with 1/length| before}; None where missing."""
    D = dominance(res, task)
    out = {}
    for when, pooling in (("before", "masked_all"), ("after", "masked")):
        g = D[(D.pooling == pooling) & D.depth_name.isin(depths)]
        out[f"{when}_min"], out[f"{when}_max"] = (_num(g.base_share.min()), _num(g.base_share.max())) if len(g) \
            else (None, None)
        out[f"{when}_corr_min"] = _num(g.base_corr.abs().min()) if len(g) else None
    return out


def cosine_null(res, task, method, pooling="masked", depth=FINAL) -> tuple:
    """(matched, unmatched): the mean cosine between the base's and ``method``'s pooled states of the
    same example, and of different examples (`measures.unmatched_cosine`), mean over seeds; (None,
    None) when missing."""
    L = res["layers"]
    g = L[(L.task == task) & (L.method == method) & (L.pooling == pooling) & (L.measure == "cosine")
          & (L.depth_name == depth)] if not L.empty else L
    if g.empty:
        return None, None
    return float(g.value.mean()), _num(g.unmatched.mean()) if "unmatched" in g else None


# ------------------------------------------------------------------------------------ everything for one task
_SHORT = {"cka": "cka", "debiased_cka": "dcka", "cosine": "cos"}


def sample_sizes(res, tasks) -> str:
    """The test examples each task's drift is measured on, for prose: 'SST-2 872, MRPC 408 and RTE 277'."""
    from ..report import listing
    from ..tasks import task_name
    n = {t: (res["task_json"].get(t) or {}).get("sample", {}).get("n") for t in tasks}
    return listing(f"{task_name(t)} {v:,}" for t, v in n.items() if v) or "n/a"


def _setup_numbers(res, task) -> dict:
    tj = res["task_json"].get(task, {}) if task else {}
    s, chk = tj.get("sample", {}), tj.get("original_pooling_check") or {}
    mc = merge_check(res, task)
    lo, hi, l1 = self_similarity(res, task)
    return {"n_examples": s.get("n"), "n_layers": tj.get("n_layers"), "n_depths": tj["n_layers"] + 2 if tj else None,
            "hidden": tj.get("hidden_size"), "t_max": s.get("t_max"),
            "pad_share": 1 - s["tokens"] / (s["n"] * s["t_max"]) if s else None,
            "pool_err_median": chk.get("median_rel_error"), "pool_err_max": chk.get("max_rel_error"),
            "merge_n": mc["n"], "merge_abs": mc["max_abs"], "merge_rel": mc["max_rel"],
            "merge_rounding": None if mc["max_rel"] is None else mc["max_rel"] < 1e-5,
            "self_min": lo, "self_max": hi, "self_layer1": l1}


def _drift_numbers(res, task) -> dict:
    out = {}
    rep = replication_table(res)
    rep = rep[rep.task == task].set_index("method") if not rep.empty else rep
    for m in res["compare"]:
        for k, c in (("rep", "ours, their quantity"), ("orig", "original: mean drift"), ("cka_layers", "1 - CKA (masked)")):
            out[f"{k}_{m}"] = _num(rep.loc[m, c]) if m in rep.index else None
        for measure, short in _SHORT.items():
            out[f"{short}_{m}"], out[f"{short}_{m}_lo"], out[f"{short}_{m}_hi"] = drift_at(res, task, m, "masked", measure)
    return out


def _control_numbers(res, task) -> dict:
    a, b = res["compare"]
    out = {"null_cka": null_drift(res, task, "cka"), "null_dcka": null_drift(res, task, "debiased_cka"),
           "max_drift": max_drift(res, task), "unchanged": unchanged_by_null(res, task),
           "further_apart": methods_further_apart(res, task, "debiased_cka")}   # as claim 3 (design.drift_claims)
    for measure, short in (("cka", "seeds"), ("debiased_cka", "dseeds")):
        for m in (a, b):
            out[f"{short}_{m}"] = pair_distance(res, task, f"within_{m}", measure)
        out[f"{short}_across"] = pair_distance(res, task, "across", measure)
    for measure, short in (("cka", ""), ("debiased_cka", "d")):
        t = test(res, task, measure)
        for k, c in (("diff", "diff"), ("g", "hedges_g"), ("welch", "welch_p"), ("holm", "welch_p_holm"), ("perm", "perm_p")):
            out[f"{short}{k}"] = t.get(c)
    return out


def _weight_numbers(res, task) -> dict:
    i, f = intruders(res, task), forgetting(res, task)
    out = {"n_matrices": i["matrices"], "base_ppl": f["base_ppl"], "ppl_tokens": f["tokens"], "ppl_text": f["text"]}
    for m in res["compare"]:
        out[f"intruders_{m}"] = _num(i["per_model"].get(m))
        out[f"rel_change_{m}"] = _num(i["rel_change"].get(m))
        out[f"ppl_{m}"] = _num(f["ratio"].get(m))
    return out


def task_numbers(res, task) -> SimpleNamespace:
    """Every number and verdict the chapter's prose quotes for one task, as attributes named after
    the compared methods (``cka_full``, ``cka_full_lo``, ``ppl_lora``...); None where missing."""
    return SimpleNamespace(task=task, **_setup_numbers(res, task), **_drift_numbers(res, task),
                           **_control_numbers(res, task), **_weight_numbers(res, task))


def original_numbers() -> SimpleNamespace:
    """The original's typed-in figures the prose quotes (`loradrift.original`)."""
    od = [np.mean(v["mean_drift"]) for v in original.DRIFT.values()]
    return SimpleNamespace(layer0_cosine=original.DRIFT_RTE_LAYER0["cosine"], layer0_cka=original.DRIFT_RTE_LAYER0["cka"],
                           drift_min=float(min(od)), drift_max=float(max(od)),
                           n_seeds=len(next(iter(original.DRIFT.values()))["mean_drift"]))
