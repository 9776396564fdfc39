"""The benchmark's engine: for every comparison (``deploy.comparisons``) and each of its streams, load
every mode at once (each loaded, then deep-copied, so every mode's weights are fresh allocations made
the same way), then serve each batch size's windows paired and rotated (``timing.time_point``),
count each mode's cost (``costmodel``), and release them. The same engine serves trained units
(``stage``) and random models (``arch``); ``analysis`` turns its rows into the result tables.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..store import RESULTS, write_csv, write_json
from .costmodel import batch_costs, count_ops, dispatch_cost
from .memory import MemoryMeter, release_memory, tensor_bytes
from .modes import MODES
from .requests import INTERLEAVED
from .schedule import SCHEDULERS, interleaved_stream, padding, scheduler, task_stream, windows
from .timing import make_timer, time_point

DESIGN = "paired, interleaved (issue 15)"   # results without it come from the earlier block design
FILES = ("latency", "batches", "ratios", "points", "cost", "schedules", "memory", "storage", "correctness",
         "accuracy")


@dataclass
class Point:
    """One comparison on one stream: its modes, all resident while its batch sizes are served."""
    comparison: str
    stream: str            # a task, or INTERLEAVED
    modes: list[str]
    window: int            # batches per timed window
    windows: dict          # batch size -> timed windows per repeat


def plan_points(cfg: dict, tasks: list[str]) -> list[Point]:
    """Every (comparison, stream) to serve, in the settings' order: task streams of the run's tasks;
    the interleaved stream when the run has more than one task."""
    out = []
    for name, c in cfg["comparisons"].items():
        for s in c["streams"]:
            if (s == INTERLEAVED and len(tasks) > 1) or s in tasks:
                out.append(Point(name, s, list(c["modes"]), int(c["window"]), dict(c["windows"])))
    return out


def requests_needed(cfg: dict) -> int:
    """Requests of each task the largest point needs (fewer are cycled)."""
    return max(n * int(c["window"]) * int(b) for c in cfg["comparisons"].values() for b, n in c["windows"].items())


class Bench:
    """One benchmark run. Rows: ``batches`` (every timed batch), ``points``, ``cost``, ``schedules``,
    ``memory``; ``logits`` {(mode, stream, batch size): {uid: logits}} of the first repeat."""

    def __init__(self, source, pools: dict, cfg: dict, log=print):
        self.source, self.pools, self.cfg, self.log = source, pools, cfg, log
        self.timer = make_timer(cfg["device"])
        self.batches, self.points, self.cost, self.schedules, self.memory = [], [], [], [], []
        self.logits: dict = {}
        self.dispatch_s: list[float] = []

    def run(self, points: list[Point]) -> "Bench":
        threads = torch.get_num_threads()
        if self.cfg.get("threads"):
            torch.set_num_threads(int(self.cfg["threads"]))
        torch.set_grad_enabled(False)
        try:
            self.dispatch_s.append(dispatch_cost(self.cfg["device"]))
            for p in points:
                self.serve_comparison(p)
            self.dispatch_s.append(dispatch_cost(self.cfg["device"]))
        finally:
            torch.set_grad_enabled(True)
            torch.set_num_threads(threads)
        return self

    def stream(self, stream: str, n: int) -> list:
        if stream == INTERLEAVED:
            return interleaved_stream(self.pools, n, int(self.cfg["seed"]))
        return task_stream(self.pools[stream], n)

    def load(self, mode: str, stream: str):
        what = list(self.pools) if stream == INTERLEAVED else stream
        t0 = time.perf_counter()
        loaded, extra = getattr(self.source, MODES[mode].load)(what)
        model = copy.deepcopy(loaded)   # fresh allocations for every weight, made the same way for every mode
        del loaded
        release_memory()
        return model, {"load_s": time.perf_counter() - t0, **extra}

    def serve_comparison(self, p: Point):
        with MemoryMeter() as meter:
            models, loads = {}, {}
            for m in p.modes:
                models[m], loads[m] = self.load(m, p.stream)
            servers = {m: MODES[m].server(models[m], self.source.encode) for m in p.modes}
            for bs, n in sorted(p.windows.items()):
                self.serve_point(p, servers, int(bs), int(n))
            mem = meter.read()
        self.memory += [{"comparison": p.comparison, "stream": p.stream, "mode": m, **loads[m],
                         "model_mb": tensor_bytes(_modules(models[m])) / 2**20, **mem} for m in p.modes]
        del servers, models
        release_memory()

    def serve_point(self, p: Point, servers: dict, bs: int, n_windows: int):
        reqs = self.stream(p.stream, n_windows * p.window * bs)
        wins = windows(reqs, bs, p.window)
        plans = {m: [scheduler(MODES[m].schedule)(w, bs) for w in wins] for m in servers}
        where = {"comparison": p.comparison, "stream": p.stream, "batch_size": bs}
        for s in servers.values():
            s.switches = 0
        load_before, t0 = loadavg(), time.perf_counter()
        rows = time_point(servers, wins, plans, int(self.cfg["repeats"]), int(self.cfg["warmup"]), self.timer,
                          lambda m, w, logits: self.keep_logits(m, p.stream, bs, w, logits))
        self.points.append({**where, "modes": "+".join(servers), "window": p.window, "windows": len(wins),
                            "repeats": int(self.cfg["repeats"]), "threads": torch.get_num_threads(),
                            "wall_s": time.perf_counter() - t0, "load_before": _one_minute(load_before),
                            "load_after": _one_minute(loadavg()),
                            "switches": " ".join(f"{m}:{s.switches}" for m, s in servers.items())})
        self.batches += [{**where, **r} for r in rows]
        self.cost += [{**where, **self.mode_cost(m, servers[m], wins, plans[m])} for m in servers]
        self.schedules += schedule_rows(where, wins, bs)
        t = {m: sum(r["latency_ms"] for r in rows if r["mode"] == m) / 1e3 for m in servers}
        self.log(f"  {p.comparison:<10} {p.stream:<11} bs={bs:<3} {len(wins)} windows x {self.cfg['repeats']} "
                 + "  ".join(f"{m} {len(reqs) * int(self.cfg['repeats']) / t[m]:.1f} req/s" for m in servers))

    def keep_logits(self, mode: str, stream: str, bs: int, reqs: list, logits: np.ndarray):
        got = self.logits.setdefault((mode, stream, bs), {})
        for r, row in zip(reqs, logits):
            got.setdefault(r.uid, row)

    def mode_cost(self, mode: str, server, wins: list, plan: list) -> dict:
        """Per window (mean): FLOPs, weight bytes, batches; operator calls of the first batch's forward."""
        shape, unmerged = self.source.shape(), MODES[mode].unmerged
        costs = [batch_costs(shape, w, b, unmerged) for w, b in zip(wins, plan)]
        ops = count_ops(lambda: server([wins[0][i] for i in plan[0][0]]))
        n_batches = float(np.mean([len(b) for b in plan]))
        n_req = float(np.mean([len(w) for w in wins]))
        flops = float(np.mean([c["flops"] for c in costs]))
        nbytes = float(np.mean([c["weight_bytes"] for c in costs]))
        return {"mode": mode, "flops_per_window": flops, "weight_bytes_per_window": nbytes,
                "ops_per_forward": ops, "batches_per_window": n_batches, "ops_per_window": ops * n_batches,
                "flops_per_request": flops / n_req, "weight_bytes_per_request": nbytes / n_req}


def _modules(model):
    """The torch modules of a loaded mode (a model, {task: model}, or (model, adapter index))."""
    return model[0] if isinstance(model, tuple) else model


def schedule_rows(where: dict, wins: list, bs: int) -> list[dict]:
    """Every scheduler on the same windows: batches per window and the share of padding (no forwards)."""
    out = []
    for name, fn in SCHEDULERS.items():
        plans = [fn(w, bs) for w in wins]
        real, padded = np.sum([padding(w, b) for w, b in zip(wins, plans)], axis=0)
        out.append({**where, "scheduler": name, "batches_per_window": float(np.mean([len(b) for b in plans])),
                    "tokens_real": int(real), "tokens_padded": int(padded), "pad_fraction": float(1 - real / padded)})
    return out


def write_results(out_dir: Path, frames: dict, meta: dict):
    """The tables (``FILES``) and the meta record, each written atomically."""
    import pandas as pd
    for name in FILES:
        write_csv(Path(out_dir) / RESULTS["deploy_table"].format(table=name), pd.DataFrame(frames.get(name, [])))
    write_json(Path(out_dir) / RESULTS["deploy_meta"], meta)


def _one_minute(load) -> float:
    return float(load[0]) if load else float("nan")


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def run_record(load_before, t_start: float, bench: Bench | None = None) -> dict:
    """What every benchmark run records about itself: load, duration, threads, timer, dispatch cost,
    vLLM status, environment."""
    from ..config import environment
    from .vllm import vllm_available
    ok, why = vllm_available()
    extra = {} if bench is None else {"timer": bench.timer.kind, "dispatch_s": bench.dispatch_s,
                                      "weights": "each mode loaded, then deep-copied (fresh allocations)"}
    return {"loadavg_before": load_before, "loadavg_after": loadavg(), "wall_time_s": time.perf_counter() - t_start,
            "vllm": {"available": ok, "detail": why}, **extra,
            "environment": environment(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def tolerance(dtype) -> float:
    """Numerical tolerance of an 'identical' check: 1e-4 in fp32, 2e-2 in half precision."""
    return 1e-4 if dtype == torch.float32 else 2e-2
