"""The study design's checks and the original's claims about learning, as numbers.

- `learning_verdicts`: does each task learn? Per task x method, the seeds' test metric with a 95%
  t-interval against the task's best trivial baseline (majority class or uniform random, whichever
  scores higher on that metric). A task enters the drift claims only if every compared method learned.
- `learning_curve`: the validation and test metric against training-set size (the learning-curve
  group's seed, plus that seed's unit at the task's own size).
- `claim_5`: the original's "LoRA beats full fine-tuning" (test metric FT - LoRA, Welch 95% interval).
- `claim_6`: the original's "catastrophic" full-FT seeds: models that answer one class, and the full-FT
  models scored again in the original's re-evaluation format (pair encoding without "[SEP]").
- `matched_drift`: drift at equal test accuracy across the learning-rate sweep (after Biderman et al. 2024).

Every function takes a units frame (`findings.runs_frame`) and returns numbers; nothing is formatted.
"""
from __future__ import annotations

import math

import numpy as np

from .config import load_profile, study_groups

# a model "collapses" when at least this share of its test predictions is one class
COLLAPSE_SHARE = 0.95


def _t_interval(x) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% t-interval of the mean; the interval is NaN for fewer than 2 values."""
    from scipy import stats
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=m, scale=stats.sem(x)) if x.std() > 0 else (m, m)
    return m, float(lo), float(hi)


def best_baseline(baselines, task: str, metric: str) -> tuple[float, str]:
    """(score, name) of the task's best trivial predictor on ``metric`` (``findings.baselines`` rows)."""
    rows = baselines[baselines.task == task] if len(baselines) else baselines
    if not len(rows):
        return math.nan, ""
    best = rows.loc[rows[metric].idxmax()]
    return float(best[metric]), str(best["baseline"])


def compared_methods(prof) -> list[str]:
    """The methods the study compares (``drift.compare``: full fine-tuning first, then LoRA)."""
    from .drift.settings import drift_config
    return list(drift_config(load_profile(prof))["compare"])


def _compared_units(prof, runs):
    """(task, method, its units) for every task x compared method that has units, in profile order."""
    for task in load_profile(prof)["tasks"]:
        for m in compared_methods(prof):
            r = runs[(runs.task == task) & (runs.method == m)] if len(runs) else runs
            if len(r):
                yield task, m, r


def learning_verdicts(prof, runs, baselines):
    """Per task x compared method: seeds, mean test metric with its 95% t-interval, the best trivial
    baseline, the margin over it, ``learned`` (the interval's lower end above the baseline; False with
    fewer than 2 seeds), and per task ``in_claims`` (every compared method learned)."""
    import pandas as pd
    rows = []
    for task, m, r in _compared_units(prof, runs):
        metric = r["metric"].iloc[0]
        mean, lo, hi = _t_interval(r["test_score"])
        base, base_name = best_baseline(baselines, task, metric)
        rows.append({"task": task, "method": m, "metric": metric, "seeds": len(r), "mean": mean, "low": lo,
                     "high": hi, "baseline": base, "baseline_name": base_name, "margin": mean - base,
                     "learned": bool(lo > base) if not math.isnan(lo) else False})
    out = pd.DataFrame(rows)
    if len(out):
        out["in_claims"] = out.groupby("task")["learned"].transform("all") & \
            out.groupby("task")["method"].transform("count").eq(len(compared_methods(prof)))
    return out


def learning_curve(prof, runs):
    """Validation and test metric against training-set size for the learning-curve group's seed(s):
    task, kind (the base method), train_size, seed, val_score, test_score, top_class_share."""
    import pandas as pd
    p = load_profile(prof)
    groups = [g for g in study_groups(p).values() if g["train_sizes"]]
    if not groups or not len(runs):
        return pd.DataFrame()
    rows = []
    for g in groups:
        for task in g["tasks"]:
            for m in g["methods"]:
                r = runs[(runs.task == task) & (runs.base_method == m) & runs.seed.isin(g["seeds"])]
                rows += [{"task": task, "method": m, "train_size": int(x.train_size), "seed": int(x.seed),
                          "val_score": x.val_score, "test_score": x.test_score,
                          "top_class_share": x.top_class_share} for x in r.itertuples()]
    return pd.DataFrame(rows).drop_duplicates(["task", "method", "train_size", "seed"]).sort_values(
        ["task", "method", "train_size"]).reset_index(drop=True)


def _welch(a, b) -> dict:
    """Difference of means a - b with Welch's 95% interval and two-sided p (NaN below 2 values each)."""
    from scipy import stats
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return {"diff": d, "low": math.nan, "high": math.nan, "p": math.nan}
    t = stats.ttest_ind(a, b, equal_var=False)
    ci = t.confidence_interval(0.95)
    return {"diff": d, "low": float(ci.low), "high": float(ci.high), "p": float(t.pvalue)}


def direction(low: float, high: float) -> str:
    """``positive`` / ``negative`` when a 95% interval excludes 0, ``unresolved`` when it holds 0,
    ``undecided`` when there is no interval."""
    if math.isnan(low) or math.isnan(high):
        return "undecided"
    return "positive" if low > 0 else "negative" if high < 0 else "unresolved"


def claim_5(prof, runs):
    """The original's claim that LoRA beats full fine-tuning on the test metric: per task, FT - LoRA
    (ours, Welch 95% interval) beside the original's FT - LoRA (mean of its 3 seeds), and the verdict:
    ``direction`` of our interval (negative: LoRA better, as the original claims)."""
    import pandas as pd

    from . import original
    full, lora = compared_methods(prof)
    rows = []
    for task in load_profile(prof)["tasks"]:
        a = runs[(runs.task == task) & (runs.method == full)] if len(runs) else runs
        b = runs[(runs.task == task) & (runs.method == lora)] if len(runs) else runs
        if not len(a) or not len(b):
            continue
        metric = a["metric"].iloc[0]
        o = original.PERFORMANCE.get(task, {})
        o_diff = float(np.mean(o["full"][metric]) - np.mean(o["lora"][metric])) if o else math.nan
        w = _welch(a["test_score"], b["test_score"])
        rows.append({"task": task, "metric": metric, "seeds_full": len(a), "seeds_lora": len(b), **w,
                     "original_diff": o_diff, "direction": direction(w["low"], w["high"])})
    return pd.DataFrame(rows)


def claim_6(prof, runs):
    """The original's "catastrophic" full-FT seeds: per task x compared method, how many seeds collapse
    to one class (``COLLAPSE_SHARE``), and for pair tasks the mean test metric in the original's
    re-evaluation format minus ours (paired over seeds, 95% t-interval) with the collapses in that format."""
    import pandas as pd
    rows = []
    for task, m, r in _compared_units(prof, runs):
        d = (r["orig_score"] - r["test_score"]).dropna()
        mean, lo, hi = _t_interval(d)
        rows.append({"task": task, "method": m, "seeds": len(r),
                     "collapsed": int((r["top_class_share"] >= COLLAPSE_SHARE).sum()),
                     "collapsed_original_format": int((r["orig_top_class_share"] >= COLLAPSE_SHARE).sum()),
                     "format_diff": mean, "format_low": lo, "format_high": hi, "format_seeds": len(d)})
    return pd.DataFrame(rows)


def _fit_at(x, y, at: float) -> float:
    """A least-squares line through (x, y), evaluated at ``at``."""
    slope, icept = np.polyfit(x, y, 1)
    return float(slope * at + icept)


def matched_drift(points, n_boot: int = 2000, seed: int = 0) -> dict:
    """Drift at equal accuracy. ``points``: one row per unit with columns kind (full / lora), accuracy,
    drift. Within the accuracy range both kinds reach (the overlap of their ranges), a line
    drift ~ accuracy is fitted per kind and evaluated at the overlap's midpoint; the difference
    full - lora has a bootstrap 95% interval (units resampled within each kind). ``decided`` is False
    when the ranges do not overlap or a kind has fewer than 3 units in the overlap. Beside the fit, the
    unfitted view: each kind's mean accuracy (``acc_*``) and mean drift (``mean_*``) inside the overlap."""
    out = {"at": math.nan, "full": math.nan, "lora": math.nan, "diff": math.nan, "low": math.nan,
           "high": math.nan, "n_full": 0, "n_lora": 0, "overlap": (math.nan, math.nan), "decided": False,
           "acc_full": math.nan, "acc_lora": math.nan, "mean_full": math.nan, "mean_lora": math.nan}
    if points is None or not len(points):
        return out
    f, l_ = (points[points.kind == k] for k in ("full", "lora"))
    if not len(f) or not len(l_):
        return out
    lo, hi = max(f.accuracy.min(), l_.accuracy.min()), min(f.accuracy.max(), l_.accuracy.max())
    out["overlap"] = (float(lo), float(hi))
    if lo >= hi:
        return out
    f, l_ = (d[(d.accuracy >= lo) & (d.accuracy <= hi)] for d in (f, l_))
    out.update(n_full=len(f), n_lora=len(l_), at=float((lo + hi) / 2),
               # the models themselves, no fit: each kind's mean accuracy and mean drift inside the shared range
               acc_full=float(f.accuracy.mean()), acc_lora=float(l_.accuracy.mean()),
               mean_full=float(f.drift.mean()), mean_lora=float(l_.drift.mean()))
    if len(f) < 3 or len(l_) < 3 or f.accuracy.nunique() < 2 or l_.accuracy.nunique() < 2:
        return out   # a line needs 3 models and 2 distinct accuracies per kind
    a = out["at"]
    out["full"], out["lora"] = _fit_at(f.accuracy, f.drift, a), _fit_at(l_.accuracy, l_.drift, a)
    out["diff"] = out["full"] - out["lora"]
    rng, reps = np.random.default_rng(seed), []
    fx, fy, lx, ly = (np.asarray(v, float) for v in (f.accuracy, f.drift, l_.accuracy, l_.drift))
    for _ in range(n_boot):
        i, j = rng.integers(0, len(fx), len(fx)), rng.integers(0, len(lx), len(lx))
        if np.ptp(fx[i]) == 0 or np.ptp(lx[j]) == 0:
            continue
        reps.append(_fit_at(fx[i], fy[i], a) - _fit_at(lx[j], ly[j], a))
    if len(reps) < 0.9 * n_boot:   # too many resamples with one accuracy per kind: no interval to trust
        return out
    out["low"], out["high"] = (float(q) for q in np.percentile(reps, [2.5, 97.5]))
    out["decided"] = True
    return out


def groups_frame(prof):
    """The study's groups as a frame: group, tasks, methods, seeds, units (new to the group), drift."""
    import pandas as pd

    from .config import group_units
    p = load_profile(prof)
    seen, rows = set(), []
    for name, g in study_groups(p).items():
        u = group_units(p, g)
        rows.append({"group": name, "tasks": g["tasks"], "methods": g["methods"], "seeds": g["seeds"],
                     "train_sizes": g["train_sizes"], "units": len(u), "new_units": len(set(u) - seen),
                     "drift": g["drift"]})
        seen |= set(u)
    return pd.DataFrame(rows)


def sweep_methods(prof, task: str, group: str) -> list[str]:
    """The methods a group trains on ``task`` (the learning-rate or rank sweep), in the group's order."""
    g = study_groups(load_profile(prof)).get(group)
    return list(g["methods"]) if g and task in g["tasks"] else []


def original_gaps() -> dict:
    """The original's claim 5 as it reported it: per task, LoRA - FT of the mean test metric over its seeds
    (its metric: F1 for MRPC, else accuracy), and its worst full-FT seed (claim 6)."""
    from . import original
    from .tasks import task_metric
    out = {}
    for task, by in original.PERFORMANCE.items():
        m = task_metric(task)
        out[task] = {"lora_minus_full": float(np.mean(by["lora"][m]) - np.mean(by["full"][m])),
                     "worst_full": float(min(by["full"][m])), "metric": m}
    return out


def unit_points(prof, res: dict, runs, task: str, endpoint: dict):
    """One row per drift-measured unit of ``task``: method, kind, learning rate, LoRA rank, seed, test
    accuracy and metric, drift (1 - the ``endpoint``'s similarity: {pooling, measure, depth}) and
    forgetting (the rise in mean token NLL on generic text). The frontier and the rank sweep read it."""
    import pandas as pd
    p = load_profile(prof)
    lay = res.get("layers")
    if lay is None or not len(lay) or not len(runs):
        return pd.DataFrame()
    sel = lay[(lay.task == task) & (lay.pooling == endpoint["pooling"]) & (lay.measure == endpoint["measure"])
              & (lay.depth_name == endpoint["depth"])]
    drift = dict(zip(sel.model, 1 - sel.value))
    forget = {}
    if task in res.get("task_json", {}):
        forget = {m["model"]: m["delta_nll"] for m in res["task_json"][task]["forgetting"]["models"]}
    r = runs[(runs.task == task) & runs.id.isin(drift.keys())]
    return pd.DataFrame([{"id": x.id, "method": x.method, "kind": p["methods"][x.method]["kind"] if x.method in p["methods"] else x.kind,
                          "learning_rate": x.learning_rate, "lora_r": x.lora_r, "seed": x.seed,
                          "accuracy": x.test_accuracy, "score": x.test_score, "drift": drift[x.id],
                          "forgetting": forget.get(x.id, math.nan)} for x in r.itertuples()])


def group_points(prof, points, group: str):
    """The rows of ``points`` (`unit_points`) that a study group trained: its methods at its seeds (the
    primary methods have more seeds in their own group; a sweep compares its rates or ranks seed for seed)."""
    g = study_groups(load_profile(prof)).get(group)
    if g is None or points is None or not len(points):
        return points.iloc[:0] if points is not None else None
    return points[points.method.isin(g["methods"]) & points.seed.isin(g["seeds"])].reset_index(drop=True)


def frontier(prof, points, group: str = "learning_rate", n_boot: int = 2000) -> dict:
    """Drift at equal accuracy (`matched_drift`) over the units of the learning-rate group (`group_points`:
    every rate of both kinds at the group's seeds, the primary rates included), and the same for forgetting."""
    pts = group_points(prof, points, group)
    if pts is None or not len(pts):
        return {"drift": matched_drift(None), "forgetting": matched_drift(None)}
    return {"drift": matched_drift(pts, n_boot=n_boot),
            "forgetting": matched_drift(pts.assign(drift=pts.forgetting).dropna(subset=["drift"]), n_boot=n_boot)}


def rank_summary(points, methods: list[str]):
    """Per LoRA rank of the rank sweep: seeds, test metric, drift and forgetting, mean and sd over seeds."""
    if points is None or not len(points):
        return points
    r = points[points.method.isin(methods)]
    return r.groupby(["method", "lora_r"]).agg(seeds=("seed", "nunique"), score=("score", "mean"),
                                               score_sd=("score", "std"), drift=("drift", "mean"),
                                               drift_sd=("drift", "std"), forgetting=("forgetting", "mean"),
                                               forgetting_sd=("forgetting", "std")).reset_index().sort_values("lora_r")


# ------------------------------------------------------------------------------------ the original's RQ1 claims
# the original's own words for its RQ1 claims (ANALYSIS_REPORT / rq1_findings_summary, benc61116/NLP @ eef92c5)
ORIGINAL_RQ1 = {
    1: "LoRA preserves the base model's representations better than full fine-tuning (drift 10.1 % lower overall)",
    2: "The benefit is task-dependent: significant on SST-2 only, emerging with large training sets",
    3: "Method differences are much larger than seed noise",
    4: "Fine-tuned representations keep their direction (cosine 0.97-0.99 under its pooling)",
}
# claim 4: a cosine says nothing about preserved direction when *different* examples already score this much
COSINE_UNINFORMATIVE = 0.9


def registered_endpoints(res: dict) -> list[dict]:
    """The primary endpoints the seed-level tests were run with (the summary's; the task results' settings
    for a summary from before the summary recorded them)."""
    return list((res.get("summary") or {}).get("primary") or (res.get("config") or {}).get("primary") or [])


def _endpoint_row(T, task: str, e: dict):
    """The seed-level test of ``task`` at endpoint e's (pooling, measure, depth), with its family's
    adjusted p-values as (p_welch, p_perm); None when the test is absent."""
    if T is None or not len(T):
        return None
    g = T[(T.task == task) & (T.pooling == e["pooling"]) & (T.measure == e["measure"]) & (T.depth == e["depth"])]
    if not len(g):
        return None
    t = g.iloc[0]
    adj = "holm" if t.family == "primary" else "bh"
    return {"diff": float(t["diff"]), "g": float(t.get("hedges_g", math.nan)), "family": t.family,
            "min_p": float(t.get("min_attainable_p", math.nan)),
            "p_welch": float(t.get(f"welch_p_{adj}", math.nan)), "p_perm": float(t.get(f"perm_p_{adj}", math.nan)),
            "n": (int(t.n_a), int(t.n_b)), "status": t.status}


def _sign(row) -> str:
    """'more' (full FT drifts more), 'less', or 'none' (not both adjusted p-values below 5 %)."""
    if row is None or row["status"] != "ok" or not (row["p_welch"] < 0.05 and row["p_perm"] < 0.05):
        return "none"
    return "more" if row["diff"] > 0 else "less"


def drift_claims(res: dict, verdicts, fr: dict) -> dict:
    """The original's RQ1 claims 1-4 (`ORIGINAL_RQ1`) tested on this study's drift results.

    1. the primary endpoints (Holm over them; both tests must agree) on tasks in the drift claims, and
       drift at matched accuracy (``fr``: `frontier`; reported beside, as ``matched_direction``):
       ``supported`` (some primary endpoint: full FT drifts more, none the other way), ``reversed``,
       ``mixed``, ``not established`` (none significant), ``undecided`` (no test of a learned task).
    2. per task in the drift claims, the test at the first primary endpoint's (pooling, measure,
       depth) (primary family: Holm; exploratory: Benjamini-Hochberg): ``task-dependent`` (significant
       in opposite directions on two tasks), ``consistent`` (every task significant the same way),
       ``undecided`` otherwise: fewer than 2 such tasks (``reason`` few_tasks), a task whose seeds cannot
       reach 5 % (``reason`` seeds: a significant result beside a test that cannot be significant is not
       a difference between tasks), or no task significant either way (``reason`` none).
    3. per task with controls: is a model of each method further apart than two seeds of either
       (debiased CKA, final norm)? Judged on the tasks in the drift claims: ``supported`` on every one,
       ``not supported`` on every one, ``mixed``, ``undecided`` (none).
    4. per task: the mean cosine over the decoder layers on the original's pooling, of the same example
       (base vs fine-tuned) and of different examples: ``uninformative`` when different examples already
       reach `COSINE_UNINFORMATIVE` on every task, else ``informative``.
    Each entry: {verdict, and the numbers behind it}. ``verdicts``: `learning_verdicts`."""
    from .drift import findings as dfind
    T, primary = res.get("tests"), registered_endpoints(res)
    tasks = list(res.get("tasks") or [])
    claims_tasks = [t for t in tasks if verdicts is not None and len(verdicts)
                    and bool(verdicts[verdicts.task == t].in_claims.all()) and (verdicts.task == t).any()]
    out = {}
    # 1
    rows = [(e, _endpoint_row(T, e["task"], e) if e["task"] in claims_tasks else None) for e in primary]
    signs = [_sign(r) for _, r in rows]
    tested = [r for _, r in rows if r is not None and r["status"] == "ok"]
    v1 = ("undecided" if not tested else "mixed" if {"more", "less"} <= set(signs) else "supported" if "more" in signs
          else "reversed" if "less" in signs else "not established")
    m = fr.get("drift", {}) if fr else {}
    out[1] = {"verdict": v1, "endpoints": rows, "significant": sum(s != "none" for s in signs), "n": len(rows),
              "matched": m, "matched_direction": direction(m.get("low", math.nan), m.get("high", math.nan))}
    # 2
    first = primary[0] if primary else None
    per = {t: _endpoint_row(T, t, first) for t in claims_tasks} if first else {}
    s2 = {t: _sign(r) for t, r in per.items() if r is not None}
    weak = [t for t, r in per.items() if r is not None and not r["min_p"] < 0.05]
    signs = set(s2.values())
    if len(s2) < 2:
        v2, why = "undecided", "few_tasks"
    elif {"more", "less"} <= signs:
        v2, why = "task-dependent", None
    elif len(signs) == 1 and signs != {"none"}:
        v2, why = "consistent", None
    else:
        v2, why = "undecided", "seeds" if weak else "none"
    out[2] = {"verdict": v2, "reason": why, "endpoint": first, "per_task": per, "signs": s2,
              "claims_tasks": claims_tasks, "underpowered": weak}
    # 3
    apart = {t: dfind.methods_further_apart(res, t, "debiased_cka") for t in tasks}
    apart = {t: a for t, a in apart.items() if a is not None}
    judged = [a for t, a in apart.items() if t in claims_tasks]   # tasks that did not learn are shown, not judged
    v3 = ("undecided" if not judged else "supported" if all(judged) else "not supported"
          if not any(judged) else "mixed")
    out[3] = {"verdict": v3, "per_task": {t: {"further_apart": a, **{k: dfind.pair_distance(res, t, k, "debiased_cka")
                                                                      for k in ("across", *(f"within_{c}" for c in res["compare"]))}}
                                          for t, a in apart.items()}}
    # 4
    cos = {t: _cosines(res, t) for t in tasks}
    cos = {t: c for t, c in cos.items() if c is not None}
    v4 = ("undecided" if not cos else "uninformative" if all(c["unmatched"] >= COSINE_UNINFORMATIVE for c in cos.values())
          else "informative")
    out[4] = {"verdict": v4, "per_task": cos, "threshold": COSINE_UNINFORMATIVE}
    return out


def _cosines(res: dict, task: str) -> dict | None:
    """Mean cosine over the decoder layers on the original's pooling: per compared method the same example
    (base vs fine-tuned, mean over seeds), and different examples (``unmatched``, mean over every model)."""
    L = res.get("layers")
    if L is None or not len(L) or "unmatched" not in L:
        return None
    g = L[(L.task == task) & (L.pooling == "original") & (L.measure == "cosine") & L.depth_name.str.startswith("layer_")
          & L.method.isin(res["compare"])]
    if not len(g) or g.unmatched.isna().all():
        return None
    return {**{m: float(g[g.method == m].value.mean()) for m in res["compare"]}, "unmatched": float(g.unmatched.mean())}


def rq1_view(prof, res: dict | None = None):
    """Everything RQ1's answer reads, for the Drift chapter and the preface alike: the units (``runs``),
    the learning ``verdicts``, the pre-registered ``endpoints`` and their tests (``primary``), the task the
    prose quotes (``focus``: the first endpoint's task when it has drift results), the sweep's ``points``
    and ``frontier`` at the first endpoint, the sweeps' methods and the claims (`drift_claims`)."""
    from types import SimpleNamespace

    from . import findings
    from .drift import findings as dfind
    from .drift import load_results
    p = load_profile(prof)
    res = load_results(p) if res is None else res
    runs = findings.runs_frame(p)
    verdicts = learning_verdicts(p, runs, findings.baselines(p))
    endpoints = registered_endpoints(res)
    e0 = endpoints[0] if endpoints else None
    tasks = res["tasks"]
    focus = e0["task"] if e0 and e0["task"] in tasks else tasks[0] if tasks else None
    points = unit_points(p, res, runs, focus, e0) if e0 and focus == e0["task"] else None
    fr = frontier(p, points)
    return SimpleNamespace(runs=runs, verdicts=verdicts, endpoints=endpoints, e0=e0, focus=focus,
                           primary=dfind.primary_tests(res), points=points, frontier=fr,
                           lr_points=group_points(p, points, "learning_rate"), rank_points=group_points(p, points, "rank"),
                           lr_methods=sweep_methods(p, focus, "learning_rate") if focus else [],
                           rank_methods=sweep_methods(p, focus, "rank") if focus else [],
                           claims=drift_claims(res, verdicts, fr))


def trend(values) -> str:
    """How a sequence moves (e.g. a quantity's mean over increasing rank): ``rises`` (every step up), ``falls``
    (every step down), ``mixed``, or ``single`` (fewer than 2 values, or a missing one)."""
    v = [float(x) for x in values]
    if len(v) < 2 or any(math.isnan(x) for x in v):
        return "single"   # nothing to read (a missing value included)
    d = np.diff(v)
    return "rises" if (d > 0).all() else "falls" if (d < 0).all() else "mixed"
