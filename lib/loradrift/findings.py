"""Findings: the study's results as numbers, for the setup and training chapters, the preface and the
limitations (the search's are in ``search_findings``).

Every function here reads ``data/<profile>/`` (a profile name, a YAML path or a loaded profile) and
returns floats, dicts or DataFrames of numbers; nothing is formatted. A chapter formats a number
where it shows it (``report.fmt``, ``report.pm``, the table builders in ``figures``). A missing
result gives an empty frame, an empty dict or NaN, never an error; an unreadable one is named in a
warning (``store.UnreadableResult``, which the book shows as a note) and read as missing.
"""
from __future__ import annotations

import math

from .config import active_profile, load_profile, run_id, searched_values, unit_config, units
from .methods import kind_of
from .store import data_dir, read_or, result_path


def _read(prof_name: str, result: str, empty):
    return read_or(result_path(prof_name, result), empty)


# ---------------------------------------------------------------------------- training units
def runs_frame(prof=None, subdir: str = "runs"):
    """One row per training unit: test and validation metrics, cost, status (``subdir``: another set
    of units kept beside the study's, e.g. ``runs_untuned``)."""
    import pandas as pd

    from .tasks import task_metric
    from .train import load_runs
    p = load_profile(prof)
    rows = []
    for r in load_runs(p, subdir):
        metric = task_metric(r["task"])
        rows.append({"id": r["id"], "task": r["task"], "method": r["method"], "seed": r["seed"],
                     "status": r["status"], "metric": metric, "test_score": r["test"][metric],
                     "test_accuracy": r["test"]["accuracy"], "test_f1": r["test"]["f1"],
                     "val_score": r["validation"][metric],
                     "train_s": r["train_runtime_s"], "wall_s": r["wall_time_s"],
                     "tokens_per_s": r.get("tokens_per_s"), "pad_fraction": r.get("pad_fraction"),
                     "trainable": r["params"]["trainable"], "total": r["params"]["total"],
                     "steps": r["steps"], "early_stopped": r["early_stopped"], **_unit_design(p, r)})
    return pd.DataFrame(rows)


def _unit_design(prof: dict, r: dict) -> dict:
    """What a unit varies in the study's design (kind, base method of a learning-curve variant, learning
    rate, LoRA rank, training-set size) and its predictions' class shares, ours and in the original's
    re-evaluation format (NaN where a unit predates these records)."""
    import re
    cfg, orig, metric = r.get("config") or {}, r.get("test_original_eval") or {}, r.get("metric")
    train = cfg.get("training") or {}
    m = re.fullmatch(r"(.+)-n\d+", r["method"])
    base = m.group(1) if m and m.group(1) in prof["methods"] else r["method"]
    kind = prof["methods"][r["method"]]["kind"] if r["method"] in prof["methods"] else cfg.get("kind", r["method"])
    from .tasks import task_metric
    return {"kind": kind, "base_method": base, "learning_rate": train.get("learning_rate", math.nan),
            "lora_r": train.get("lora_r", math.nan),
            "train_size": ((cfg.get("data") or {}).get("sizes") or {}).get("train_size") or r.get("n_train"),
            "top_class_share": r["test"].get("top_class_share", math.nan),
            "orig_score": orig.get(metric or task_metric(r["task"]), math.nan),
            "orig_top_class_share": orig.get("top_class_share", math.nan)}


def summary_frame(runs):
    """Mean ± sd (ddof=1) of the test metric over seeds, per task and method."""
    if runs.empty:
        return runs
    g = runs.groupby(["task", "method"])
    return g.agg(metric=("metric", "first"), n_seeds=("seed", "nunique"), mean=("test_score", "mean"),
                 sd=("test_score", "std"), accuracy=("test_accuracy", "mean"), f1=("test_f1", "mean"),
                 train_s=("train_s", "mean"), tokens_per_s=("tokens_per_s", "mean"),
                 pad_fraction=("pad_fraction", "mean"), trainable=("trainable", "first"),
                 total=("total", "first")).reset_index()


def unit_counts(prof, runs) -> dict:
    """The profile's units (task x method x seed) and how many of ``runs`` are done and stale."""
    status = runs["status"].value_counts() if not runs.empty else {}
    return {"units": len(units(load_profile(prof))), "done": int(status.get("done", 0)),
            "stale": int(status.get("stale", 0))}


def learning_curves(prof=None):
    """(training loss, validation-slice metric) against optimisation steps: one row per logged step
    of each unit (the validation metric is the task's own: F1 for MRPC)."""
    import pandas as pd

    from .tasks import task_metric
    from .train import load_runs
    p = load_profile(prof)
    tr, va = [], []
    for r in load_runs(p):
        unit = {"task": r["task"], "method": r["method"], "seed": str(r["seed"])}
        tr += [{**unit, "step": c["step"], "loss": c["loss"]} for c in r["curves"]["train"]]
        va += [{**unit, "step": c["step"], "metric": c[task_metric(r["task"])]} for c in r["curves"]["validation"]]
    return pd.DataFrame(tr), pd.DataFrame(va)


def unit_settings(prof=None):
    """Per task x method the study trains (learning-curve size variants left out), the training values a
    unit gets (the method's, or the search's where the profile has them): numbers, with NaN for LoRA
    settings of a method that has none."""
    import pandas as pd
    p = load_profile(prof)
    rows = []
    pairs = dict.fromkeys((t, m) for t, m, _ in units(p) if "train_size" not in p["methods"][m])
    for task, m in sorted(pairs, key=lambda tm: p["tasks"].index(tm[0])):
        t = unit_config(p, task, m, p["seeds"][0])["training"]
        rows.append({"task": task, "method": m, "searched": bool(searched_values(p, task, m)),
                     "learning_rate": t["learning_rate"], "epochs": t["num_train_epochs"],
                     "batch": t["per_device_train_batch_size"] * t.get("gradient_accumulation_steps", 1),
                     "warmup_ratio": t["warmup_ratio"], "weight_decay": t["weight_decay"],
                     **{k: t.get(k, math.nan) for k in ("lora_r", "lora_alpha", "lora_dropout")}})
    return pd.DataFrame(rows)


def test_scores(runs, summ):
    """Per task x method: the test metric of each seed (in seed order), its mean and sd, and the
    original study's mean and sd of the same metric (NaN where the original has no such method)."""
    import numpy as np
    import pandas as pd

    from . import original
    rows = []
    for _, r in summ.iterrows():
        o = original.PERFORMANCE.get(r["task"], {}).get(r["method"], {}).get(r["metric"])
        seeds = runs[(runs.task == r["task"]) & (runs.method == r["method"])].sort_values("seed")
        rows.append({"task": r["task"], "method": r["method"], "metric": r["metric"], "seeds": int(r["n_seeds"]),
                     "scores": list(seeds["test_score"]), "mean": r["mean"], "sd": r["sd"],
                     "original_mean": float(np.mean(o)) if o else math.nan,
                     "original_sd": float(np.std(o, ddof=1)) if o else math.nan})
    return pd.DataFrame(rows)


def adapter_cost(prof, summ) -> dict:
    """What adapters save in training: the share of weights that methods of an adapter kind (LoRA)
    train, and their real tokens per second over those of full fine-tuning (NaN when either is absent)."""
    p = load_profile(prof)
    if summ.empty:
        return {"trainable_fraction": math.nan, "speedup": math.nan}
    adapter = summ[summ.method.map(lambda m: m in p["methods"] and kind_of(p, m).adapter)]
    full = summ[summ.method.map(lambda m: m in p["methods"] and kind_of(p, m).name == "full")]
    frac = float((adapter["trainable"] / adapter["total"]).mean()) if len(adapter) else math.nan
    speed = adapter["tokens_per_s"].mean() / full["tokens_per_s"].mean() if len(adapter) and len(full) else math.nan
    return {"trainable_fraction": frac, "speedup": float(speed)}


# ---------------------------------------------------------------------------- setup
def split_stats(prof=None):
    """Per task and split: size, share of label 1, token lengths, share truncated."""
    import pandas as pd
    return pd.DataFrame(_read(load_profile(prof)["name"], "data_stats", {}).get("splits", []))


def setup_environment(prof=None) -> dict:
    """Hardware and software the setup stage recorded ({} before it ran)."""
    return _read(load_profile(prof)["name"], "data_stats", {}).get("environment", {})


def baselines(prof=None):
    """The trivial predictors on the test split: task, baseline, accuracy, f1."""
    import pandas as pd
    return pd.DataFrame(_read(load_profile(prof)["name"], "baselines", []), columns=["task", "baseline", "accuracy", "f1"])


def majority(prof=None) -> dict:
    """task -> the majority-class baseline's {"accuracy", "f1", "score"} (score: the task's metric)."""
    from .tasks import task_metric
    b = baselines(prof)
    return {r.task: {"accuracy": r.accuracy, "f1": r.f1, "score": getattr(r, task_metric(r.task))}
            for r in b[b.baseline == "majority"].itertuples()}


def sanity(prof=None) -> dict:
    """method -> the sanity check's record (losses, final_loss, passed, seconds); {} before it ran."""
    return _read(load_profile(prof)["name"], "sanity", {})


def recorded_study_time(prof=None) -> dict:
    """The run time the ``timing`` stage recorded (``study_time``'s dict); {} before it ran."""
    return _read(load_profile(prof)["name"], "study_time", {})


def _busy(env: dict | None, load: float | None) -> bool:
    """Was the machine shared? The 1-minute load average above the cores in use (+ 0.5)."""
    return (load or 0) > ((env or {}).get("cpu_count") or 1) + 0.5


def reruns(prof=None) -> dict:
    """The training units re-run over an earlier result of the same configuration (``train --force`` records
    what it replaced, ``previous``): how many (``n``), how many saved the same weights bit for bit
    (``same_weights``; ``differ``: the ids that did not; ``unknown``: those with no earlier weights to compare
    with); over the re-runs whose earlier wall time is known (``timed``), the summed wall seconds of the
    replaced results and of the re-runs (``before_s``, ``after_s``); and how many of each were timed on a
    shared machine (``shared_before``, ``shared_after``)."""
    p = load_profile(prof)
    runs = [r for r in (read_or(x) for x in sorted((data_dir(p["name"]) / "runs").glob("*.json")))
            if r is not None and r.get("previous")]
    same = [r["previous"].get("same_weights") for r in runs]
    timed = [r for r in runs if r["previous"].get("wall_time_s") is not None]
    prev_env = lambda r: {"cpu_count": r["previous"].get("cpu_count") or (r.get("environment") or {}).get("cpu_count")}  # noqa: E731
    return {"n": len(runs), "same_weights": sum(x is True for x in same),
            "differ": [r["id"] for r, x in zip(runs, same) if x is False],
            "unknown": [r["id"] for r, x in zip(runs, same) if x is None],
            "timed": len(timed), "before_s": sum(r["previous"]["wall_time_s"] for r in timed),
            "after_s": sum(r["wall_time_s"] for r in timed),
            "shared_before": sum(_busy(prev_env(r), (r["previous"].get("load_avg") or [0])[0]) for r in runs),
            "shared_after": sum(_busy(r.get("environment"), ((r.get("environment") or {}).get("load_avg") or [0])[0])
                                for r in runs)}


def study_time(prof_name: str | dict | None = None) -> dict:
    """The study's run time, stage by stage, from the times each result recorded when it was computed.

    A stage run in several sittings (or resumed) is the sum of its pieces; results that were skipped
    because they were current cost nothing again. Wall times taken on a shared machine are inflated;
    the per-stage ``loaded`` flag says where the 1-minute load average exceeded the cores in use.
    """
    prof = prof_name if isinstance(prof_name, dict) else None
    name = prof["name"] if prof else prof_name or active_profile()
    d = data_dir(name)
    stages = []

    def add(stage, wall, cpu=None, n=None, loaded=None, what=""):
        if wall:
            stages.append({"stage": stage, "wall_s": float(wall), "cpu_s": None if cpu is None else float(cpu),
                           "pieces": n, "loaded": loaded, "what": what})

    s = _read(name, "sanity", {})
    if s:
        add("setup", sum(v.get("seconds", 0) for v in s.values()), n=len(s),
            what="sanity check (data statistics and baselines take seconds and are not timed)")
    s = _read(name, "search_summary", {})
    if s:
        add("search", s.get("wall_s"), s.get("cpu_s"), n=len(s.get("studies", [])),
            what="hyperparameter search, all trials")
    runs = [r for r in (read_or(p) for p in sorted((d / "runs").glob("*.json"))) if r is not None]
    if runs:
        cores = max((r.get("environment") or {}).get("cpu_count") or 1 for r in runs)
        loads = [((r.get("environment") or {}).get("load_avg") or [0])[0] for r in runs]
        add("train", sum(r["wall_time_s"] for r in runs), n=len(runs),
            loaded=any(_busy({"cpu_count": cores}, x) for x in loads),
            what="training units, with their validation and test evaluations")
        stages[-1].update(_units_projection(prof or name, runs, cores))
    s = _read(name, "drift_timing", {})
    if s:
        add("drift", s.get("total_wall_s"), s.get("total_cpu_s"), n=len(s.get("per_task", {})),
            what="hidden states, measures, weight space and perplexity")
    m = _read(name, "deploy_meta", {})
    if m:
        add("deploy", m.get("wall_time_s"), n=1, loaded=_busy(m.get("environment"), (m.get("loadavg_before") or [0])[0]),
            what="serving benchmark on the trained models")
    total = sum(s["wall_s"] for s in stages)
    left = sum(s.get("projected_left_s") or 0 for s in stages)
    return {"profile": name, "stages": stages, "total_wall_s": total, "total_wall_h": total / 3600,
            "complete": not left, "projected_left_s": left,
            "note": "sum of the wall times recorded by each stage's results; model conversion, installs "
                    "and rendering are not included"}


def _units_projection(prof: str | dict, runs: list[dict], cores: int) -> dict:
    """How much of the profile's study the training results cover: units planned and done, and for the units
    not done yet a projected wall time: its training tokens (training-set size x the task's mean training
    length, `data_stats`; 1 per example without them) x the median seconds per training token of the done
    units of the same task and method kind run on a quiet machine (1-minute load average at most the cores +
    0.5), else of that kind on any task (``projected_from_other_tasks`` counts those; fixed costs per unit
    make these the roughest); ``not_projected``: units with no done unit of their kind, or no known size."""
    import statistics
    try:
        p = load_profile(prof)
        planned = units(p)
    except Exception:   # not a profile (a bare results folder) or one without units: nothing to project
        return {}
    name = p["name"]
    quiet = [r for r in runs if (((r.get("environment") or {}).get("load_avg") or [0])[0] <= cores + 0.5)
             and r.get("n_train")] or [r for r in runs if r.get("n_train")]
    kind = lambda m: type(kind_of(p, m)).__name__ if m in p["methods"] else m  # noqa: E731
    train = [x for x in _read(name, "data_stats", {}).get("splits", []) if x.get("split") == "train"]
    length = {x["task"]: x["tokens_mean"] for x in train if x.get("tokens_mean")}
    size = {x["task"]: x["n"] for x in train if x.get("n")}   # a task trained on its whole split
    per = {}
    for r in quiet:
        rate = r["wall_time_s"] / (r["n_train"] * length.get(r["task"], 1.0))
        per.setdefault((r["task"], kind(r["method"])), []).append(rate)
        per.setdefault(("*", kind(r["method"])), []).append(rate)
    done = {r.get("id") for r in runs}
    left, other, unknown = 0.0, 0, 0
    for task, method, seed in planned:
        if run_id(task, method, seed) in done:
            continue
        n = unit_config(p, task, method, seed)["data"]["sizes"]["train_size"] or size.get(task)
        rate = per.get((task, kind(method)))
        guessed = rate is None
        rate = per.get(("*", kind(method))) if guessed else rate
        if not rate or not n:
            unknown += 1
            continue
        left += statistics.median(rate) * n * length.get(task, 1.0)
        other += guessed
    return {"units_planned": len(planned), "units_done": len(done & {run_id(*u) for u in planned}),
            "projected_left_s": left, "projected_from_other_tasks": other, "not_projected": unknown}


# ---------------------------------------------------------------------------- currency
def outdated(prof=None) -> dict:
    """Results that are not current (the store's keys): {"train": [stale unit ids], "drift": [tasks whose
    settings or units changed], "deploy": [method/task re-trained since, or "settings"]}; empty when current."""
    from . import drift, serving
    p = load_profile(prof)
    runs = runs_frame(p)
    meta = _read(p["name"], "deploy_meta", None)
    return {"train": sorted(runs[runs.status != "done"]["id"]) if not runs.empty else [],
            "drift": [t for t in p["tasks"] if result_path(p["name"], "drift", task=t).exists()
                      and not drift.is_current(p, t)],
            "deploy": [] if meta is None else (serving.outdated_units(p, meta)
                                                or ([] if serving.results_current(p, meta) else ["settings"]))}


# ---------------------------------------------------------------------------- the preface's headline
def _headline_endpoint(cfg: dict, task: str, tests) -> tuple[str, str, str]:
    """(pooling, measure, depth) the preface quotes for a task: its first pre-registered primary endpoint; for
    a task without one, the first endpoint's pooling, measure and depth (every row on one scale); for results
    from before the registration, masked-mean 1 - CKA at the final norm."""
    primary = (cfg.get("primary") or []) if "family" in tests else []
    e = next((e for e in primary if e["task"] == task), primary[0] if primary else None)
    return (e["pooling"], e["measure"], e["depth"]) if e else ("masked", "cka", "final_norm")


def headline_study(prof=None):
    """Per task x compared method (``drift.compare``): the test metric (``test_mean``, ``test_sd`` over
    seeds), the drift at the task's headline endpoint (``drift``: 1 - the similarity with the base model,
    mean over seeds; ``pooling``, ``measure``, ``depth``: its first primary endpoint, else masked-mean linear
    CKA at the final norm) and that endpoint's exact permutation test of the methods' drift (``perm_p``,
    ``perm_p_holm``: Holm over the primary endpoints); ``units``: current, stale or partly stale. NaN where
    a stage has not run."""
    import pandas as pd

    from . import drift
    from .drift.settings import DEPTHS, drift_config
    p = load_profile(prof)
    runs = runs_frame(p)
    summ = summary_frame(runs)
    res = drift.load_results(p)
    sd, tests, cfg = res["seeds"], res["tests"], drift_config(p)
    first = lambda s: s.iloc[0] if len(s) else math.nan   # noqa: E731
    cols = ["task", "metric", "units", "method", "test_mean", "test_sd", "pooling", "measure", "depth", "drift",
            "perm_p", "perm_p_holm"]
    rows = []
    for task in [t for t in p["tasks"] if not summ.empty and t in set(summ.task)]:
        status = set(runs[runs.task == task]["status"])
        state = "current" if status == {"done"} else "stale" if status == {"stale"} else "partly stale"
        pooling, measure, depth = _headline_endpoint(cfg, task, tests)
        t = tests[(tests.task == task) & (tests.pooling == pooling) & (tests.measure == measure)
                  & (tests.summary == DEPTHS[depth])] if not tests.empty else tests
        for m in [m for m in cfg["compare"] if m in set(summ[summ.task == task].method)]:
            s = summ[(summ.task == task) & (summ.method == m)]
            g = sd[(sd.task == task) & (sd.method == m) & (sd.pooling == pooling) & (sd.measure == measure)] \
                if not sd.empty else sd
            rows.append({"task": task, "metric": summ[summ.task == task]["metric"].iloc[0], "units": state,
                         "method": m, "test_mean": first(s["mean"]), "test_sd": first(s["sd"]),
                         "pooling": pooling, "measure": measure, "depth": depth,
                         "drift": g[DEPTHS[depth]].mean() if len(g) else math.nan,
                         "perm_p": first(t["perm_p"]) if len(t) else math.nan,
                         "perm_p_holm": first(t["perm_p_holm"]) if len(t) and "perm_p_holm" in t else math.nan})
    return pd.DataFrame(rows, columns=cols)


def headline_serving(prof=None):
    """The preface's serving costs as numbers, one row per value shown: ``kind`` latency (a ratio of
    ``numerator`` to ``denominator`` mode with its 95% interval, per ``task`` where each model serves one
    task, NaN where it was not measured), throughput (``num``/``den`` requests per second, a merged model
    per task as their harmonic mean) or storage (``num``/``den`` bytes); empty before the benchmark ran."""
    import pandas as pd

    from . import serving
    cols = ["kind", "numerator", "denominator", "batch_size", "task", "ratio", "ci_low", "ci_high", "num", "den"]
    p = load_profile(prof)
    return pd.DataFrame(serving.headline(serving.load_results(data_dir(p["name"])), p["tasks"]), columns=cols)


# ---------------------------------------------------------------------------- limitations
def limitations(prof=None) -> dict:
    """The numbers the limitations chapter cites: the original formula's similarity of the base model with
    itself across depths (``self_similarity``: min, max), the smallest attainable permutation p, the model's
    parameters and those an adapter method trains, each task's mean test accuracy (both methods) and majority
    accuracy, the serving benchmark's device, the architecture-only runs and whether vLLM ran."""
    import re

    from . import drift, serving
    p = load_profile(prof)
    runs, res, dep = runs_frame(p), drift.load_results(p), serving.load_results(data_dir(p["name"]))
    L, T = res["layers"], res["tests"]
    selfsim = L[(L.method == "base") & (L.measure == "original_study_similarity")]["value"] if not L.empty else []
    adapter = [m for m in p["methods"] if kind_of(p, m).adapter]
    a_runs = runs[runs.method.isin(adapter)] if not runs.empty else runs
    summ, maj = summary_frame(runs), majority(p)
    env = dep["meta"]["environment"] if dep else {}
    return {"self_similarity": (float(min(selfsim)), float(max(selfsim))) if len(selfsim) else (math.nan, math.nan),
            "min_attainable_p": float(T["min_attainable_p"].min()) if not T.empty else math.nan,
            "min_attainable_p_by_task": T.groupby("task")["min_attainable_p"].min().to_dict() if not T.empty else {},
            "seeds_by_task": (runs[runs.method.isin(drift.drift_config(p)["compare"])].groupby("task")["seed"].nunique()
                              .to_dict() if not runs.empty else {}),
            "total_params": int(runs["total"].iloc[0]) if not runs.empty else None,
            "adapter_params": int(a_runs["trainable"].iloc[0]) if len(a_runs) else None,
            "model": re.sub(r"(\.Q\w+)?\.gguf$", "", p["model"]["name_or_path"].split("/")[-1]),
            "train_sizes": {t: v["train_size"] for t, v in p["data"]["tasks"].items()},
            "accuracy_vs_majority": {t: (float(summ[summ.task == t]["accuracy"].mean()), maj[t]["accuracy"])
                                     for t in (set(summ.task) if not summ.empty else ()) if t in maj},
            "device": (env.get("gpu") or env.get("cpu")) if dep else None,
            "arch_runs": list(serving.arch_results()), "vllm_ran": bool(dep and dep.get("vllm_meta"))}
