"""Paired, interleaved timing and its statistics.

A *point* (comparison x stream x batch size) serves the same windows of requests with every mode of
the comparison, all loaded at once: for window ``w`` of repeat ``r`` the modes take turns in the
order of the comparison rotated by ``r + w`` places (A B, B A, ... ; every mode in every position
equally often), so each window gives one *pair* (one tuple) of times measured under the same
conditions. Before the timed repeats every mode serves ``warmup`` windows untimed.

Each timed call covers what a server does for a batch: tokenise and pad, switch adapter if needed,
forward, bring the logits to the host. Clock: ``time.perf_counter`` on a CPU; CUDA events on a GPU.
A request's latency is the time from the start of its window until its batch
is done (the batches before it in the window are its queue); throughput is requests over the summed
service time of the mode's windows.

Ratios (``paired_ratio``) are ratios of means: the mode's summed window times over the other's, with
a percentile bootstrap that resamples the pairs (windows x repeats) jointly; beside it the geometric
mean of the per-window ratios and each repeat's own ratio (the spread between repeats).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from .schedule import in_request_order, padding


class WallTimer:
    """``time.perf_counter`` around the call, the device synchronised before the clock stops."""

    def __init__(self, device: str = "cpu"):
        self.cuda = str(device).startswith("cuda")
        self.kind = "time.perf_counter (+ torch.cuda.synchronize)" if self.cuda else "time.perf_counter"

    def __call__(self, fn: Callable):
        t0 = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0


class CudaEventTimer:
    """CUDA events recorded before and after the call (host work in between is inside the interval)."""

    kind = "CUDA events"

    def __call__(self, fn: Callable):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end) / 1e3


def make_timer(device: str):
    return CudaEventTimer() if str(device).startswith("cuda") else WallTimer(device)


def serve_window(server, reqs: list, batches: list[list[int]], timer) -> tuple[list[float], np.ndarray]:
    """Serve a window's batches in order: each batch's time (s) and the logits in the window's order."""
    lat, outs = [], []
    for b in batches:
        out, dt = timer(lambda b=b: server([reqs[i] for i in b]))
        lat.append(dt)
        outs.append(out.numpy())
    return lat, in_request_order(batches, outs, len(reqs))


def rotation(modes: list[str], k: int) -> list[str]:
    """The modes rotated by ``k`` places: the serving order of pair ``k``."""
    k %= len(modes)
    return list(modes[k:]) + list(modes[:k])


def time_point(servers: dict, wins: list[list], plans: dict[str, list], repeats: int, warmup: int, timer,
               on_logits: Callable | None = None) -> list[dict]:
    """Serve every window with every mode, rotated, ``repeats`` times after ``warmup`` untimed windows.

    ``plans[mode][w]`` is the mode's batches of window ``w``. One row per timed batch: mode, repeat,
    window, batch, its size, its tokens (real, padded), its place in the rotation, its time and the
    time from the window's start to its end. ``on_logits(mode, window, logits)`` sees every repeat-0
    window's logits in request order."""
    modes, rows = list(servers), []
    for w in range(min(warmup, len(wins))):
        for m in modes:
            serve_window(servers[m], wins[w], plans[m][w], timer)
    for rep in range(repeats):
        for w, reqs in enumerate(wins):
            for pos, m in enumerate(rotation(modes, rep + w)):
                lat, logits = serve_window(servers[m], reqs, plans[m][w], timer)
                if rep == 0 and on_logits is not None:
                    on_logits(m, reqs, logits)
                done = np.cumsum(lat)
                for i, b in enumerate(plans[m][w]):
                    real, padded = padding(reqs, [b])
                    rows.append({"mode": m, "repeat": rep, "window": w, "batch": i, "n": len(b),
                                 "tokens_real": real, "tokens_padded": padded, "position": pos,
                                 "latency_ms": 1e3 * lat[i], "done_ms": 1e3 * float(done[i])})
    return rows


# ---------------------------------------------------------------------------- statistics
def paired_ratio(num, den, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Ratio of means sum(num) / sum(den) of paired times, with a percentile bootstrap over the pairs
    (resampled jointly), and the geometric mean of the per-pair ratios."""
    a, b = np.asarray(num, float), np.asarray(den, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("a paired ratio needs two equally long, non-empty series of times")
    idx = np.random.default_rng(seed).integers(0, len(a), (int(n_boot), len(a)))
    boot = a[idx].sum(1) / b[idx].sum(1)
    lo, hi = np.percentile(boot, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return {"ratio": float(a.sum() / b.sum()), "ci_low": float(lo), "ci_high": float(hi),
            "gmean_ratio": float(np.exp(np.mean(np.log(a / b)))), "n_pairs": int(len(a))}


def window_times(batches):
    """Summed batch times per (comparison, stream, batch size, repeat, window, mode), one column per mode."""
    keys = ["comparison", "stream", "batch_size", "repeat", "window"]
    w = batches.groupby(keys + ["mode"], sort=True)["latency_ms"].sum().unstack("mode")
    return w.reset_index()


def repeat_ratios(times, num: str, den: str) -> np.ndarray:
    """Each repeat's own ratio of summed times (num / den)."""
    g = times.groupby("repeat")[[num, den]].sum()
    return (g[num] / g[den]).to_numpy()


def latency_summary(rows) -> dict:
    """One mode at one point: per-request latency (its batch's end, from its window's start) percentiles,
    throughput over the summed service time, each repeat's throughput, batch sizes and padding."""
    done = np.repeat(rows["done_ms"].to_numpy(), rows["n"].to_numpy())
    per_rep = rows.groupby("repeat").apply(lambda g: g["n"].sum() / (g["latency_ms"].sum() / 1e3),
                                           include_groups=False)
    n, served_s = int(rows["n"].sum()), float(rows["latency_ms"].sum()) / 1e3
    return {"n_requests": n, "n_batches": int(len(rows)), "mean_batch": float(rows["n"].mean()),
            "latency_mean_ms": float(done.mean()), "latency_p50_ms": float(np.percentile(done, 50)),
            "latency_p95_ms": float(np.percentile(done, 95)), "latency_p99_ms": float(np.percentile(done, 99)),
            "batch_ms_mean": float(rows["latency_ms"].mean()), "throughput_rps": n / served_s,
            "throughput_repeat_min": float(per_rep.min()), "throughput_repeat_max": float(per_rep.max()),
            "pad_fraction": float(1 - rows["tokens_real"].sum() / rows["tokens_padded"].sum()),
            "served_s": served_s}
