"""What the benchmark found, as numbers: results loaded from a run folder, the resolution the controls
measured, every ratio beside it and beside the cost model's prediction, the verdicts on the original
study's claims 7-9, the mixed-adapter serving result, storage, correctness, and the original's
published numbers (typed in here). Formatting for prose is ``chapter``'s job.

Resolution: an A/A control (``merged-aa``: the same merged model, a second copy loaded the same way)
at each batch size. Its interval is how far from 1 a ratio of two identical computations lands here;
``resolution`` is the largest distance of its interval's ends from 1. A claim's verdict widens the
measured interval by that resolution on both sides before comparing it with the claimed value.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..store import RESULTS, read_csv_or, read_or, repo_root
from .engine import DESIGN, FILES

# The original study's deployment headline, typed in (nothing copied): benc61116/NLP @ eef92c5,
# deployment/deployment_benchmark_summary.csv and its RQ2 notebook. Batch 1, bf16, transformers+PEFT
# eager, NVIDIA L4, 100 requests per configuration, time.time() without torch.cuda.synchronize(),
# throughput = 1000 / mean latency.
ORIGINAL_SOURCE = "benc61116/NLP @ eef92c5, deployment/deployment_benchmark_summary.csv"
ORIGINAL_DEPLOYMENT = [  # mode, configurations, mean latency ms (sd over configurations), req/s, peak GPU MB
    {"mode": "lora", "original_name": "single_lora", "configs": 9, "latency_ms": 35.09, "latency_sd": 0.58,
     "throughput_rps": 28.51, "peak_gpu_mb": 1995},
    {"mode": "full", "original_name": "full_ft", "configs": 9, "latency_ms": 25.51, "latency_sd": 0.22,
     "throughput_rps": 39.20, "peak_gpu_mb": 1991},
    {"mode": "merged", "original_name": "lora_merged", "configs": 9, "latency_ms": 25.47, "latency_sd": 0.22,
     "throughput_rps": 39.26, "peak_gpu_mb": 2018},
    {"mode": "multi (re-wrapped, switch untimed)", "original_name": "multi_lora_3", "configs": 1,
     "latency_ms": 34.73, "latency_sd": None, "throughput_rps": 28.79, "peak_gpu_mb": 2002},
]
ORIGINAL_OVERHEAD = 0.375  # as reported (+37.5 %, separate LoRA over full FT; 35.09 / 25.51 - 1 from the rounded means)

# The original's claims on serving, as ratios this benchmark measures: (numerator, denominator, the
# claimed ratio, how the claim reads: "equal" to it, or "below" it), at the original's batch size 1.
CLAIMS = {
    7: {"text": "an unmerged adapter adds 37.5% latency over the fully fine-tuned model", "numerator": "lora",
        "denominator": "full", "claimed": 1 + ORIGINAL_OVERHEAD, "reads": "equal"},
    8: {"text": "a merged adapter costs what the fully fine-tuned model costs", "numerator": "merged",
        "denominator": "full", "claimed": 1.0, "reads": "equal"},
    9: {"text": "serving several adapters costs under 1% more than a single adapter, with identical predictions",
        "numerator": "multi", "denominator": "routed-lora", "claimed": 1.01, "reads": "below"},
}
AA = ("merged-aa", "merged")   # the A/A control
GOAL_MIXED = 1.1               # mixed-adapter throughput over a merged model per task ...
GOAL_BATCH = 32                # ... at this batch size
EQUIVALENT = 0.05              # an "equal" claim holds when the widened interval lies within 5% of the claimed ratio


# ---------------------------------------------------------------------------- results
def load_results(out_dir) -> dict | None:
    """The benchmark's tables of one run folder as DataFrames (plus ``meta``; the vLLM path's tables
    and meta where present), or None if absent, unreadable (named in a warning) or made by the earlier
    block design (``superseded``)."""
    out_dir = Path(out_dir)
    meta = read_or(out_dir / RESULTS["deploy_meta"])
    if meta is None or meta.get("design") != DESIGN:
        return None
    table = lambda name: read_csv_or(out_dir / RESULTS["deploy_table"].format(table=name))  # noqa: E731
    res = {"meta": meta, **{name: table(name) for name in FILES}}
    vllm_meta = read_or(out_dir / "deployment_vllm_meta.json")
    if vllm_meta is not None:
        res["vllm_meta"] = vllm_meta
        res.update({f"vllm_{name}": table(f"vllm_{name}") for name in ("latency", "correctness")})
    return res


def superseded(out_dir) -> bool:
    """Does the folder hold results of the earlier, block-timed design (not shown, to be re-run)?"""
    meta = read_or(Path(out_dir) / RESULTS["deploy_meta"])
    return meta is not None and meta.get("design") != DESIGN


def superseded_runs(profile: str) -> list[str]:
    """The profile and the earlier run it shows in the interim (``interim``) whose data folders hold
    results of the earlier design."""
    from ..config import load_profile
    from ..store import data_dir
    names = [profile, load_profile(profile).get("interim")]
    return [n for n in names if n and superseded(data_dir(n))]


def has_latency(D: dict | None) -> bool:
    """Did the run time anything?"""
    return D is not None and not D["latency"].empty


def arch_results() -> dict[str, dict]:
    """Every architecture-only run of the current design in data/arch-*/ (name -> load_results)."""
    runs = {d.name: load_results(d) for d in sorted((repo_root() / "data").glob("arch-*"))}
    return {name: r for name, r in runs.items() if r is not None}


def arch_command(arch: str = "tinyllama-1.1b") -> str:
    return f"python -m loradrift deploy --arch {arch}"


# ---------------------------------------------------------------------------- ratios, resolution
def rows(rat, num: str, den: str, bs: int | None = None, stream: str | None = None):
    """The ratio rows of num / den (at a batch size, on a stream)."""
    if rat is None or rat.empty:
        return rat
    r = rat[(rat.numerator == num) & (rat.denominator == den)]
    if bs is not None:
        r = r[r.batch_size == bs]
    return r if stream is None else r[r.stream == stream]


def _distance(r) -> float:
    return float(max(abs(r.ci_low - 1), abs(r.ci_high - 1)))


def resolution(rat, bs: int) -> float:
    """How far from 1 the A/A control's interval reaches at batch size ``bs`` (the largest over its
    streams); NaN where it was not measured at that batch size."""
    aa = rows(rat, *AA, bs)
    return max((_distance(r) for r in aa.itertuples()), default=math.nan) if aa is not None else math.nan


def controls(rat) -> list[dict]:
    """Both controls at every batch size: the A/A ratio and merged / full (the same computation on other
    weights), each with its interval and its distance from 1."""
    out = []
    for num, den, what in ((AA[0], AA[1], "A/A"), ("merged", "full", "same computation")):
        r = rows(rat, num, den)
        for x in ([] if r is None else r.itertuples()):
            out.append({"control": what, "numerator": num, "denominator": den, "stream": x.stream,
                        "batch_size": int(x.batch_size), "ratio": x.ratio, "ci_low": x.ci_low, "ci_high": x.ci_high,
                        "distance": _distance(x), "n_pairs": int(x.n_pairs)})
    return out


def compare(rat, num: str, den: str, bs: int, stream: str | None = None) -> dict | None:
    """num / den at batch size ``bs`` (the first stream, or ``stream``): the measured ratio, its interval,
    the spread of the repeats, the resolution at that batch size, the cost model's prediction; None if
    not measured."""
    r = rows(rat, num, den, bs, stream)
    if r is None or r.empty:
        return None
    x = r.iloc[0]
    return {"numerator": num, "denominator": den, "batch_size": int(bs), "comparison": x.comparison,
            "stream": x.stream, "ratio": float(x.ratio),
            "ci": (float(x.ci_low), float(x.ci_high)), "repeats": (float(x.repeat_min), float(x.repeat_max)),
            "n_pairs": int(x.n_pairs), "resolution": resolution(rat, bs), "predicted": float(x.predicted),
            "flop_ratio": float(x.flop_ratio)}


def verdict(c: dict | None, claimed: float, reads: str) -> str:
    """supported | refuted | inconclusive | not measured: the interval widened by the resolution against the
    claimed ratio. ``reads`` "equal": refuted if the widened interval excludes the claimed ratio, supported
    if it lies within ``EQUIVALENT`` (relative) of it, else inconclusive; "below": supported if it lies below
    it, refuted if at or above it. Without an A/A control at that batch size the interval is not widened and
    a verdict that would be "supported" is "inconclusive" (a refutation stands: no resolution narrows it)."""
    if c is None:
        return "not measured"
    unresolved = math.isnan(c["resolution"])
    res = 0.0 if unresolved else c["resolution"]
    lo, hi = c["ci"][0] - res, c["ci"][1] + res
    if reads == "equal":
        v = ("refuted" if not lo <= claimed <= hi else
             "supported" if claimed * (1 - EQUIVALENT) <= lo and hi <= claimed * (1 + EQUIVALENT) else "inconclusive")
    else:
        v = "supported" if hi < claimed else "refuted" if lo >= claimed else "inconclusive"
    return "inconclusive" if unresolved and v == "supported" else v


def claim(D: dict | None, number: int, bs: int = 1) -> dict:
    """One of the original's claims 7-9 at batch size ``bs`` (the original's: 1): the claim, the
    measured comparison (``compare``) and the verdict. Claim 9 also needs identical predictions of
    the multi-adapter mode it times (``multi``): a failed identity check refutes it, no check leaves a
    timing that would support it inconclusive."""
    spec = CLAIMS[number]
    c = compare(D["ratios"], spec["numerator"], spec["denominator"], bs) if has_latency(D) else None
    v = verdict(c, spec["claimed"], spec["reads"])
    out = {"claim": number, **spec, "batch_size": bs, "measured": c, "verdict": v}
    if number == 9 and D is not None:
        ident = identity_checks(D, spec["numerator"])
        out["identical"] = ident
        if ident["n"] and ident["passed"] < ident["n"]:
            out["verdict"] = "refuted"
        elif not ident["n"] and v == "supported":
            out["verdict"] = "inconclusive"
    return out


def identity_checks(D: dict, mode: str | None = None) -> dict:
    """The identity checks of the multi-adapter modes (or of ``mode`` alone) against single-adapter models:
    checks run and passed, the largest |Δlogit|."""
    c = D["correctness"]
    if not c.empty:
        c = c[(c["kind"] == "identical") & ((c["mode"] == mode) if mode else (c["mode"] != AA[0]))]
    return {"n": int(len(c)), "passed": int(c["passed"].sum()) if len(c) else 0,
            "max_dlogit": float(c["max_abs_dlogit"].max()) if len(c) else math.nan}


def goal_state(ratio: float, lo: float, hi: float, bs: int) -> str:
    """Where a mixed-serving throughput ratio stands against the goal (``GOAL_MIXED`` at ``GOAL_BATCH``):
    ``met`` (the interval's lower end reaches it), ``not clearly met`` (the ratio does, its interval does
    not), ``slower`` (mixed is slower than a merged model per task: the interval lies below 1), ``short``
    (otherwise); ``other batch size`` where ``bs`` is not the goal's."""
    if bs != GOAL_BATCH:
        return "other batch size"
    return ("met" if lo >= GOAL_MIXED else "not clearly met" if ratio >= GOAL_MIXED else "slower" if hi < 1
            else "short")


def mixed_serving(D: dict | None, bs: int | None = None) -> dict | None:
    """Mixed-adapter batches (length-bucketed) against a merged model per task on the same stream, at
    ``bs`` (default the goal's batch size where measured, else the largest): throughput ratio with its
    interval (the inverse of the paired time ratio), p50 and p99 latency of both, padding, where it stands
    against the goal (``goal_state``; ``goal_met``), and throughput ratios (ratio, low, high; None where not
    measured) against task-homogeneous batches on the same base (``vs_multi``) and of the batched LoRA path
    over peft's per-adapter loop on the same mixed batches (``batched``)."""
    if not has_latency(D):
        return None
    r = rows(D["ratios"], "mixed", "routed-merged")
    if r is None or r.empty:
        return None
    sizes = {int(b) for b in r.batch_size}
    bs = (GOAL_BATCH if GOAL_BATCH in sizes else max(sizes)) if bs is None else bs
    c = compare(D["ratios"], "mixed", "routed-merged", bs)
    if c is None:
        return None
    lat = D["latency"]
    L = lambda m: lat[(lat["mode"] == m) & (lat.batch_size == bs) & (lat.comparison == c["comparison"])]  # noqa: E731

    def throughput(num, den):
        x = compare(D["ratios"], num, den, bs)
        return None if x is None else (1 / x["ratio"], 1 / x["ci"][1], 1 / x["ci"][0])
    thr, ci = 1 / c["ratio"], (1 / c["ci"][1], 1 / c["ci"][0])
    state = goal_state(thr, *ci, bs)
    sch = D.get("schedules")
    sch = sch[(sch.stream == "interleaved") & (sch.batch_size == bs)] if sch is not None and not sch.empty else None
    per_window = {k: float(sch[sch.scheduler == k].batches_per_window.iloc[0])
                  if sch is not None and (sch.scheduler == k).any() else math.nan for k in ("mixed", "task")}
    comps = (D["meta"].get("config") or {}).get("comparisons") or {}
    look = (comps.get(c["comparison"]) or {}).get("window")
    return {"batch_size": bs, "throughput_ratio": thr, "ci": ci, "vs_multi": throughput("mixed", "multi"),
            "batched": throughput("batched", "mixed"),
            "predicted": 1 / c["predicted"], "resolution": c["resolution"], "n_pairs": c["n_pairs"],
            "goal": GOAL_MIXED, "goal_batch": GOAL_BATCH, "goal_state": state, "goal_met": state == "met",
            "lookahead": look, "batches_mixed": per_window["mixed"], "batches_task": per_window["task"],
            **{f"{k}_{m}": float(L(m)[col].iloc[0]) if len(L(m)) else math.nan
               for m in ("mixed", "routed-merged")
               for k, col in (("p50", "latency_p50_ms"), ("p99", "latency_p99_ms"), ("rps", "throughput_rps"),
                              ("pad", "pad_fraction"))}}


def timing_error(rat) -> dict:
    """The timings' own error from the two controls: ``aa`` the A/A interval's largest distance from 1,
    ``same`` merged / full's, ``below`` the unmerged/merged rows whose interval lies below 1 (an unmerged
    adapter computes strictly more), ``floor`` the largest of these distances (NaN where none)."""
    if rat is None or rat.empty:
        return {"aa": math.nan, "same": math.nan, "below": None, "floor": math.nan}
    dist = lambda r: max((_distance(x) for x in r.itertuples()), default=math.nan)  # noqa: E731
    aa, same = dist(rows(rat, *AA)), dist(rows(rat, "merged", "full"))
    lm = rows(rat, "lora", "merged")
    below = lm[lm.ci_high < 1]
    errs = [e for e in (aa, same, 1 - float(below.ci_high.min()) if len(below) else math.nan) if not math.isnan(e)]
    return {"aa": aa, "same": same, "below": below, "floor": max(errs) if errs else math.nan}


def cost_table(D: dict) -> list[dict]:
    """Predicted against measured for every ratio: FLOP ratio, weight-byte ratio, extra operator calls
    per window, the predicted ratio and the measured one with its interval and the resolution."""
    out = []
    for x in D["ratios"].itertuples():
        out.append({"comparison": x.comparison, "stream": x.stream, "batch_size": int(x.batch_size),
                    "numerator": x.numerator, "denominator": x.denominator, "flop_ratio": x.flop_ratio,
                    "bytes_ratio": x.bytes_ratio, "extra_ops": x.extra_ops, "predicted": x.predicted,
                    "measured": x.ratio, "ci_low": x.ci_low, "ci_high": x.ci_high,
                    "resolution": resolution(D["ratios"], int(x.batch_size))})
    return out


def call_share(D: dict, mode: str = "full", comparison: str = "single") -> dict[int, float]:
    """{batch size: the share of ``mode``'s measured window time that its operator calls take by the cost
    model (calls per window x the measured cost of one call)}, on the comparison's first stream."""
    from .timing import window_times
    cost, B = D.get("cost"), D.get("batches")
    if not has_latency(D) or cost is None or cost.empty or B is None or B.empty or not D["meta"].get("dispatch_s"):
        return {}
    per_call = float(sum(D["meta"]["dispatch_s"]) / len(D["meta"]["dispatch_s"]))
    c = cost[(cost["mode"] == mode) & (cost.comparison == comparison)]
    out = {}
    for x in c.itertuples():
        t = window_times(B[(B.comparison == comparison) & (B.stream == x.stream) & (B.batch_size == x.batch_size)])
        if mode in t and int(x.batch_size) not in out:
            out[int(x.batch_size)] = x.ops_per_window * per_call / (float(t[mode].mean()) / 1e3)
    return dict(sorted(out.items()))


def extra_calls(D: dict, num: str = "lora", den: str = "merged", comparison: str = "single") -> float:
    """Operator calls per forward that ``num`` issues beyond ``den`` (NaN where not counted)."""
    cost = D.get("cost") if has_latency(D) else None
    if cost is None or cost.empty:
        return math.nan
    c = cost[cost.comparison == comparison]
    a, b = c[c["mode"] == num].ops_per_forward, c[c["mode"] == den].ops_per_forward
    return float(a.iloc[0] - b.iloc[0]) if len(a) and len(b) else math.nan


# ---------------------------------------------------------------------------- memory, storage, correctness
def storage_mb(D: dict) -> dict:
    """Mean MB on disk of an adapter and of a fully fine-tuned model; MB of weights in memory of one base
    with every adapter (``mixed``) and of a merged model per task (``routed-merged``). NaN if absent."""
    s, mem = D["storage"], D["memory"]
    mb = (s["bytes"] / 2**20) if not s.empty else None
    adapter = float(mb[s.artifact.str.startswith("LoRA")].mean()) if mb is not None else math.nan
    full = float(mb[s.artifact == "full fine-tuned model"].mean()) if mb is not None else math.nan

    def mode_mb(mode):
        r = mem[mem["mode"] == mode] if not mem.empty else mem
        return float(r["model_mb"].iloc[0]) if len(r) else math.nan
    return {"adapter": adapter, "full": full, "resident": mode_mb("mixed"), "routed": mode_mb("routed-merged")}


def correctness_summary(D: dict) -> dict:
    """How many checks ran and passed; the merged model's lowest prediction agreement with the unmerged
    adapter and its largest |Δlogit| (NaN if absent)."""
    c = D["correctness"]
    if c.empty:
        return {"n": 0, "passed": 0, "merged_agreement": math.nan, "merged_dlogit": math.nan}
    mg = c[c["mode"] == "merged"]
    return {"n": len(c), "passed": int(c["passed"].sum()),
            "merged_agreement": float(mg["prediction_agreement"].min()) if len(mg) else math.nan,
            "merged_dlogit": float(mg["max_abs_dlogit"].max()) if len(mg) else math.nan}


def against_original(D: dict | None) -> list[dict]:
    """The original's headline rows beside ours at batch size 1 (single-task comparison; our ``multi``
    beside their multi-adapter row): mean latency and measured throughput."""
    out = []
    for o in ORIGINAL_DEPLOYMENT:
        row = {"mode": o["mode"], "original ms": o["latency_ms"], "original req/s": o["throughput_rps"]}
        if has_latency(D):
            lat = D["latency"]
            ours = o["mode"] if o["mode"] in ("lora", "full", "merged") else "multi"
            L = lat[(lat["mode"] == ours) & (lat["batch_size"] == 1)]
            row["ours ms"] = float(L["batch_ms_mean"].mean()) if len(L) else math.nan
            row["ours req/s"] = float(L["throughput_rps"].mean()) if len(L) else math.nan
        out.append(row)
    return out


# ---------------------------------------------------------------------------- the preface's headline
def headline(D: dict | None, tasks) -> list[dict]:
    """The preface's serving rows (``loradrift.findings.headline_serving``'s columns): latency ratios
    (lora / merged and merged / full per task at the smallest and largest batch size; the A/A control;
    multi / routed-lora at batch 1; mixed / routed-merged at the smallest and largest), the mixed-adapter
    throughput ratio at the largest batch size, and adapter / full storage."""
    if not has_latency(D):
        return []
    rat, out = D["ratios"], []

    def latency(num, den, bs, task=None):
        r = rows(rat, num, den, bs, task)
        if len(r):
            x = r.iloc[0]
            out.append({"kind": "latency", "numerator": num, "denominator": den, "batch_size": int(bs),
                        "task": task, "ratio": x.ratio, "ci_low": x.ci_low, "ci_high": x.ci_high})
    sizes = lambda num, den: sorted({int(rows(rat, num, den).batch_size.min()),  # noqa: E731
                                     int(rows(rat, num, den).batch_size.max())}) if len(rows(rat, num, den)) else []
    for num, den in (("lora", "merged"), ("merged", "full"), AA):
        for bs in sizes(num, den):
            for t in [t for t in tasks if t in set(rat.stream)]:
                latency(num, den, bs, t)
    latency("multi", "routed-lora", 1)
    for bs in sizes("mixed", "routed-merged"):
        latency("mixed", "routed-merged", bs)
    m = mixed_serving(D)
    if m is not None:
        out.append({"kind": "throughput", "numerator": "mixed", "denominator": "routed-merged",
                    "batch_size": m["batch_size"], "ratio": m["throughput_ratio"], "ci_low": m["ci"][0],
                    "ci_high": m["ci"][1], "num": m["rps_mixed"], "den": m["rps_routed-merged"]})
    s = storage_mb(D)
    if not math.isnan(s["adapter"]) and not math.isnan(s["full"]):
        out.append({"kind": "storage", "numerator": "adapter", "denominator": "full", "ratio": s["adapter"] / s["full"],
                    "num": s["adapter"] * 2**20, "den": s["full"] * 2**20})
    return out
