"""The benchmark's engine: plan the loaded groups of modes, serve every mode at every batch size
``repeats`` times (the group order reversed on odd repeats), and turn the logits into correctness and
accuracy rows. The same engine serves trained units (``stage``) and random models (``arch``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..store import RESULTS, write_csv, write_json
from .memory import MemoryMeter, release_memory, tensor_bytes
from .modes import MODES, ordered
from .requests import BATCHINGS, INTERLEAVED
from .servers import padding_stats
from .timing import batch_rows, latency_summary, ratio_rows, time_stream

FILES = ("latency", "batches", "ratios", "memory", "storage", "correctness", "accuracy")


def mode_batch_sizes(cfg: dict, mode: str) -> list[int]:
    """The batch sizes a mode is served at: ``batch_sizes_by_mode[mode]``, else ``batch_sizes``."""
    return [int(b) for b in (cfg.get("batch_sizes_by_mode") or {}).get(mode, cfg["batch_sizes"])]


def stream_length(cfg: dict) -> int:
    """Requests each task's stream needs: the largest point, in whole batches."""
    from .requests import n_per_point
    return max(n_per_point(int(cfg["n_requests"]), b) for m in cfg["modes"] for b in mode_batch_sizes(cfg, m))


@dataclass
class Group:
    """Modes served from one loaded object (``multi`` and ``mixed`` share the resident model)."""
    name: str          # its first mode: the memory row's `group`
    stream: str        # a task, or INTERLEAVED
    load: str          # the ModelSource method that loads it
    modes: list[str]


def plan_groups(modes, tasks: list[str], single_tasks: list[str] | None = None) -> list[Group]:
    """The groups to load, in order: each single-task stream's groups, then the interleaved ones
    (only with more than one task)."""
    modes = ordered(modes)

    def groups(names, stream):
        by_load: dict[str, list[str]] = {}
        for m in names:
            by_load.setdefault(MODES[m].load, []).append(m)
        return [Group(ms[0], stream, load, ms) for load, ms in by_load.items()]

    out = [g for t in (single_tasks or tasks) for g in groups([m for m in modes if not MODES[m].interleaved], t)]
    if len(tasks) > 1:
        out += groups([m for m in modes if MODES[m].interleaved], INTERLEAVED)
    return out


class Bench:
    """One benchmark run: latency, batch and memory rows, and the logits of every point
    ``{(mode, stream, batch size, repeat): {uid: logits}}``."""

    def __init__(self, source, streams: dict, cfg: dict, log=print):
        self.source, self.streams, self.cfg, self.log = source, streams, cfg, log
        self.latency, self.batches, self.memory, self.logits = [], [], [], {}

    def run(self, groups: list[Group]) -> "Bench":
        torch.set_grad_enabled(False)
        try:
            for rep in range(int(self.cfg["repeats"])):
                for g in (groups if rep % 2 == 0 else groups[::-1]):
                    self.serve_group(g, rep)
                    release_memory()  # the group's models are gone: the next one's RSS starts clean
        finally:
            torch.set_grad_enabled(True)
        return self

    def serve_group(self, g: Group, rep: int):
        with MemoryMeter() as meter:
            t0 = time.perf_counter()
            model, extra = getattr(self.source, g.load)(list(self.streams) if g.stream == INTERLEAVED else g.stream)
            load_s = time.perf_counter() - t0
            for mode in g.modes:
                server = MODES[mode].server(model, self.source.encode)
                for bs in mode_batch_sizes(self.cfg, mode):
                    self.serve_point(mode, server, g.stream, bs, rep)
            mem = meter.read()
        self.memory.append({"group": g.name, "modes": "+".join(g.modes), "stream": g.stream, "repeat": rep,
                            "load_s": load_s, "model_mb": tensor_bytes(model) / 2**20, **mem, **extra})

    def serve_point(self, mode: str, server, stream: str, bs: int, rep: int):
        batches = BATCHINGS[MODES[mode].batching](self.streams, stream, int(bs), int(self.cfg["n_requests"]))
        res = time_stream(server, batches, int(self.cfg["warmup_batches"]))
        summ = latency_summary(res["latency_s"], res["sizes"], res["wall_s"])
        self.latency.append({"mode": mode, "stream": stream, "batch_size": int(bs), "repeat": rep, **summ,
                             "switches": server.switches, **padding_stats(server.encode, batches)})
        self.batches += batch_rows(mode, stream, bs, rep, batches, res["latency_s"])
        got = self.logits.setdefault((mode, stream, int(bs), rep), {})
        for b, out in zip(batches, res["logits"]):
            for r, row in zip(b, out.numpy()):
                got.setdefault(r.uid, row)
        self.log(f"  {mode:<14} {stream:<6} bs={bs:<3} rep={rep} "
                 f"p50={summ['latency_p50_ms']:.1f} ms  {summ['throughput_rps']:.1f} req/s")

    def frames(self, storage: list[dict], tol: float, labels: dict | None = None, units: dict | None = None) -> dict:
        """Every table of the run (``FILES``)."""
        return {"latency": self.latency, "batches": self.batches, "memory": self.memory, "storage": storage,
                "ratios": ratio_rows(self.batches, int(self.cfg["bootstrap"])),
                "correctness": correctness_rows(self.logits, tol),
                "accuracy": accuracy_rows(self.logits, labels or {}, units)}


def _by_task(got: dict, keep=lambda u: True) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for u in got:
        if keep(u):
            out.setdefault(u.split(":")[0], []).append(u)
    return dict(sorted(out.items()))


def correctness_rows(logits: dict, tol: float = 1e-4) -> list[dict]:
    """Prediction agreement and max |Δlogit| of each mode with a ``check`` against its reference mode,
    on the requests both served (first repeat; the reference on each task's own stream)."""
    out = []
    for mode in (m for m in MODES.values() if m.check):
        ref, kind = mode.check
        for (m, s, bs, rep) in sorted(k for k in logits if k[0] == mode.name and k[3] == 0):
            for task, uids in _by_task(logits[(m, s, bs, rep)]).items():
                r = logits.get((ref, task, bs, 0))
                uids = [u for u in uids if r is not None and u in r]
                if not uids:
                    continue
                A = np.stack([logits[(m, s, bs, rep)][u] for u in uids])
                B = np.stack([r[u] for u in uids])
                d, agree = float(np.abs(A - B).max()), float((A.argmax(1) == B.argmax(1)).mean())
                out.append({"mode": m, "reference": ref, "task": task, "batch_size": int(bs), "n": len(uids),
                            "prediction_agreement": agree, "max_abs_dlogit": d, "kind": kind,
                            "passed": bool(agree == 1.0 and (kind == "agreement" or d <= tol))})
    return out


def _metrics(got: dict, uids: list[str], labels: dict) -> dict:
    from ..train import classification_metrics
    if not uids:
        return {}
    return classification_metrics(np.stack([got[u] for u in uids]), np.array([labels[u] for u in uids]))


def accuracy_rows(logits: dict, labels: dict[str, int], units: dict | None = None) -> list[dict]:
    """Accuracy (and F1 of the positive class) of every mode on the labelled requests it served, at its
    smallest batch size, on all of them and on those every mode served; beside it the test accuracy of
    the trained unit it serves (``units`` {(kind, task): record}), if known."""
    if not labels:
        return []
    min_bs: dict = {}
    for (m, s, bs, rep) in logits:
        if rep == 0:
            min_bs[(m, s)] = min(bs, min_bs.get((m, s), bs))
    served: dict = {}  # task -> uids served by every mode (the common set, for a like-for-like comparison)
    for (m, s), bs in min_bs.items():
        for u in logits[(m, s, bs, 0)]:
            served.setdefault(u.split(":")[0], {}).setdefault((m, s), set()).add(u)
    common = {t: set.intersection(*v.values()) for t, v in served.items()}
    out = []
    for (m, s), bs in sorted(min_bs.items()):
        got = logits[(m, s, bs, 0)]
        kind = MODES[m].needs if m in MODES else None
        for task, uids in _by_task(got, lambda u: u in labels).items():
            met = _metrics(got, uids, labels)
            mc = _metrics(got, sorted(u for u in common[task] if u in labels), labels)
            unit = (units or {}).get((kind, task), {}) if kind else {}
            out.append({"mode": m, "task": task, "stream": s, "batch_size": int(bs), "n": len(uids),
                        "accuracy": met["accuracy"], "f1": met["f1"],
                        "n_common": len([u for u in common[task] if u in labels]),
                        "accuracy_common": mc.get("accuracy"), "f1_common": mc.get("f1"),
                        "unit_test_accuracy": unit.get("accuracy"), "unit_test_f1": unit.get("f1"),
                        "unit_test_n": unit.get("n")})
    return out


def write_results(out_dir: Path, frames: dict, meta: dict):
    """The tables (``FILES``) and the meta record, each written atomically."""
    import pandas as pd
    for name in FILES:
        write_csv(Path(out_dir) / RESULTS["deploy_table"].format(table=name), pd.DataFrame(frames.get(name, [])))
    write_json(Path(out_dir) / RESULTS["deploy_meta"], meta)


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def run_record(load_before, t_start: float) -> dict:
    """What every benchmark run records about itself: load, duration, vLLM status, environment."""
    from ..config import environment
    from .vllm import vllm_available
    ok, why = vllm_available()
    return {"loadavg_before": load_before, "loadavg_after": loadavg(),
            "wall_time_s": time.perf_counter() - t_start, "vllm": {"available": ok, "detail": why},
            "environment": environment(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def tolerance(dtype) -> float:
    """Numerical tolerance of an 'identical' check: 1e-4 in fp32, 2e-2 in half precision."""
    return 1e-4 if dtype == torch.float32 else 2e-2
