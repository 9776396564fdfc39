"""What the deployment chapter displays: its tables (frames for ``report.table``) and the values of its
prose, formatted where they are shown ("n/a" where a result is missing). The numbers come from
``findings``; nothing here is parsed back.
"""
from __future__ import annotations

import math

from ..report import at_least, listing, pct
from ..tasks import task_name as task_label
from .findings import (CLAIMS, EQUIVALENT, against_original, call_share, claim, compare, controls,
                       correctness_summary, cost_table, extra_calls, has_latency, mixed_serving, resolution,
                       storage_mb, timing_error)
from .modes import MODES

NA = "n/a"
RESOLUTION_TARGET = 0.02     # the A/A interval's target reach from 1 ...
TARGET_BATCHES = (1, 32)     # ... at these batch sizes


def num(x, spec: str, suffix: str = "", na: str = NA) -> str:
    """A number in a format spec (and a unit), or ``na`` when it is missing (None or NaN)."""
    return na if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec) + suffix


def interval(ratio, lo, hi, digits: int = 3) -> str:
    """'1.031× [1.017, 1.047]', or "n/a"."""
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return NA
    return f"{ratio:.{digits}f}× [{lo:.{digits}f}, {hi:.{digits}f}]"


def pm_pct(x, digits: int = 1) -> str:
    """A resolution as '±1.4%'."""
    return NA if x is None or math.isnan(x) else f"±{100 * x:.{digits}f}%"


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
                       "pair": r.numerator + " / " + r.denominator,
                       "resolution": [pm_pct(resolution(r, int(b))) for b in r.batch_size]})[
        ["comparison", "stream", "batch_size", "pair", "ratio [95% CI]", "resolution", "gmean_ratio", "repeats",
         "n_pairs", "predicted"]].rename(columns={"batch_size": "batch", "gmean_ratio": "geo. mean", "n_pairs": "pairs"})


def cost_model_table(D):
    """Predicted against measured for every ratio."""
    import pandas as pd
    t = pd.DataFrame(cost_table(D))
    t["pair"] = t.numerator + " / " + t.denominator
    t["measured [95% CI]"] = [interval(x.measured, x.ci_low, x.ci_high) for x in t.itertuples()]
    t["resolution"] = t.resolution.map(pm_pct)
    t["extra_ops"] = t.extra_ops.map(lambda v: f"{v:+,.0f}" if v else "0")
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
    c = D["correctness"].assign(prediction_agreement=lambda d: d.prediction_agreement.map(pct))
    return c[["mode", "reference", "stream", "task", "batch_size", "n", "prediction_agreement",
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
            "repeats": str(cfg["repeats"]), "warmup": int(cfg["warmup"]),
            # runs before the timer named itself per device recorded "(+ device sync)" on CPUs too, where none runs
            "timer": meta["timer"] if env["gpu"] else meta["timer"].replace(" (+ device sync)", ""),
            "dispatch_us": num(1e6 * sum(meta["dispatch_s"]) / len(meta["dispatch_s"]), ".1f"),
            "load": f"{pts['load_before'].min():.2f}–{max(pts['load_before'].max(), pts['load_after'].max()):.2f}",
            "minutes": num(meta["wall_time_s"] / 60, ".1f"), "weights": meta["weights"]}


CLAIM_RULE = ("An “equal” claim is supported when the interval, widened by the resolution on both sides, lies "
              f"within {100 * EQUIVALENT:.0f}% of the claimed ratio, refuted when it excludes the claimed ratio, and "
              "inconclusive otherwise. The “below 1%” claim is supported when the widened interval lies below 1.01, "
              "refuted when it lies at or above it, and inconclusive when it straddles it.")
WHAT = {7: "the unmerged adapter took {r} of the fully fine-tuned model's time",
        8: "the merged adapter took {r} of the fully fine-tuned model's time",
        9: "one base holding every adapter, switching adapters between task-homogeneous batches, took {r} of the "
           "time of a single-adapter model per task"}
CLAIM_SHORT = {7: "an unmerged adapter adds 37.5%", 8: "merged costs what full costs",
               9: "many adapters cost under 1% more, with identical predictions"}


def _measured(m: dict) -> str:
    """A measured ratio with its interval, the A/A resolution at its batch size and the prediction."""
    res = "no A/A control at this batch size" if math.isnan(m["resolution"]) else f"A/A resolution {pm_pct(m['resolution'])}"
    return f"{interval(m['ratio'], *m['ci'])} ({res}; cost model {m['predicted']:.3f}×)"


def claims_paragraph(D) -> str:
    """Each claim's verdict and what it rests on, at batch size 1, for the chapter's prose."""
    if not has_latency(D):
        return "No claim can be judged yet: the paired benchmark has not run on this profile."
    out = []
    for n in CLAIMS:
        c = claim(D, n)
        m = c["measured"]
        if m is None:
            out.append(f"Claim {n} is not measured on this profile.")
            continue
        where = f" on {task_label(m['stream'])} requests" if m["stream"] != "interleaved" else ""
        tail = ""
        if n == 9:
            i = c.get("identical") or {"n": 0, "passed": 0}
            tail = f", and {i['passed']} of {i['n']} identity checks of its predictions passed" if i["n"] else \
                ", and no identity check of its predictions ran"
        out.append(f"Claim {n} is {c['verdict']} here: {WHAT[n].format(r=_measured(m))} at batch size 1{where}{tail}.")
    return " ".join(out + [CLAIM_RULE])


GOAL_WORDS = {"met": "the goal of {g} at batch size {b} is met",
              "not clearly met": "at or above the goal of {g} at batch size {b}, but its interval reaches below it: "
                                 "not clearly met",
              "slower": "mixed batching is slower here, and the goal of {g} at batch size {b} is not met",
              "short": "the goal of {g} at batch size {b} is not met",
              "other batch size": "the goal ({g} at batch size {b}) could not be judged: that batch size was not measured"}


def _goal(m: dict) -> str:
    """Where ``mixed_serving``'s result stands against its goal, in words."""
    return GOAL_WORDS[m["goal_state"]].format(g=f"{m['goal']:.1f}×", b=m["goal_batch"])


def mixed_paragraph(D) -> str:
    """The mixed-adapter serving result for the chapter's prose: throughput against a merged model per task
    and the goal, against task-homogeneous batches, latency, padding, and the batched LoRA path."""
    m = mixed_serving(D)
    if m is None:
        return "Mixed-adapter serving was not measured on this profile."
    res = pm_pct(m["resolution"]) if not math.isnan(m["resolution"]) else "not measured"
    goal = _goal(m)
    out = [f"On the same interleaved stream of every task, at batch size {m['batch_size']}, length-bucketed "
           f"mixed-adapter batches served {interval(m['throughput_ratio'], *m['ci'], digits=2)} the throughput of a "
           f"merged model per task (A/A resolution {res}; cost model {m['predicted']:.2f}×): {goal}."]
    if m["vs_multi"]:
        out.append(f"Against task-homogeneous batches on the same base, switching adapters between batches, the "
                   f"throughput ratio was {interval(*m['vs_multi'], digits=2)}.")
    if not math.isnan(m["p50_mixed"]) and not math.isnan(m["p50_routed-merged"]):
        out.append(f"Median and 99th-percentile latency were {m['p50_mixed']:.0f} and {m['p99_mixed']:.0f} ms against "
                   f"{m['p50_routed-merged']:.0f} and {m['p99_routed-merged']:.0f} ms for the merged models, with "
                   f"{100 * m['pad_mixed']:.0f}% of tokens padding against {100 * m['pad_routed-merged']:.0f}%.")
    if m["lookahead"] and not math.isnan(m["batches_mixed"]) and not math.isnan(m["batches_task"]):
        out.append(f"With a look-ahead of {m['lookahead']} batches, bucketing by length formed {m['batches_mixed']:.2f} "
                   f"batches per window against {m['batches_task']:.2f} task-homogeneous ones: "
                   + ("fewer, fuller batches" if m["batches_mixed"] < m["batches_task"] else "no fewer batches")
                   + (", but with a larger share of padding." if m["pad_mixed"] > m["pad_routed-merged"] else
                      ", with no larger share of padding."))
    if m["batched"]:
        out.append(f"The batched LoRA path (each request's A and B gathered into one batched product per module) "
                   f"served {interval(*m['batched'], digits=2)} the throughput of peft's per-adapter loop on the same "
                   "mixed batches.")
    else:
        out.append("The batched LoRA path was not timed on this profile.")
    return " ".join(out)


def resolution_paragraph(D) -> str:
    """The A/A control's reach from 1 at batch sizes 1 and 32 against the ±2% target, and merged / full."""
    if not has_latency(D):
        return "The controls have not run on this profile."
    rat = D["ratios"]
    per = {b: resolution(rat, b) for b in TARGET_BATCHES}
    met = all(not math.isnan(v) and v <= RESOLUTION_TARGET for v in per.values())
    # two decimals: a reach of 2.04% against a 2% target must not print as "±2.0%: not met"
    reach = " and ".join(f"{'not measured' if math.isnan(v) else pm_pct(v, 2)} at batch size {b}" for b, v in per.items())
    same = timing_error(rat)["same"]
    same_s = "" if math.isnan(same) else f" Merged against full reached {pm_pct(same)} from 1."
    off = [r for r in controls(rat) if r["control"] == "A/A" and (r["ci_low"] > 1 or r["ci_high"] < 1)]
    off_s = "".join(f" At batch size {r['batch_size']} the A/A interval excludes 1: two copies of one model, loaded "
                    f"the same way, differed by {100 * abs(r['ratio'] - 1):.1f}%, so where a model's weights happen to "
                    "lie in memory moves a ratio that much." for r in off)
    return (f"The A/A interval reached {reach} from 1, against a target of {pm_pct(RESOLUTION_TARGET)}: "
            f"{'met' if met else 'not met'}.{off_s}{same_s}")


def storage_paragraph(D) -> str:
    """MB on disk of an adapter and of a full model and their ratio; MB in memory of one base with every
    adapter and of a merged model per task."""
    st = storage_mb(D) if has_latency(D) else {}
    if not st or math.isnan(st["adapter"]) or math.isnan(st["full"]):
        return "Storage was not measured on this profile."
    out = (f"An adapter takes {st['adapter']:.2f} MiB on disk, against {st['full']:.1f} MiB for a fully fine-tuned "
           f"model ({st['full'] / st['adapter']:.0f}× smaller).")
    if not math.isnan(st["resident"]) and not math.isnan(st["routed"]):
        out += (f" In memory, one base with every adapter takes {st['resident']:.0f} MiB of weights, and one merged "
                f"model per task takes {st['routed']:.0f} MiB.")
    return out


def correctness_paragraph(D) -> str:
    """Checks passed of checks run; the merged model's lowest agreement and largest |Δlogit|."""
    if not has_latency(D) or D["correctness"].empty:
        return "No correctness check has run on this profile."
    c = correctness_summary(D)
    out = f"{c['passed']} of {c['n']} checks passed."
    if not math.isnan(c["merged_agreement"]):
        out += (f" The merged model agreed with the unmerged adapter on {at_least(c['merged_agreement'], 'predictions')}; "
                f"the largest logit difference was {c['merged_dlogit']:.2g}.")
    return out


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


def _grouped(pairs: list[tuple[str, int]]) -> str:
    """[("lora / merged", 1), ("lora / merged", 32), ("mixed / multi", 1)] as 'lora / merged (batch sizes 1 and 32)
    and mixed / multi (batch size 1)'."""
    sizes: dict[str, set[int]] = {}
    for name, bs in pairs:
        sizes.setdefault(name, set()).add(bs)
    return listing([f"{n} (batch size{'s' if len(b) > 1 else ''} {listing(sorted(b))})" for n, b in sizes.items()])


def cost_paragraph(D) -> str:
    """Where the cost model's prediction and the measurement disagree by more than the A/A resolution at
    that batch size: the ratios it under-predicts (measured higher) and over-predicts, or that none does."""
    if not has_latency(D):
        return "The cost model has nothing to compare with yet: the benchmark has not run on this profile."
    under, over, unjudged = [], [], 0
    for r in cost_table(D):
        if math.isnan(r["resolution"]):
            unjudged += 1
            continue
        name = (f"{r['numerator']} / {r['denominator']}", r["batch_size"])
        if r["ci_low"] - r["resolution"] > r["predicted"]:
            under.append(name)
        elif r["ci_high"] + r["resolution"] < r["predicted"]:
            over.append(name)
    said = []
    if under:
        said.append(f"The model under-predicts {_grouped(under)}: the measured ratio is higher than the FLOPs and "
                    "operator calls explain")
    if over:
        said.append(f"It over-predicts {_grouped(over)}: the numerator costs less than its FLOPs and calls suggest")
    if not said:
        said.append("Prediction and measurement agree within the A/A resolution for every ratio")
    if unjudged:
        said.append(f"{unjudged} ratio{'s have' if unjudged > 1 else ' has'} no A/A control at its batch size and "
                    "is not judged")
    return ". ".join(said) + "."


def cpu_paragraph(D) -> str:
    """What the cost model's split says about this machine: the share of the fully fine-tuned model's time
    that operator calls take at each batch size, and the unmerged adapter's extra calls per forward."""
    share = call_share(D) if has_latency(D) else {}
    if not share:
        return "How this machine's time splits between operator calls and arithmetic was not measured on this profile."
    at = " and ".join(f"{pct(v)} at batch size {b}" for b, v in share.items())
    out = (f"By the cost model's split, issuing operator calls takes {at} of the fully fine-tuned model's time on "
           "this machine; the rest is arithmetic, so the larger the batch, the closer a ratio comes to its FLOP ratio.")
    extra = extra_calls(D)
    if not math.isnan(extra):
        out += f" An unmerged adapter issues {extra:,.0f} more operator calls per forward than its merged model."
    return out


# ---------------------------------------------------------------------------- the preface's answer
def _more(r: float) -> str:
    """A time ratio as prose: '20.5% more time', '3.0% less time', 'the same time'."""
    d = 100 * (r - 1)
    return "the same time" if round(d, 1) == 0 else f"{abs(d):.1f}% {'more' if d > 0 else 'less'} time"


def rq2_answer(D) -> str:
    """The answer to RQ2 in a few plain sentences for the preface, every value from the benchmark's results:
    what an unmerged adapter costs against the fully fine-tuned model (batch size 1 and the largest measured)
    and merged, the A/A resolution, the verdicts on the original's claims 7-9 in the chapter's words, one base
    with many adapters, mixed-adapter batching against its goal, and storage."""
    if not has_latency(D):
        return "Not measured yet on this profile: the serving benchmark has not run."
    env = D["meta"].get("environment", {})
    rat, dev = D["ratios"], env.get("gpu") or f"{env.get('cpu') or 'this'} CPU"
    c7, c8, c9 = (claim(D, n) for n in (7, 8, 9))
    out = []
    if c7["measured"]:
        m = c7["measured"]
        big = max(int(b) for b in rat[(rat.numerator == "lora") & (rat.denominator == "full")].batch_size)
        mb = compare(rat, "lora", "full", big)
        at_big = (f", and {_more(mb['ratio'])} at batch size {big} ({interval(mb['ratio'], *mb['ci'])})"
                  if big != 1 and mb else "")
        out.append(f"On {'an ' if dev[0] in 'AEIOU' else 'a '}{dev}, an unmerged LoRA adapter took {_more(m['ratio'])} "
                   f"than the fully fine-tuned model at batch size 1 ({interval(m['ratio'], *m['ci'])}){at_big}.")
    if c8["measured"]:
        m = c8["measured"]
        res = "" if math.isnan(m["resolution"]) else \
            f"; two copies of one model, the A/A control, resolve {pm_pct(m['resolution'])} at that batch size"
        out.append(f"Merged into the base, it took {interval(m['ratio'], *m['ci'])} of the full model's time{res}.")
    judged = [c for c in (c7, c8, c9) if c["measured"]]
    if judged:
        out.append("Of the original's serving claims, " + listing(
            [f"claim {c['claim']} ({CLAIM_SHORT[c['claim']]}) is {c['verdict']}" for c in judged]) + " on this machine.")
    if c9["measured"]:
        m = c9["measured"]
        out.append(f"One base holding every adapter took {_more(m['ratio'])} than a single-adapter model per task "
                   f"({interval(m['ratio'], *m['ci'])}).")
    x = mixed_serving(D)
    if x is not None:
        out.append(f"Batching requests of different tasks together by length served "
                   f"{interval(x['throughput_ratio'], *x['ci'], digits=2)} the throughput of a merged model per task "
                   f"at batch size {x['batch_size']}: {_goal(x)}.")
    st = storage_mb(D)
    if not math.isnan(st["adapter"]) and not math.isnan(st["full"]):
        out.append(f"On disk an adapter takes {st['adapter']:.2f} MiB against {st['full']:.1f} MiB for a fully "
                   f"fine-tuned model ({st['full'] / st['adapter']:.0f}× smaller).")
    return " ".join(out) or "The serving benchmark ran, but none of its comparisons answers RQ2 on this profile."

