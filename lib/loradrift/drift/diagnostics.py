"""Is a pooled representation decided by one coordinate? The dominance diagnostic of every pooling
and depth.

For pooled states X [n, d] of a sample: the share of the centred variance held by the coordinate
with the most (``top_share``: 1/d for isotropic data, 1 when one coordinate holds it all), which
coordinate that is, and the Pearson correlation of that coordinate with 1/length (``length``: the
example's real tokens). Before the sink rule (``masked_all``), the attention sink puts 98% of the
variance of SST-2's layers 15-25 into one coordinate of SmolLM2's mean pooling (MRPC: 61-93%),
correlated 0.97-0.98 with 1/length: every Gram measure of those depths then compares sentence
lengths. After it (``masked``): 2-7%. A (pooling, depth)
whose top share exceeds the profile's ``drift.dominance_threshold`` for the base or any fine-tuned
model is flagged (``dominated``); `findings.dominance` gives the flags to wherever a measure is shown.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .extract import depth_names
from .grams import as64


def top_coordinate(X, lengths) -> dict:
    """{top_share, top_coord, corr_inv_length} of one representation X [n, d] (see the module
    docstring); nan where undefined (no variance at all, or every example of one length)."""
    Xc = as64(X) - as64(X).mean(0)
    var = (Xc ** 2).sum(0)
    inv = 1.0 / np.asarray(lengths, dtype=np.float64)
    if len(inv) != Xc.shape[0]:
        raise ValueError(f"one length per example needed: {len(inv)} lengths for {Xc.shape[0]} examples")
    if var.sum() == 0:
        return {"top_share": float("nan"), "top_coord": None, "corr_inv_length": float("nan")}
    j = int(var.argmax())
    corr = float(np.corrcoef(Xc[:, j], inv)[0, 1]) if np.ptp(inv) > 0 else float("nan")
    return {"top_share": float(var[j] / var.sum()), "top_coord": j, "corr_inv_length": corr}


def task_diagnostics(task: str, reps: dict, rids: list, cfg: dict) -> pd.DataFrame:
    """The diagnostic of every configured pooling and depth for the base and each fine-tuned model of
    a task, and of ``masked_all`` wherever a model's states hold it (the base's always do) -> one row
    per (model, pooling, depth), with ``dominated`` (top share above ``cfg["dominance_threshold"]``).
    ``reps[id]`` holds the pooled states and ``lengths``."""
    lengths = reps["base"]["lengths"]
    names = depth_names(reps["base"]["masked"].shape[0] - 2)
    rows = []
    for rid, method, seed in [("base", "base", None), *rids]:
        for pooling in dict.fromkeys([*cfg["poolings"], *(["masked_all"] if "masked_all" in reps[rid] else [])]):
            for d, depth in enumerate(names):
                rows.append({"task": task, "model": rid, "method": method, "seed": seed, "pooling": pooling,
                             "depth": d, "depth_name": depth, **top_coordinate(reps[rid][pooling][d], lengths)})
    df = pd.DataFrame(rows)
    df["dominated"] = df["top_share"] > cfg["dominance_threshold"]
    return df
