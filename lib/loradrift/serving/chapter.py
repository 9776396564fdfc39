"""What the deployment chapter displays: its tables (frames for ``report.table``) and the values of its
prose, formatted where they are shown ("n/a" where a result is missing). The numbers come from
``findings``; nothing here is parsed back.
"""
from __future__ import annotations

import math

from .findings import (CLAIMS, GOAL_MIXED, against_original, claim, controls, correctness_summary, cost_table,
                       has_latency, mixed_serving, storage_mb, timing_error)
from .modes import MODES

NA = "n/a"


def num(x, spec: str, suffix: str = "", na: str = NA) -> str:
    """A number in a format spec (and a unit), or ``na`` when it is missing (None or NaN)."""
    return na if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec) + suffix


def interval(ratio, lo, hi, digits: int = 3) -> str:
    """'1.031× [1.017, 1.047]', or "n/a"."""
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return NA
    return f"{ratio:.{digits}f}× [{lo:.{digits}f}, {hi:.{digits}f}]"


def pm_pct(x) -> str:
    """A resolution as '±1.4%'."""
    return NA if x is None or math.isnan(x) else f"±{100 * x:.1f}%"


# ---------------------------------------------------------------------------- tables
def modes_table(D):
    import pandas as pd
    comps = (D["meta"]["config"]["comparisons"] if has_latency(D) else {})
    where = {m.name: ", ".join(n for n, c in comps.items() if m.name in c["modes"]) or "–" for m in MODES.values()}
    return pd.DataFrame([{"mode": m.name, "what is served": m.label, "batches": m.schedule,
                          "comparisons": where[m.name]} for m in MODES.values()])


def claims_table(D):
    """One row per claim of the original (7-9): the claim, the measured ratio at batch 1 with its
    interval, the resolution there, the cost model's prediction, the verdict."""
    import pandas as pd
    out = []
    for n in CLAIMS:
        c = claim(D, n)
        m = c["measured"]
        out.append({"claim": f"{n}: {c['text']}", "ratio": f"{c['numerator']} / {c['denominator']}",
                    "claimed": f"{'<' if c['reads'] == 'below' else ''}{c['claimed']:.3f}×",
                    "measured [95% CI]": interval(m["ratio"], *m["ci"]) if m else NA,
                    "resolution": pm_pct(m["resolution"]) if m else NA,
                    "predicted": num(m["predicted"], ".3f", "×") if m else NA, "verdict": c["verdict"]})
    return pd.DataFrame(out)


def controls_table(D):
    import pandas as pd
    rows = controls(D["ratios"])
    return pd.DataFrame([{"control": r["control"], "stream": r["stream"], "batch": r["batch_size"],
                          "ratio [95% CI]": interval(r["ratio"], r["ci_low"], r["ci_high"]),
                          "distance from 1": pm_pct(r["distance"]), "pairs": r["n_pairs"]} for r in rows])


def ratios_table(D):
    """Every ratio with its interval, the repeats' own ratios (range), pairs, and the prediction."""
    r = D["ratios"]
    return r.assign(**{"ratio [95% CI]": [interval(x.ratio, x.ci_low, x.ci_high) for x in r.itertuples()],
                       "repeats": [f"{x.repeat_min:.3f}–{x.repeat_max:.3f}" for x in r.itertuples()],
                       "pair": r.numerator + " / " + r.denominator})[
        ["comparison", "stream", "batch_size", "pair", "ratio [95% CI]", "gmean_ratio", "repeats", "n_pairs",
         "predicted"]].rename(columns={"batch_size": "batch", "gmean_ratio": "geo. mean", "n_pairs": "pairs"})


def cost_model_table(D):
    """Predicted against measured for every ratio."""
    import pandas as pd
    t = pd.DataFrame(cost_table(D))
    t["pair"] = t.numerator + " / " + t.denominator
    t["measured [95% CI]"] = [interval(x.measured, x.ci_low, x.ci_high) for x in t.itertuples()]
    t["resolution"] = t.resolution.map(pm_pct)
    return t[["comparison", "stream", "batch_size", "pair", "flop_ratio", "bytes_ratio", "extra_ops", "predicted",
              "measured [95% CI]", "resolution"]].rename(columns={
        "batch_size": "batch", "flop_ratio": "FLOPs", "bytes_ratio": "weight bytes", "extra_ops": "extra op calls"})


def latency_table(D):
    t = D["latency"].copy()
    t["req/s (repeats)"] = [f"{x.throughput_rps:.1f} ({x.throughput_repeat_min:.1f}–{x.throughput_repeat_max:.1f})"
                            for x in t.itertuples()]
    return t[["comparison", "stream", "mode", "batch_size", "n_requests", "latency_p50_ms", "latency_p99_ms",
              "req/s (repeats)", "mean_batch", "pad_fraction"]].rename(columns={
        "batch_size": "batch", "n_requests": "n", "latency_p50_ms": "p50 ms", "latency_p99_ms": "p99 ms",
        "mean_batch": "mean batch", "pad_fraction": "pad"})


def schedules_table(D):
    s = D["schedules"]
    s = s[s.stream == "interleaved"].drop_duplicates(["batch_size", "scheduler"])
    return s[["batch_size", "scheduler", "batches_per_window", "pad_fraction"]].rename(columns={
        "batch_size": "batch", "batches_per_window": "batches per window", "pad_fraction": "pad"})


def points_table(D):
    return D["points"][["comparison", "stream", "batch_size", "windows", "repeats", "threads", "wall_s",
                        "load_before", "load_after"]].rename(columns={"batch_size": "batch", "wall_s": "s"})


def memory_table(D):
    cols = {"comparison": "comparison", "stream": "stream", "mode": "mode", "load_s": "load s",
            "model_mb": "model MB", "rss_peak_increase_mb": "peak RSS +MB (comparison)"}
    if "cuda_peak_increase_mb" in D["memory"]:
        cols["cuda_peak_increase_mb"] = "peak GPU +MB"
    return D["memory"][list(cols)].rename(columns=cols)


def storage_table(D):
    s = D["storage"].copy()
    s["MB"] = s["bytes"] / 2**20
    return s[["artifact", "task", "MB", "source"]]


def correctness_table(D):
    return D["correctness"][["mode", "reference", "stream", "task", "batch_size", "n", "prediction_agreement",
                             "max_abs_dlogit", "kind", "passed"]].rename(columns={
        "batch_size": "batch", "prediction_agreement": "agreement", "max_abs_dlogit": "max |Δlogit|"})


def accuracy_table(D):
    return D["accuracy"][["task", "mode", "stream", "n", "accuracy", "unit_test_accuracy", "unit_test_n"]].rename(
        columns={"unit_test_accuracy": "unit test acc.", "unit_test_n": "unit test n"}).sort_values(["task", "mode"])


def original_table(D):
    import pandas as pd
    return pd.DataFrame(against_original(D))


# ---------------------------------------------------------------------------- prose
def setup_text(D) -> dict[str, str]:
    """The run's setup: seed, tasks, dtype, device, threads, repeats, warm-up, timer, dispatch cost, the
    load before and after, its minutes."""
    keys = ("seed", "tasks", "dtype", "device", "threads", "repeats", "warmup", "timer", "dispatch_us", "load",
            "minutes", "weights")
    if not has_latency(D):
        return dict.fromkeys(keys, NA)
    meta, env = D["meta"], D["meta"]["environment"]
    cfg, pts = meta["config"], D["points"]
    return {"seed": str(meta.get("seed", cfg.get("seed"))), "tasks": ", ".join(meta.get("tasks") or cfg.get("tasks")),
            "dtype": meta["dtype"], "device": env["gpu"] or env["cpu"], "threads": str(pts["threads"].iloc[0]),
            "repeats": str(cfg["repeats"]), "warmup": str(cfg["warmup"]), "timer": meta["timer"],
            "dispatch_us": num(1e6 * sum(meta["dispatch_s"]) / len(meta["dispatch_s"]), ".1f"),
            "load": f"{pts['load_before'].min():.2f}–{max(pts['load_before'].max(), pts['load_after'].max()):.2f}",
            "minutes": num(meta["wall_time_s"] / 60, ".1f"), "weights": meta["weights"]}


def claims_text(D) -> dict[str, str]:
    """Each claim's verdict and measured ratio for the prose: {"v7", "r7", "res7", "p7", ...}."""
    out = {}
    for n in CLAIMS:
        c = claim(D, n)
        m = c["measured"]
        out |= {f"v{n}": c["verdict"], f"r{n}": interval(m["ratio"], *m["ci"]) if m else NA,
                f"res{n}": pm_pct(m["resolution"]) if m else NA, f"p{n}": num(m["predicted"], ".3f", "×") if m else NA}
    ident = claim(D, 9).get("identical") or {}
    out["ident"] = f"{ident.get('passed', 0)} of {ident.get('n', 0)}" if ident else NA
    return out


def mixed_text(D) -> dict[str, str]:
    """The mixed-adapter serving result for the prose."""
    m = mixed_serving(D)
    keys = ("bs", "ratio", "goal", "met", "p50", "p99", "p50_routed", "p99_routed", "pad", "pad_routed", "predicted",
            "vs_multi")
    if m is None:
        return {**dict.fromkeys(keys, NA), "goal": f"{GOAL_MIXED:.1f}×"}
    return {"bs": str(m["batch_size"]), "ratio": interval(m["throughput_ratio"], *m["ci"], digits=2),
            "goal": f"{m['goal']:.1f}×", "met": "met" if m["goal_met"] else "not met",
            "p50": num(m["p50_mixed"], ".0f"), "p99": num(m["p99_mixed"], ".0f"),
            "p50_routed": num(m["p50_routed-merged"], ".0f"), "p99_routed": num(m["p99_routed-merged"], ".0f"),
            "pad": num(100 * m["pad_mixed"], ".0f", "%"), "pad_routed": num(100 * m["pad_routed-merged"], ".0f", "%"),
            "predicted": num(m["predicted"], ".2f", "×"),
            "vs_multi": interval(*m["vs_multi"], digits=2) if m["vs_multi"] else NA}


def resolution_text(D) -> dict[str, str]:
    """The controls' largest distances from 1 (A/A, merged / full) and whether the ±2% target was met."""
    if not has_latency(D):
        return dict.fromkeys(("aa", "same", "target"), NA)
    e = timing_error(D["ratios"])
    met = not math.isnan(e["aa"]) and e["aa"] <= 0.02
    return {"aa": pm_pct(e["aa"]), "same": pm_pct(e["same"]), "target": "met" if met else "not met"}


def storage_text(D) -> dict[str, str]:
    """MB on disk of an adapter and of a full model, their ratio, MB in memory of the resident and the
    routed models."""
    if not has_latency(D):
        return dict.fromkeys(("adapter", "full", "ratio", "resident", "routed"), NA)
    s = storage_mb(D)
    return {"adapter": num(s["adapter"], ".2f"), "full": num(s["full"], ".1f"),
            "ratio": num(s["full"] / s["adapter"], ".0f"), "resident": num(s["resident"], ".0f"),
            "routed": num(s["routed"], ".0f")}


def correctness_text(D) -> dict[str, str]:
    """Checks passed of checks run; the merged model's lowest agreement and largest |Δlogit|."""
    if not has_latency(D) or D["correctness"].empty:
        return dict.fromkeys(("n", "passed", "merged_agreement", "merged_dlogit"), NA)
    c = correctness_summary(D)
    return {"n": str(c["n"]), "passed": str(c["passed"]),
            "merged_agreement": num(100 * c["merged_agreement"], ".1f", "%"),
            "merged_dlogit": num(c["merged_dlogit"], ".2g")}


def arch_note(name: str, R: dict) -> str:
    """One architecture-only run's description: what, where, its configuration and duration."""
    m = R["meta"]
    c, env = m["config"], m["environment"]
    dev = env["gpu"] or f'{env["cpu"]}, {env["torch_threads"]} threads'
    comps = "; ".join(f"{n}: {', '.join(v['modes'])} at batch {', '.join(map(str, v['windows']))}"
                      for n, v in c["comparisons"].items())
    return (f"**{name}** — {m['kind']}; {m['arch']} on {dev}, {c['dtype']}, {m['timer']}; {c['repeats']} repeats; "
            f"{comps}; token lengths: {', '.join(f'{t} {v:.0f}' for t, v in m['mean_length'].items())} (mean; "
            f"{next(iter(m['length_source'].values()))}); {m['wall_time_s'] / 60:.1f} min.")


def vllm_text(D) -> dict[str, str]:
    """Why vLLM did not run here (as the run recorded it, else as this machine says), and whether a
    vLLM run's results are present."""
    from .vllm import vllm_available
    info = D["meta"].get("vllm", {}) if has_latency(D) else {}
    return {"why": info.get("detail") or vllm_available()[1],
            "ran": "yes" if has_latency(D) and "vllm_meta" in D else "no"}


# ---------------------------------------------------------------------------- the preface's answer
def _claim_clause(c: dict) -> str:
    return f"the original's claim {c['claim']} ({c['text']}) is {c['verdict']}"


def rq2_answer(D) -> str:
    """The answer to RQ2 in plain sentences for the preface, every value from the benchmark's results: what
    an unmerged adapter costs against the fully fine-tuned model (batch size 1 and the largest measured) and
    a merged one, the timings' resolution, one base with many adapters, mixed-adapter batching, storage;
    the verdicts on the original's claims 7-9 in the same words as the chapter's."""
    from .findings import compare
    if not has_latency(D):
        return "Not measured yet on this profile: the serving benchmark has not run."
    env = D["meta"].get("environment", {})
    rat, dev = D["ratios"], env.get("gpu") or env.get("cpu") or "this machine"
    c7, c8, c9 = (claim(D, n) for n in (7, 8, 9))
    out = []
    if c7["measured"]:
        big = max(int(b) for b in rat[(rat.numerator == "lora") & (rat.denominator == "full")].batch_size)
        m, mb = c7["measured"], compare(rat, "lora", "full", big)
        at_big = f" and {interval(mb['ratio'], *mb['ci'])} at batch size {big}" if big != 1 and mb else ""
        out.append(f"On {dev}, an unmerged LoRA adapter took {interval(m['ratio'], *m['ci'])} of the fully fine-tuned "
                   f"model's time at batch size 1{at_big}: {_claim_clause(c7)}.")
    if c8["measured"]:
        m = c8["measured"]
        out.append(f"Merged into the base, an adapter took {interval(m['ratio'], *m['ci'])} of the full model's "
                   f"time at batch size 1, where two copies of one model differ by up to {pm_pct(m['resolution'])}: "
                   f"{_claim_clause(c8)}.")
    if c9["measured"]:
        m = c9["measured"]
        out.append(f"One base holding every adapter took {interval(m['ratio'], *m['ci'])} of the time of a "
                   f"single-adapter model per task: {_claim_clause(c9)}.")
    x = mixed_serving(D)
    if x is not None:
        reach = "reaching" if x["goal_met"] else "short of"
        out.append(f"Batching requests of different tasks together by length served "
                   f"{interval(x['throughput_ratio'], *x['ci'], digits=2)} the throughput of a merged model per task "
                   f"at batch size {x['batch_size']}, {reach} the {x['goal']:.1f}× goal.")
    s = storage_text(D)
    if s["adapter"] != NA and s["full"] != NA:
        out.append(f"On disk an adapter takes {s['adapter']} MB against {s['full']} MB for a fully fine-tuned model.")
    return " ".join(out)
