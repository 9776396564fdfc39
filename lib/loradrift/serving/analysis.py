"""The engine's rows as result tables: latency per mode and point, paired ratios with the cost model's
prediction beside them, correctness against each mode's reference, and accuracy."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .costmodel import predict
from .modes import MODES, ratio_pairs, same_batches
from .timing import latency_summary, paired_ratio, repeat_ratios, window_times

POINT = ["comparison", "stream", "batch_size"]


def latency_rows(batches: pd.DataFrame) -> list[dict]:
    """One row per mode and point: ``timing.latency_summary`` of its timed batches."""
    if batches.empty:
        return []
    return [{**dict(zip(POINT + ["mode"], k)), **latency_summary(g)}
            for k, g in batches.groupby(POINT + ["mode"], sort=False)]


def ratio_rows(batches: pd.DataFrame, cost: pd.DataFrame, dispatch_s: float, n_boot: int = 2000) -> list[dict]:
    """Every reported ratio (``modes.ratio_pairs``) at every point: the paired ratio of summed window
    times with its bootstrap interval, the geometric mean of per-window ratios, the spread of the
    repeats' own ratios, and the cost model's FLOP and byte ratios, extra operator calls and
    predicted ratio."""
    if batches.empty:
        return []
    out, by_point = [], cost.set_index(POINT + ["mode"]).sort_index() if not cost.empty else None
    for key, g in batches.groupby(POINT, sort=False):
        times = window_times(g)
        c = by_point.loc[key] if by_point is not None else None
        for num, den in ratio_pairs(list(g["mode"].unique())):
            r = paired_ratio(times[num], times[den], n_boot)
            reps = repeat_ratios(times, num, den)
            out.append({**dict(zip(POINT, key)), "numerator": num, "denominator": den, **r,
                        "repeat_min": float(reps.min()), "repeat_max": float(reps.max()),
                        "repeat_sd": float(reps.std(ddof=1)) if len(reps) > 1 else math.nan,
                        "same_batches": same_batches(num, den),
                        **_predicted(c, num, den, float(times[den].mean()) / 1e3, dispatch_s)})
    return out


def _predicted(c, num: str, den: str, den_s: float, dispatch_s: float) -> dict:
    if c is None or num not in c.index or den not in c.index:
        return dict.fromkeys(("flop_ratio", "bytes_ratio", "extra_ops", "predicted"), math.nan)
    a, b = c.loc[num], c.loc[den]
    pa = {"flops": a["flops_per_window"], "ops": a["ops_per_window"]}
    pb = {"flops": b["flops_per_window"], "ops": b["ops_per_window"], "seconds": den_s}
    return {"flop_ratio": float(a["flops_per_window"] / b["flops_per_window"]),
            "bytes_ratio": float(a["weight_bytes_per_window"] / b["weight_bytes_per_window"]),
            "extra_ops": float(a["ops_per_window"] - b["ops_per_window"]), "predicted": predict(pa, pb, dispatch_s)}


# ---------------------------------------------------------------------------- correctness and accuracy
def _by_task(uids) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for u in uids:
        out.setdefault(u.split(":")[0], []).append(u)
    return dict(sorted(out.items()))


def reference_logits(logits: dict, refs: tuple[str, ...], bs: int, stream: str) -> tuple[str | None, dict]:
    """The first reference mode that served requests at this batch size (its own stream's first,
    then any), with its logits {uid: logits} merged over its streams."""
    for ref in refs:
        keys = sorted((k for k in logits if k[0] == ref and k[2] == bs), key=lambda k: k[1] != stream)
        if keys:
            merged: dict = {}
            for k in keys:
                for u, v in logits[k].items():
                    merged.setdefault(u, v)
            return ref, merged
    return None, {}


def correctness_rows(logits: dict, tol: float = 1e-4) -> list[dict]:
    """Prediction agreement and max |Δlogit| of each mode with a ``check`` against its reference, per
    task, on the requests both served at the same batch size (first repeat)."""
    out = []
    for (m, s, bs), got in sorted(logits.items()):
        check = MODES[m].check if m in MODES else None
        if not check:
            continue
        ref, ref_logits = reference_logits(logits, check[0], bs, s)
        for task, uids in _by_task(u for u in got if u in ref_logits).items():
            A, B = np.stack([got[u] for u in uids]), np.stack([ref_logits[u] for u in uids])
            d, agree = float(np.abs(A - B).max()), float((A.argmax(1) == B.argmax(1)).mean())
            out.append({"mode": m, "reference": ref, "stream": s, "task": task, "batch_size": int(bs),
                        "n": len(uids), "prediction_agreement": agree, "max_abs_dlogit": d, "kind": check[1],
                        "passed": bool(agree == 1.0 and (check[1] == "agreement" or d <= tol))})
    return out


def accuracy_rows(logits: dict, labels: dict[str, int], units: dict | None = None) -> list[dict]:
    """Accuracy (and F1 of the positive class) of every mode on the labelled requests it served at its
    smallest batch size, per task; beside it the test accuracy of the trained unit it serves
    (``units`` {(kind, task): record}), if known."""
    from ..train import classification_metrics
    if not labels:
        return []
    smallest: dict = {}
    for (m, s, bs) in logits:
        smallest[(m, s)] = min(bs, smallest.get((m, s), bs))
    out = []
    for (m, s), bs in sorted(smallest.items()):
        got, kind = logits[(m, s, bs)], MODES[m].needs if m in MODES else None
        for task, uids in _by_task(u for u in got if u in labels).items():
            met = classification_metrics(np.stack([got[u] for u in uids]), np.array([labels[u] for u in uids]))
            unit = (units or {}).get((kind, task), {}) if kind else {}
            out.append({"mode": m, "stream": s, "task": task, "batch_size": int(bs), "n": len(uids),
                        "accuracy": met["accuracy"], "f1": met["f1"], "unit_test_accuracy": unit.get("accuracy"),
                        "unit_test_f1": unit.get("f1"), "unit_test_n": unit.get("n")})
    return out


def frames(bench, storage: list[dict], tol: float, labels: dict | None = None, units: dict | None = None) -> dict:
    """Every table of a run (``engine.FILES``)."""
    batches, cost = pd.DataFrame(bench.batches), pd.DataFrame(bench.cost)
    dispatch = float(np.mean(bench.dispatch_s)) if bench.dispatch_s else math.nan
    return {"latency": latency_rows(batches), "batches": bench.batches, "points": bench.points,
            "ratios": ratio_rows(batches, cost, dispatch, int(bench.cfg["bootstrap"])), "cost": bench.cost,
            "schedules": bench.schedules, "memory": bench.memory, "storage": storage,
            "correctness": correctness_rows(bench.logits, tol),
            "accuracy": accuracy_rows(bench.logits, labels or {}, units)}
