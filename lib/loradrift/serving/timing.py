"""Timing and its statistics: the timed stream, per-request latency summaries, and latency ratios
between modes with bootstrap intervals over batches.

Clock: ``time.perf_counter``. Per-request latency is the latency of the batch that carries it;
throughput is requests / wall time of the whole timed stream (measured, not derived).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from .modes import paired, ratio_pairs


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_stream(server: Callable, batches: list, warmup_batches: int = 2,
                clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] = _sync) -> dict:
    """Serve ``batches`` after ``warmup_batches`` untimed ones; per-batch latency, wall time, logits.

    The clock reads bracket the whole ``server(batch)`` call (encoding, any adapter switch, forward,
    device sync, copy to host). The wall time spans the whole timed stream, so throughput is measured.
    """
    for i in range(warmup_batches):
        server(batches[i % len(batches)])
    sync()
    if hasattr(server, "switches"):
        server.switches = 0  # count only the switches inside the timed stream
    lat, logits = [], []
    start = clock()
    for b in batches:
        t0 = clock()
        out = server(b)
        sync()
        lat.append(clock() - t0)
        logits.append(out)
    wall = clock() - start
    return {"latency_s": np.array(lat), "sizes": np.array([len(b) for b in batches]), "wall_s": wall,
            "logits": logits}


def latency_summary(lat_s: np.ndarray, sizes: np.ndarray, wall_s: float) -> dict:
    """Per-request latency percentiles (each request has its batch's latency) and measured throughput."""
    per_req = np.repeat(np.asarray(lat_s) * 1e3, np.asarray(sizes))
    return {"n_requests": int(np.sum(sizes)), "n_batches": int(len(lat_s)),
            "latency_mean_ms": float(per_req.mean()), "latency_p50_ms": float(np.percentile(per_req, 50)),
            "latency_p95_ms": float(np.percentile(per_req, 95)), "latency_p99_ms": float(np.percentile(per_req, 99)),
            "latency_sd_ms": float(per_req.std(ddof=1)) if len(per_req) > 1 else float("nan"),
            "throughput_rps": float(np.sum(sizes) / wall_s), "wall_s": float(wall_s)}


def batch_rows(mode: str, stream: str, bs: int, rep: int, batches, latency_s) -> list[dict]:
    """One row per timed batch: its size, its tasks and its latency."""
    return [{"mode": mode, "stream": stream, "batch_size": int(bs), "repeat": rep, "batch": i, "n": len(b),
             "tasks": "+".join(sorted({r.task for r in b})), "latency_ms": float(lat) * 1e3}
            for i, (b, lat) in enumerate(zip(batches, latency_s))]


def ratio_ci(num_lat, num_sizes, den_lat, den_sizes, paired: bool, n_boot: int = 2000, seed: int = 0,
             level: float = 0.95) -> tuple[float, float, float]:
    """Ratio of mean per-request latencies (num / den) with a percentile bootstrap interval over batches.

    Paired (the two modes served the same batches in the same order): one resample of batch indices
    for both. Unpaired: independent resamples.
    """
    a, na = np.asarray(num_lat, float), np.asarray(num_sizes, float)
    b, nb = np.asarray(den_lat, float), np.asarray(den_sizes, float)
    est = (a @ na / na.sum()) / (b @ nb / nb.sum())
    rng = np.random.default_rng(seed)
    if paired:
        if len(a) != len(b):
            raise ValueError("a paired ratio needs the same number of batches in both modes")
        idx = rng.integers(0, len(a), (n_boot, len(a)))
        ia = ib = idx
    else:
        ia = rng.integers(0, len(a), (n_boot, len(a)))
        ib = rng.integers(0, len(b), (n_boot, len(b)))
    ma = (a[ia] * na[ia]).sum(1) / na[ia].sum(1)
    mb = (b[ib] * nb[ib]).sum(1) / nb[ib].sum(1)
    lo, hi = np.percentile(ma / mb, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(est), float(lo), float(hi)


def ratio_rows(rows: list[dict], n_boot: int = 2000) -> list[dict]:
    """The latency ratios of every mode over its ``over`` modes (``modes.MODES``), at every stream and
    batch size both modes served, with bootstrap intervals over batches."""
    import pandas as pd
    df = pd.DataFrame(rows)
    if df.empty:
        return []
    out = []
    for num, den in ratio_pairs():
        a_all, b_all = df[df["mode"] == num], df[df["mode"] == den]
        for s in sorted(set(a_all["stream"]) & set(b_all["stream"])):
            for bs in sorted(df["batch_size"].unique()):
                a = a_all[(a_all["stream"] == s) & (a_all["batch_size"] == bs)].sort_values(["repeat", "batch"])
                b = b_all[(b_all["stream"] == s) & (b_all["batch_size"] == bs)].sort_values(["repeat", "batch"])
                if a.empty or b.empty:
                    continue
                pair = paired(num, den) and len(a) == len(b)
                est, lo, hi = ratio_ci(a["latency_ms"], a["n"], b["latency_ms"], b["n"], pair, n_boot)
                out.append({"numerator": num, "denominator": den, "stream": s, "batch_size": int(bs),
                            "ratio": est, "ci_low": lo, "ci_high": hi, "paired": pair, "n_batches": len(a)})
    return out
