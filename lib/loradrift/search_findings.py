"""Findings of the hyperparameter search, as numbers (the training chapter's search section and the
limitations read them; ``findings`` has the rest of the study's).

Functions take a profile (name, YAML path or loaded profile) and the search's results
(``search.load_results``) and return numbers, dicts or DataFrames; a missing result gives empty
frames or NaN. Formatting happens where a chapter shows a number.
"""
from __future__ import annotations

import math

from .config import load_profile, searched_values
from .findings import runs_frame


def _epochs_mean(space: dict) -> float | None:
    """The mean number of epochs a method's search space draws (None when it does not search them)."""
    import numpy as np
    e = space.get("num_train_epochs")
    if not e:
        return None
    return (e["low"] + e["high"]) / 2 if e["type"] == "int" else float(np.mean(e.get("choices", [e.get("value")])))


def projection(prof=None) -> dict:
    """What the search costs before it runs, from the training units' measured speed: per study
    (task x method of the profile) the seconds of one trial (the unit's training time, scaled to the
    search's share of the train split and its mean epochs; a study without a measured unit borrows its
    method's mean), and ``hours``: all trials of all studies before pruning (NaN when a study has no
    estimate). ``sources``: the units measured."""
    import numpy as np

    from .train import load_runs
    p = load_profile(prof)
    cfg = p.get("search") or {}
    space, frac = cfg.get("space", {}), cfg.get("train_fraction") or 1.0
    measured: dict[tuple[str, str], list[float]] = {}
    for r in load_runs(p):
        ep = _epochs_mean(space.get(r["method"], {}))
        if ep is not None:
            scale = frac * ep / float(r["config"]["training"]["num_train_epochs"])
            measured.setdefault((r["task"], r["method"]), []).append(r["train_runtime_s"] * scale)
    by_method = {m: [x for (_, mm), v in measured.items() if mm == m for x in v] for m in p["methods"]}
    trial_s = [float(np.mean(measured[(t, m)])) if (t, m) in measured else
               (float(np.mean(by_method[m])) if by_method[m] else math.nan) for t in p["tasks"] for m in p["methods"]]
    n_trials = cfg.get("n_trials")
    hours = (sum(trial_s) * n_trials / 3600 if trial_s and isinstance(n_trials, int) else math.nan)
    return {"trial_s": trial_s, "hours": hours, "n_studies": len(trial_s), "n_trials": n_trials,
            "sources": sorted(f"{t}-{m}" for (t, m) in measured)}


def summary(prof, res: list[dict]) -> dict:
    """The search as a whole: trials run and pruned, wall and CPU hours, complete trials per study (most,
    fewest), the gain of the chosen values over the untuned ones on the validation slice (mean, min, max)
    and how many studies' chosen values the profile applies."""
    import numpy as np
    p = load_profile(prof)
    gains = [r["gain_over_default"] for r in res if r.get("gain_over_default") is not None]
    stat = lambda f: float(f(gains)) if gains else math.nan   # noqa: E731
    return {"n_studies": len(res), "n_trials": sum(r["n_trials"] for r in res),
            "n_pruned": sum(r["n_pruned"] for r in res),
            "max_trials": max((r["n_trials"] for r in res), default=0),
            "wall_h": sum(r["wall_s"] for r in res) / 3600 if res else math.nan,
            "cpu_h": sum(r["cpu_s"] for r in res) / 3600 if res else math.nan,
            "max_complete": max((r["n_complete"] for r in res), default=0),
            "min_complete": min((r["n_complete"] for r in res), default=0),
            "gain_mean": stat(np.mean), "gain_min": stat(np.min), "gain_max": stat(np.max),
            "n_applied": sum(searched_values(p, r["task"], r["method"]) == r["best_params"]
                             for r in res if r.get("best_params"))}


def history(res: list[dict]):
    """Every trial of every study: its validation-slice value (a pruned trial's last reported one), its
    state (``defaults`` for trial 0, the profile's untuned values) and the best complete value so far."""
    import pandas as pd
    rows = []
    for r in res:
        best = -math.inf
        for t in r["trials"]:
            done = t["state"] == "COMPLETE"
            v = t["value"] if done else (list(t["intermediate"].values())[-1] if t["intermediate"] else None)
            best = max(best, t["value"]) if done else best
            rows.append({"task": r["task"], "method": r["method"], "trial": t["number"], "value": v,
                         "state": "defaults" if t["defaults"] else t["state"].lower(),
                         "best so far": best if math.isfinite(best) else None})
    return pd.DataFrame(rows)


def importances(res: list[dict]):
    """fANOVA importances per study (task, method, one column per parameter); empty when none were fitted."""
    import pandas as pd
    return pd.DataFrame([{"task": r["task"], "method": r["method"], **r["importances"]}
                         for r in res if r.get("importances")])


def chosen(res: list[dict]):
    """Per study and searched parameter: the untuned value, the chosen one and the original study's
    choice (None where it has none), as the values themselves."""
    import pandas as pd

    from .search import ORIGINAL_OPTIMA
    return pd.DataFrame([{"task": r["task"], "method": r["method"], "parameter": k,
                          "untuned": r["default_params"].get(k), "chosen": v,
                          "original": ORIGINAL_OPTIMA.get((r["task"], r["method"]), {}).get(k)}
                         for r in res for k, v in (r["best_params"] or {}).items()], dtype=object)


def gains(prof, res: list[dict]):
    """Per study: the validation-slice metric of the untuned values (trial 0) and of the chosen values,
    the gain, the original's best-trial accuracy, whether the profile applies the chosen values, CPU minutes."""
    import pandas as pd

    from .search import ORIGINAL_EXPECTED
    p = load_profile(prof)
    return pd.DataFrame([{"task": r["task"], "method": r["method"], "metric": r["metric"], "trials": r["n_trials"],
                          "pruned": r["n_pruned"], "untuned": r["default_value"], "chosen": r["best_value"],
                          "gain": r["gain_over_default"], "original": ORIGINAL_EXPECTED.get((r["task"], r["method"])),
                          "applied": searched_values(p, r["task"], r["method"]) == r["best_params"],
                          "cpu_min": r["cpu_s"] / 60} for r in res])


def tuned_vs_untuned(prof=None):
    """Test metric of the units trained with the profile's untuned values (``runs_untuned``, kept from
    the study's first run) against the current units made with the searched values, per task and
    method: means, sds, the difference of means and its Welch 95% interval. ``retrained`` is False
    (and the searched columns NaN) until all of a task x method's units are current with searched values."""
    import numpy as np
    import pandas as pd
    from scipy import stats
    p = load_profile(prof)
    old, new = runs_frame(p, "runs_untuned"), runs_frame(p)
    cols = ["task", "method", "metric", "n_untuned", "untuned_mean", "untuned_sd", "n_searched", "searched_mean",
            "searched_sd", "diff", "ci_low", "ci_high", "retrained"]
    rows = []
    for (task, method), g_old in ([] if old.empty else old.groupby(["task", "method"], sort=False)):
        tuned = bool(searched_values(p, task, method))
        g_new = new[(new.task == task) & (new.method == method) & (new.status == "done")] if tuned and not new.empty \
            else new.iloc[0:0]
        a, b = g_old["test_score"].to_numpy(float), g_new["test_score"].to_numpy(float)
        done = tuned and len(b) == len(a) and len(b) >= 2
        ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95) if done else None
        rows.append({"task": task, "method": method, "metric": g_old["metric"].iloc[0],
                     "n_untuned": len(a), "untuned_mean": a.mean(), "untuned_sd": a.std(ddof=1),
                     "n_searched": len(b), "searched_mean": b.mean() if done else np.nan,
                     "searched_sd": b.std(ddof=1) if done else np.nan,
                     "diff": b.mean() - a.mean() if done else np.nan,
                     "ci_low": ci.low if done else np.nan, "ci_high": ci.high if done else np.nan, "retrained": done})
    return pd.DataFrame(rows, columns=cols)


def test_effect(tvu) -> dict:
    """What the searched values did on the test split (from ``tuned_vs_untuned``): task x method pairs
    compared and re-trained, the mean, smallest and largest difference of means, and how many of
    the re-trained pairs' intervals contain zero."""
    rt = tvu[tvu["retrained"].astype(bool)] if not tvu.empty else tvu
    d = rt["diff"] if len(rt) else None
    return {"n_pairs": len(tvu), "n_retrained": len(rt),
            "mean": float(d.mean()) if d is not None else math.nan,
            "min": float(d.min()) if d is not None else math.nan,
            "max": float(d.max()) if d is not None else math.nan,
            "n_cover_zero": int(((rt["ci_low"] <= 0) & (rt["ci_high"] >= 0)).sum()) if len(rt) else 0}
