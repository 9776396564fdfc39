"""What the benchmark found, as numbers: results loaded from a run folder, latency ratios per task,
the timings' own error, storage and memory sizes, the correctness checks, and the comparison with the
original study's published numbers (typed in here). Formatting for prose is ``chapter``'s job.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..store import RESULTS, read_csv_or, read_or, repo_root
from .engine import FILES

# The original study's deployment headline, typed in (nothing copied): benc61116/NLP @ eef92c5,
# deployment/deployment_benchmark_summary.csv and the RQ2 notebook, as summarised in the replication
# notes (METHODS.md §6, §7.3). Batch 1, bf16, transformers+PEFT eager, NVIDIA L4, 100 requests per
# configuration, time.time() without torch.cuda.synchronize(), throughput = 1000 / mean latency.
ORIGINAL_SOURCE = "benc61116/NLP @ eef92c5, deployment/deployment_benchmark_summary.csv (METHODS.md §7.3)"
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


# ---------------------------------------------------------------------------- results
def load_results(out_dir) -> dict | None:
    """The benchmark's tables of one run folder as DataFrames (plus ``meta``; the vLLM path's tables
    and meta where present), or None if absent or unreadable (then named in a warning)."""
    out_dir = Path(out_dir)
    meta = read_or(out_dir / RESULTS["deploy_meta"])
    if meta is None:
        return None
    table = lambda name: read_csv_or(out_dir / RESULTS["deploy_table"].format(table=name))  # noqa: E731
    res = {"meta": meta, **{name: table(name) for name in FILES}}
    vllm_meta = read_or(out_dir / "deployment_vllm_meta.json")
    if vllm_meta is not None:
        res["vllm_meta"] = vllm_meta
        res.update({f"vllm_{name}": table(f"vllm_{name}") for name in ("latency", "correctness")})
    return res


def has_latency(D: dict | None) -> bool:
    """Did the run time anything?"""
    return D is not None and not D["latency"].empty


def arch_results() -> dict[str, dict]:
    """Every architecture-only run in data/arch-*/ (name -> load_results)."""
    runs = {d.name: load_results(d) for d in sorted((repo_root() / "data").glob("arch-*"))}
    return {name: r for name, r in runs.items() if r is not None}


def arch_command(arch: str = "tinyllama-1.1b") -> str:
    return f"python -m loradrift deploy --arch {arch}"


# ---------------------------------------------------------------------------- ratios
def ratio(rat, num: str, den: str, stream: str, bs: int) -> dict | None:
    """One row of the ratios table (numerator / denominator on a stream at a batch size):
    {"ratio", "ci_low", "ci_high"}, or None."""
    if rat is None or rat.empty:
        return None
    r = rat[(rat.numerator == num) & (rat.denominator == den) & (rat.stream == stream) & (rat.batch_size == bs)]
    if r.empty:
        return None
    return {k: float(r.iloc[0][k]) for k in ("ratio", "ci_low", "ci_high")}


def task_ratios(rat, num: str, den: str, bs: int) -> dict[str, dict]:
    """A ratio on each task's own request stream, in the task registry's order: {task: ratio row}."""
    from ..tasks import TASKS
    if rat is None or rat.empty:
        return {}
    rows = {t: ratio(rat, num, den, t, bs) for t in TASKS if t in set(rat.stream)}
    return {t: r for t, r in rows.items() if r is not None}


def batch_sizes(D: dict) -> dict:
    """The smallest and largest batch size of the run, and the largest of the interleaved stream (None
    when the interleaved modes did not run)."""
    cfg, rat = D["meta"]["config"], D["ratios"]
    mb = rat[rat.stream == "multi"]["batch_size"] if not rat.empty else []
    return {"min": min(cfg["batch_sizes"]), "max": max(cfg["batch_sizes"]),
            "max_multi": int(mb.max()) if len(mb) else None}


def timing_error(rat) -> dict:
    """What the timings show of their own error, from two controls that need no assumption:
    a merged model and the fully fine-tuned model run the same computation (ratio 1 up to error), and
    an unmerged adapter computes strictly more than its merged model (a ratio whose interval lies below
    1 is error). Returns {"same": max |merged/full - 1|, "below": the lora/merged rows below 1,
    "floor": the larger of the two deviations} (NaN where a control is missing)."""
    if rat is None or rat.empty:
        return {"same": math.nan, "below": None, "floor": math.nan}
    mf = rat[(rat.numerator == "merged") & (rat.denominator == "full")]
    lm = rat[(rat.numerator == "lora") & (rat.denominator == "merged")]
    below = lm[lm.ci_high < 1]
    same = float((mf.ratio - 1).abs().max()) if len(mf) else math.nan
    errs = [e for e in (same, 1 - float(below.ratio.min()) if len(below) else math.nan) if not math.isnan(e)]
    return {"same": same, "below": below, "floor": max(errs) if errs else math.nan}


def overhead_vs_full(D: dict) -> float:
    """The unmerged adapter's latency over the fully fine-tuned model's at the smallest batch size,
    mean over tasks, minus 1 (the original's headline; NaN if not measured)."""
    rat = D["ratios"]
    if rat.empty:
        return math.nan
    lf = rat[(rat.numerator == "lora") & (rat.denominator == "full") & (rat.batch_size == batch_sizes(D)["min"])]
    return float(lf.ratio.mean() - 1) if len(lf) else math.nan


# ---------------------------------------------------------------------------- memory, storage, correctness
def storage_mb(D: dict) -> dict:
    """Mean MB on disk of an adapter and of a fully fine-tuned model; MB of weights in memory of the
    group holding every adapter (``multi``) and of the merged models (``routed-merged``). NaN if absent."""
    s, mem = D["storage"], D["memory"]
    mb = (s["bytes"] / 2**20) if not s.empty else None
    adapter = float(mb[s.artifact.str.startswith("LoRA")].mean()) if mb is not None else math.nan
    full = float(mb[s.artifact == "full fine-tuned model"].mean()) if mb is not None else math.nan
    first = mem[mem["repeat"] == 0] if not mem.empty else mem

    def group_mb(mode):
        rows = first[[mode in str(m).split("+") for m in first["modes"]]] if not first.empty else first
        return float(rows["model_mb"].iloc[0]) if len(rows) else math.nan
    return {"adapter": adapter, "full": full, "resident": group_mb("multi"), "routed": group_mb("routed-merged")}


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
    """The original's headline rows beside ours at the smallest batch size: mean over tasks of each
    task's mean latency, and mean measured throughput (our ``multi`` beside their multi-adapter row)."""
    rows = []
    for o in ORIGINAL_DEPLOYMENT:
        row = {"mode": o["mode"], "original ms": o["latency_ms"], "original req/s": o["throughput_rps"]}
        if has_latency(D):
            lat = D["latency"]
            ours = o["mode"] if o["mode"] in ("lora", "full", "merged") else "multi"
            L = lat[(lat["mode"] == ours) & (lat["batch_size"] == batch_sizes(D)["min"]) & (lat["repeat"] == 0)]
            row["ours ms"] = L["latency_mean_ms"].mean() if len(L) else math.nan
            row["ours req/s"] = L["throughput_rps"].mean() if len(L) else math.nan
        rows.append(row)
    return rows
