"""How fast the drift stage's measures are, with and without the Gram cache (`grams.Grams`).

`measures_speed` times `tables.task_measures` (everything the stage does after extraction: every
measure with its bootstrap interval, the model pairs and the permutation null; the standardised
measures' Grams count as builds too) on synthetic pooled
states of a task's shape: by default the cpu profile's largest task, SST-2 (872 examples, 576
features, 32 depths), its methods x seeds (6 models) and the base, its poolings, measures, controls,
bootstrap and permutation counts. The path before the cache (``Grams(enabled=False)``: every measure
builds its own Gram matrices) and the cached path run alternately (ABBA) in the same process; the
result holds each run's wall and CPU seconds, the ratio of the median wall times, the Gram matrices
each path built and the largest relative difference between their tables. Nothing is written: the
caller records the result.
"""
from __future__ import annotations

import os
import statistics

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..config import load_profile
from .grams import Gram, Grams
from .records import timed
from .settings import drift_config
from .tables import task_measures

SHIFT = 7  # rows between the windows of consecutive depths in `synthetic_states`


def synthetic_states(n: int, d: int, depths: int, ids: list[str], poolings: list[str], seed: int = 0) -> dict:
    """Pooled states {id: {pooling: [depths, n, d] float32}} of ``ids`` (the first is the base; each
    model is the base plus noise). Depth k of a state is the window of rows k * SHIFT .. k * SHIFT + n
    of one random buffer, so 32 depths of 872 x 576 take 2.5 MB per model and pooling, not 64."""
    r, rows = np.random.default_rng(seed), n + SHIFT * (depths - 1)
    base = {p: (r.standard_normal((rows, d), dtype=np.float32) + 1.0) for p in poolings}
    bufs = {ids[0]: base, **{i: {p: b + np.float32(0.5) * r.standard_normal(b.shape, dtype=np.float32)
                                 for p, b in base.items()} for i in ids[1:]}}
    window = lambda b: as_strided(b, (depths, n, d), (SHIFT * b.strides[0], *b.strides), writeable=False)  # noqa: E731
    return {i: {p: window(b) for p, b in per.items()} for i, per in bufs.items()}


def _max_rel_diff(a, b) -> float:
    """Largest relative difference between the numeric columns of two lists of tables."""
    out = 0.0
    for x, y in zip(a, b):
        cols = [c for c in x.columns if x[c].dtype.kind == "f"]
        u, v = x[cols].to_numpy(float), y[cols].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(u - v) / np.abs(u)
        out = max(out, float(np.nanmax(np.where(u == v, 0.0, rel), initial=0.0)))
    return out


def measures_speed(profile: str | dict = "cpu", n: int = 872, d: int = 576, depths: int = 32, rounds: int = 2,
                   seed: int = 0, **drift_settings) -> dict:
    """Time the measures of one drift task before and after the Gram cache (module docstring).

    ``depths``: the number of depths (the cpu profile's model has 32: embedding, 30 layers, final
    norm); fewer for a quicker run (the time is proportional). ``rounds``: each path runs
    2 x rounds times (ABBA). ``drift_settings`` override the profile's (e.g. ``n_boot=1000``).
    """
    prof = load_profile(profile) if isinstance(profile, str) else profile
    cfg = drift_config({**prof, "drift": {**(prof.get("drift") or {}), **drift_settings}})
    rids = [(f"bench-{m}-s{s}", m, s) for m in drift_config(prof)["compare"] for s in prof["seeds"][:3]]
    reps = synthetic_states(n, d, depths, ["base"] + [r for r, _, _ in rids], cfg["poolings"], seed)
    paths = {"before": lambda: Grams(enabled=False), "after": Grams}
    runs, builds, tables = {p: [] for p in paths}, {}, {}
    for i in range(2 * rounds):
        for path in (("before", "after") if i % 4 in (0, 3) else ("after", "before")):
            rec, built = {}, Gram.built
            with timed(rec, "t"):
                tables[path] = task_measures("bench", reps, rids, cfg, grams=paths[path]())
            runs[path].append(rec["t"])
            builds[path] = Gram.built - built
    wall = {p: statistics.median(r["wall_s"] for r in runs[p]) for p in paths}
    return {"shape": {"n": n, "d": d, "depths": depths, "models": len(rids)},
            "settings": {k: cfg[k] for k in ("n_boot", "n_perm", "poolings", "measures", "controls")},
            "runs": runs, "median_wall_s": wall, "speedup": wall["before"] / wall["after"],
            "gram_builds": builds, "max_rel_diff": _max_rel_diff(tables["before"], tables["after"]),
            "cores": os.cpu_count(), "loadavg": os.getloadavg()}
