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


def bf16_speedup(bench: dict, task: str | None = None) -> dict[str, float]:
    """bf16 tokens/s over fp32 tokens/s per method (and ``extract``), measured side by side on ``task``'s
    batches (default: the bench's first task; rows of an older bench name no task)."""
    task = task or bench.get("task")
    rate = {(r["method"], r["precision"]): r["tokens_per_s"] for r in bench["throughput"]
            if r.get("task", task) == task}
    return {m: rate[(m, "bf16")] / rate[(m, "fp32")] for m, p in rate if p == "fp32" and (m, "bf16") in rate}


GROUPS = ("matrix products", "attention", "optimizer", "casts and copies", "other", "unattributed")


def step_breakdown(bench: dict):
    """One row per task x trained method: each operator group's share of the profiled training steps' wall
    time, the matrix products' own rate against the ceiling while they run, and the whole step's (the
    unprofiled rate of the same task, method and precision in @tbl-bench). Empty without step profiles."""
    import pandas as pd
    whole = {(r["task"], r["method"], r["precision"]): r["fraction_of_ceiling"] for r in bench["throughput"]
             if "task" in r}
    rows = [{"task": r["task"], "method": r["method"], "precision": r["precision"],
             **{g: r["shares"].get(g, 0.0) for g in GROUPS},
             "matmul_of_ceiling": r["matmul_fraction_of_ceiling"] if r["matmul_fraction_of_ceiling"] is not None
             else math.nan,
             "step_of_ceiling": whole.get((r["task"], r["method"], r["precision"]), math.nan)}
            for r in bench.get("step_profile") or []]
    return pd.DataFrame(rows)


def lever_rows(bench: dict):
    """The levers measured side by side (``bench.levers``): one row each, with the rate relative to eager."""
    import pandas as pd
    return pd.DataFrame(bench.get("levers") or [])


def pad_share(profile: str):
    """Per task: the median and largest share of padding in the training batches of the profile's units
    (packing sequences could save at most this share of a step's token work)."""
    from .train import load_runs
    import pandas as pd
    d = pd.DataFrame([{"task": r["task"], "pad": r["pad_fraction"]} for r in load_runs(profile)
                      if r.get("pad_fraction") is not None])
    if d.empty:
        return d
    return d.groupby("task").pad.agg(median="median", largest="max").reset_index()


def longest_unit_steps(profile: str) -> float | None:
    """The longest time any of the profile's units spent in optimizer steps (seconds), None without units."""
    from .train import load_runs
    return max((r["train_step_s"] for r in load_runs(profile) if r.get("train_step_s")), default=None)


def pad_text(profile: str) -> str:
    """'MRPC 6% (largest 19%), …': the median and largest padding share per task (``pad_share``)."""
    from .report import listing
    from .tasks import task_name
    pads = pad_share(profile)
    return listing([f"{task_name(r.task)} {100 * r.median:.0f}% (largest {100 * r.largest:.0f}%)"
                    for r in pads.itertuples()]) if not pads.empty else "not recorded"


def lever_lead(rows) -> str:
    """How the levers were measured: which task's batches, method and precision."""
    from .figures import method_label
    from .tasks import task_name
    if rows is None or rows.empty or "task" not in rows:
        return "No lever has been measured yet"
    r = rows.iloc[0]
    return (f"Each standard lever ran in a fresh process on the same {task_name(r.task)} batches, "
            f"{method_label(r.method)} in {r.precision}, warmed on every batch before the timed pass, with an "
            "eager run before and after it")


def gap_sentence(row, ceiling: float) -> str:
    """The matrix products' rate and share of one profiled step, and the largest other groups."""
    from .report import fmt
    others = sorted(((g, row[g]) for g in GROUPS if g != "matrix products" and row[g] >= 0.05), key=lambda x: -x[1])
    rate = (f"its matrix products ran at {fmt(100 * row['matmul_of_ceiling'], 0)}% of the {fmt(ceiling, 0)} GFLOP/s "
            "ceiling while they ran" if row["matmul_of_ceiling"] == row["matmul_of_ceiling"] else
            "the profiler counted no FLOPs for its matrix products")
    names = {"other": "elementwise and other operators"}
    rest = (", ".join(f"{names.get(g, g)} {fmt(100 * v, 0)}%" for g, v in others[:3]))
    return (f"{rate} and took {fmt(100 * row['matrix products'], 0)}% of the profiled steps' time"
            + (f"; the largest of the rest: {rest}" if rest else ""))


def lever_sentence(rows, longest_steps_s: float | None = None) -> str:
    """One clause per lever other than eager: its rate against the eager runs of the same bench, judged
    against the spread of those eager runs (at least 2%), or why it has none. For a faster lever with a
    longer warm-up than eager (torch.compile), the steps' time after which the gain repays it, set against
    ``longest_steps_s`` (the longest unit's time in optimizer steps) when given."""
    from .report import fmt, missing
    if rows is None or rows.empty:
        return "No lever was measured."
    rates = rows.tokens_per_s if "tokens_per_s" in rows else None
    eager = rates[rows.lever == "eager"].dropna() if rates is not None else []
    if len(eager) == 0:
        return "No eager run finished, so no lever has a baseline."
    spread = float(eager.max() / eager.min() - 1)
    band = max(0.02, spread)
    out = []
    for lever in [x for x in dict.fromkeys(rows.lever) if x != "eager"]:
        r = rows[rows.lever == lever].iloc[0]
        what = {"pinned": "Pinning the threads (OMP_PROC_BIND=close, OMP_PLACES=cores)",
                "compiled": "torch.compile (dynamic shapes)"}.get(lever, lever)
        v = r.get("vs_eager")
        if v is None or v != v:
            out.append(f"{what} gave no rate: {r.get('error')}")
            continue
        verdict = ("faster" if v > 1 + band else "slower" if v < 1 - band else
                   f"no different (within {fmt(100 * band, 1)}%, the eager runs' spread or 2%)")
        warm = (f", after a warm-up pass of {fmt(r['warmup_s'], 0)} s that compiled "
                f"{int(r['graphs'])} graph{'s' if int(r['graphs']) != 1 else ''}"
                if lever == "compiled" and not missing(r.get("graphs")) else "")
        extra = float(r.get("warmup_s") or 0) - float(rows[rows.lever == "eager"].warmup_s.mean()) \
            if "warmup_s" in rows else 0.0
        if verdict == "faster" and extra > 0:
            repay = extra / (1 - 1 / v)
            verdict += (f", but its extra {fmt(extra, 0)} s of warm-up is repaid only after {fmt(repay / 60, 0)} min of "
                        "steps in one process" + (f", against at most {fmt(longest_steps_s / 60, 0)} min in any unit"
                                                   if longest_steps_s else ""))
        out.append(f"{what} ran at {fmt(v, 2)}× the eager rate{warm}: {verdict}")
    runs = (f" The {len(eager)} eager runs differed by up to {fmt(100 * spread, 1)}%." if len(eager) > 1 else "")
    return "; ".join(out) + "." + runs

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


def _idle(rates, cores: int):
    """The units that ran on an otherwise idle machine: a 1-minute load average of at most ``cores`` + 0.25."""
    return rates[rates.load <= cores + 0.25]


def rate_gain(rates, cores: int = 2) -> dict[str, float]:
    """Per method: the mean rate of bf16 units over that of fp32 units, counting only units that ran
    with a load average of at most ``cores`` + 0.25 (the machine otherwise idle); NaN without both."""
    if rates.empty:
        return {}
    quiet = _idle(rates, cores)
    mean = quiet.groupby(["method", "precision"]).tokens_per_wall_s.mean()
    return {m: mean.get((m, "bf16-autocast"), math.nan) / mean.get((m, "fp32"), math.nan)
            for m in rates.method.unique()}


def study_gain(rates, before: str = "cpu-v1", after: str = "cpu", cores: int = 2):
    """Per task and method that both profiles trained (``rates``: ``unit_rates((before, after))``): the mean real
    training tokens per second of unit wall time of each profile's units on an idle machine (load average at
    most ``cores`` + 0.25), how many, and after over before."""
    import pandas as pd
    cols = ["task", "method", "before", "n_before", "after", "n_after", "ratio"]
    if rates.empty:
        return pd.DataFrame(columns=cols)
    q = _idle(rates, cores).groupby(["task", "method", "profile"]).tokens_per_wall_s.agg(["mean", "size"])
    rows = []
    for (task, method), g in q.groupby(level=["task", "method"]):
        g = g.droplevel(["task", "method"])
        if before in g.index and after in g.index:
            b, a = g.loc[before], g.loc[after]
            rows.append({"task": task, "method": method, "before": b["mean"], "n_before": int(b["size"]),
                         "after": a["mean"], "n_after": int(a["size"]), "ratio": a["mean"] / b["mean"]})
    return pd.DataFrame(rows, columns=cols)


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


def bench_tasks(bench: dict | None) -> list[str]:
    """The tasks whose batches a bench result timed (an older result names one)."""
    return list((bench or {}).get("tasks") or ([bench["task"]] if bench and bench.get("task") else []))


def speedup_text(bench: dict | None) -> str:
    """bf16 over fp32 per task and method, as a clause: 'on SST-2 batches full FT 1.70×, LoRA 1.41× …'."""
    from .figures import method_label
    from .report import listing
    from .tasks import task_name
    parts = []
    for t in bench_tasks(bench):
        ups = bf16_speedup(bench, t)
        if ups:
            parts.append(f"on {task_name(t)} batches " + listing(
                [f"{method_label(m) if m != 'extract' else 'extraction'} {u:.2f}×" for m, u in ups.items()]))
    return "; ".join(parts) or "not measured"


def step_paragraph(bench: dict | None) -> str:
    """Full fine-tuning's profiled steps, task by task: the whole step's fraction of the ceiling, the matrix
    products' own rate and their share of the step's time, the largest other shares."""
    from .figures import method_label
    from .report import fmt
    from .tasks import task_name
    d = step_breakdown(bench) if bench else None
    if d is None or d.empty:
        return "The training steps have not been profiled yet."
    full = d[d.method == "full"]
    full = full if not full.empty else d
    ceiling = (bench.get("ceiling") or {}).get(full.precision.iloc[0], math.nan)
    out = []
    for r in full.to_dict("records"):
        whole = (f"reached {fmt(100 * r['step_of_ceiling'], 0)}% of the ceiling"
                 if r["step_of_ceiling"] == r["step_of_ceiling"] else "has no unprofiled rate")
        who = "full fine-tuning" if r["method"] == "full" else method_label(r["method"])
        out.append(f"On {task_name(r['task'])} batches a {who} step in {r['precision']} {whole}: "
                   + gap_sentence(r, ceiling) + ".")
    return " ".join(out)


def _duration(*seconds: float) -> list[str]:
    """Durations in one unit: seconds while the largest is under 2 minutes, else minutes."""
    if max(seconds) < 120:
        return [f"{x:.0f} s" for x in seconds]
    return [f"{x / 60:.0f} minute{'' if round(x / 60) == 1 else 's'}" for x in seconds]


def rerun_text(r: dict) -> str:
    """What re-running units over their earlier results showed (``findings.reruns``); empty when none was."""
    n = r.get("n", 0)
    if not n:
        return ""
    one, same, differ, unknown = n == 1, r["same_weights"], r["differ"], r.get("unknown") or []
    known = n - len(unknown)
    ids = lambda xs: ", ".join(f"`{i}`" for i in xs)  # noqa: E731
    bits = (f"the same weights as the result{'' if one else 's'} {'it' if one else 'they'} replaced, bit for bit "
            "(the bytes of the saved tensors)")
    if not known:
        repro = ("The re-run could not be compared with the weights it replaced" if one else
                 "None of the re-runs could be compared with the weights they replaced") + ": those were not on disk"
    elif one:
        repro = ("The re-run saved " + bits if same else
                 "The re-run did not save " + bits + ", and its new result is the one the book uses")
    else:
        repro = ("Every re-run saved " + bits if same == n else f"{same} of the {known} re-runs"
                 + ("" if known == n else " with earlier weights to compare with") + " saved " + bits)
        if differ:
            repro += f"; {ids(differ)} did not, and " + ("its new result is the one" if len(differ) == 1 else
                                                        "their new results are the ones") + " the book uses"
        if unknown:
            repro += f"; {ids(unknown)} had no earlier weights on disk to compare with"
    where = "on a shared machine (the 1-minute load above the cores in use)"
    shared = (f"it had{'' if r['shared_before'] else ' not'} been timed {where}, and the re-run was"
              + ("" if r["shared_after"] else " not") if one else
              f"{r['shared_before'] or 'none'} of them had been timed {where}, and {r['shared_after'] or 'none'} of "
              "the re-runs were")
    timed = r.get("timed", n)
    if timed and r["before_s"]:
        before, after = _duration(r["before_s"], r["after_s"])
        of = "" if timed == n else f" (the {timed} whose earlier time is known)"
        change = (f"{'Its' if one else 'Their'} wall time{of} went from {before} to {after} "
                  f"({r['after_s'] / r['before_s']:.2f}×)")
    else:
        change = f"{'Its' if one else 'Their'} wall time was {_duration(r['after_s'])[0]}"
    return (f"{n} training unit{'' if one else 's'} {'was' if one else 'were'} re-run over {'its' if one else 'their'} "
            f"earlier result{'' if one else 's'} (`train --force`); {shared}. {repro}. {change}; the table above "
            "counts the re-runs, not the results they replaced.")


def runtime_text(runtime: dict, budget_h: float | None = None) -> tuple[str, str]:
    """The Setup chapter's run-time sentence, as (lead, tail), from ``findings.study_time``'s record: the total,
    against the profile's ``time_budget_h`` when it has one, or, for a study not complete, what is left."""
    h = runtime.get("total_wall_h") or 0.0
    if runtime.get("complete", True):
        budget = "" if not budget_h else (
            f"within the profile's budget of {budget_h:g} hours (`time_budget_h`); " if h <= budget_h else
            f"{h - budget_h:.2f} hours over the profile's budget of {budget_h:g} (`time_budget_h`); ")
        return (f"All stages together took {h:.2f} hours",
                budget + "the figure to plan a re-run of this profile with, on similar hardware.")
    tr = next((x for x in runtime.get("stages", []) if x["stage"] == "train"), {})
    return (f"The study is not complete: the stages run so far took {h:.2f} hours",
            f"with {tr.get('units_done')} of its {tr.get('units_planned')} training units done; the rest of the "
            f"training is projected at {runtime.get('projected_left_s', 0) / 3600:.1f} hours from the done units' "
            "seconds per training token (the drift of the remaining tasks and the serving benchmark not included).")

