"""What the deployment chapter displays: its tables (frames for ``report.table``) and the values of its
prose, formatted where they are shown ("n/a" where a result is missing). The numbers come from
``findings``; nothing here is parsed back.
"""
from __future__ import annotations

import math

from .engine import mode_batch_sizes
from .findings import (against_original, batch_sizes, correctness_summary, has_latency, overhead_vs_full,
                       ratio, storage_mb, task_ratios, timing_error)
from .modes import MODES

NA = "n/a"


def num(x, spec: str, suffix: str = "", na: str = NA) -> str:
    """A number in a format spec (and a unit), or ``na`` when it is missing (None or NaN)."""
    return na if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec) + suffix


def ratio_text(rat, num_: str, den: str, stream: str, bs: int) -> str:
    """'1.23× [1.20, 1.26]': a ratio with its 95% interval, or "n/a"."""
    r = ratio(rat, num_, den, stream, bs)
    return NA if r is None else f"{r['ratio']:.2f}× [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"


def per_task_ratios(rat, num_: str, den: str, bs: int) -> str:
    """'RTE 1.10× [..]; MRPC ...': a ratio on each task's own request stream."""
    from ..tasks import task_name
    parts = [f"{task_name(t)} {r['ratio']:.2f}× [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
             for t, r in task_ratios(rat, num_, den, bs).items()]
    return "; ".join(parts) if parts else NA


# ---------------------------------------------------------------------------- tables
def modes_table(D):
    import pandas as pd
    ran = set(D["latency"]["mode"]) if has_latency(D) else set()
    return pd.DataFrame([{"mode": m.name, "what is served": m.label, "run here": "yes" if m.name in ran else "no"}
                         for m in MODES.values()])


def latency_table(D):
    t = D["latency"][D["latency"]["repeat"] == 0][
        ["stream", "mode", "batch_size", "n_requests", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
         "latency_mean_ms", "throughput_rps", "switches", "pad_fraction"]].rename(columns={
            "batch_size": "batch", "n_requests": "n", "latency_p50_ms": "p50", "latency_p95_ms": "p95",
            "latency_p99_ms": "p99", "latency_mean_ms": "mean", "throughput_rps": "req/s", "pad_fraction": "pad"})
    return t.sort_values(["stream", "batch", "mode"])


def ratios_table(rat, n_batches: bool = True):
    cols = ["numerator", "denominator", "stream", "batch_size", "ratio", "ci_low", "ci_high", "paired"]
    return rat[cols + (["n_batches"] if n_batches else [])].rename(columns={"batch_size": "batch"})


def memory_table(D):
    mem = D["memory"][D["memory"]["repeat"] == 0]
    cols = {"modes": "modes", "stream": "stream", "load_s": "load s", "model_mb": "model MB",
            "rss_peak_increase_mb": "peak RSS +MB"}
    if "cuda_peak_increase_mb" in mem:
        cols["cuda_peak_increase_mb"] = "peak GPU +MB"
    if "merge_s" in mem:
        cols["merge_s"] = "merge s"
    return mem[list(cols)].rename(columns=cols)


def storage_table(D):
    s = D["storage"].copy()
    s["MB"] = s["bytes"] / 2**20
    return s[["artifact", "task", "MB", "source"]]


def correctness_table(D):
    return D["correctness"][["mode", "reference", "task", "batch_size", "n", "prediction_agreement", "max_abs_dlogit",
                             "kind", "passed"]].rename(columns={"batch_size": "batch", "prediction_agreement": "agreement",
                                                                "max_abs_dlogit": "max |Δlogit|"})


def accuracy_table(D):
    a = D["accuracy"][["task", "mode", "n", "accuracy", "n_common", "accuracy_common", "unit_test_accuracy",
                       "unit_test_n"]].rename(columns={"accuracy_common": "accuracy (common)", "n_common": "n common",
                                                       "unit_test_accuracy": "unit test acc.", "unit_test_n": "unit test n"})
    return a.sort_values(["task", "mode"])


def original_table(D):
    import pandas as pd
    return pd.DataFrame(against_original(D))


# ---------------------------------------------------------------------------- prose
def setup_text(D) -> dict[str, str]:
    """The run's setup: seed, tasks, dtype, device, max length, requests, warm-up, repeats, batch sizes
    (with the modes served at fewer), the load before the run, its minutes, the modes not run."""
    keys = ("seed", "tasks", "dtype", "device", "max_length", "n_requests", "warmup", "repeats", "batch_sizes",
            "load", "minutes")
    if not has_latency(D):
        return {**dict.fromkeys(keys, NA), "not_run": "all"}
    meta, env = D["meta"], D["meta"]["environment"]
    cfg = meta["config"]
    all_bs = [int(b) for b in cfg["batch_sizes"]]
    fewer = "; ".join(f"{m} at {', '.join(map(str, v))} only" for m in cfg["modes"]
                      if (v := mode_batch_sizes(cfg, m)) != all_bs)
    ran = set(D["latency"]["mode"])
    return {"seed": str(meta["seed"]), "tasks": ", ".join(meta["tasks"]), "dtype": meta["dtype"],
            "device": env["gpu"] or f'{env["cpu"]} ({env["torch_threads"]} torch threads)',
            "max_length": str(meta["max_length"]), "n_requests": str(cfg["n_requests"]),
            "warmup": str(cfg["warmup_batches"]), "repeats": str(cfg["repeats"]),
            "batch_sizes": ", ".join(map(str, all_bs)) + (f" ({fewer})" if fewer else ""),
            "load": num((meta.get("loadavg_before") or [math.nan])[0], ".2f"),
            "minutes": num(meta["wall_time_s"] / 60, ".1f"),
            "not_run": ", ".join(m for m in MODES if m not in ran) or "none"}


def _below_text(below) -> str:
    from ..tasks import task_name
    if below is None or below.empty:
        return ""
    items = [f"{task_name(r.stream)} at batch size {int(r.batch_size)} ({r.ratio:.2f}×)" for r in below.itertuples()]
    return (" An unmerged adapter computes strictly more than its merged model, so a ratio below 1 is "
            "measurement error too, and these timings have some: " + ", ".join(items[:-1])
            + (" and " if len(items) > 1 else "") + items[-1] + ".")


def overhead_text(D) -> dict[str, str]:
    """The overheads' prose: per-task ratios at the smallest and largest batch size, the interleaved
    stream's ratios, the timings' error floor, and our overhead beside the original's."""
    keys = ("bmin", "bmax", "bmax_multi", "lm_min", "lm_max", "mf_min", "multi_min", "multi_max", "mixed_min",
            "mixed_max", "mixed_multi_max", "floor", "floor_all", "overhead")
    if not has_latency(D):
        return {**dict.fromkeys(keys, NA), "below": ""}
    rat, bs = D["ratios"], batch_sizes(D)
    bmin, bmax, bmm = bs["min"], bs["max"], bs["max_multi"]
    multi = lambda n, d, b: ratio_text(rat, n, d, "multi", b) if b is not None else NA  # noqa: E731
    err = timing_error(rat)
    return {"bmin": str(bmin), "bmax": str(bmax), "bmax_multi": num(bmm, "d"),
            "lm_min": per_task_ratios(rat, "lora", "merged", bmin), "lm_max": per_task_ratios(rat, "lora", "merged", bmax),
            "mf_min": per_task_ratios(rat, "merged", "full", bmin),
            "multi_min": multi("multi", "routed-merged", bmin), "multi_max": multi("multi", "routed-merged", bmm),
            "mixed_min": multi("mixed", "routed-merged", bmin), "mixed_max": multi("mixed", "routed-merged", bmm),
            "mixed_multi_max": multi("mixed", "multi", bmm), "floor": num(100 * err["same"], ".0f", "%"),
            "floor_all": num(100 * err["floor"], ".0f", "%"), "below": _below_text(err["below"]),
            "overhead": num(100 * overhead_vs_full(D), "+.1f", "%")}


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
    return {"n": str(c["n"]), "passed": str(c["passed"]), "merged_agreement": num(100 * c["merged_agreement"], ".1f", "%"),
            "merged_dlogit": num(c["merged_dlogit"], ".2g")}


def arch_note(name: str, R: dict) -> str:
    """One architecture-only run's description: what, where, its configuration and duration."""
    m = R["meta"]
    c, env = m["config"], m["environment"]
    dev = env["gpu"] or f'{env["cpu"]}, {env["torch_threads"]} threads'
    return (f"**{name}** — {m['kind']}; {m['arch']} on {dev}, {c['dtype']}; batch sizes "
            f"{c['batch_sizes']}, {c['n_requests']} requests per point, {c['repeats']} repeat(s), modes "
            f"{', '.join(c['modes'])}; single-adapter streams: {', '.join(c['single_tasks'])}; token lengths: "
            f"{', '.join(f'{t} {v:.0f}' for t, v in m['mean_length'].items())} (mean; "
            f"{next(iter(m['length_source'].values()))}); {m['wall_time_s'] / 60:.1f} min.")


def arch_checks_note(name: str, R: dict) -> str:
    cc = R["correctness"]
    return (f"{name}: {int(cc['passed'].sum())} of {len(cc)} identity/agreement checks passed "
            f"(max |Δlogit| of multi/mixed vs lora: {cc[cc['mode'].isin(['multi', 'mixed'])]['max_abs_dlogit'].max():.2g}).")


def vllm_text(D) -> dict[str, str]:
    """Why vLLM did not run here (as the run recorded it, else as this machine says), and whether a
    vLLM run's results are present."""
    from .vllm import vllm_available
    info = D["meta"].get("vllm", {}) if has_latency(D) else {}
    return {"why": info.get("detail") or vllm_available()[1], "ran": "yes" if has_latency(D) and "vllm_meta" in D else "no"}
