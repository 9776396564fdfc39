"""Streams and schedulers: how requests arrive and how a server forms its batches.

A *stream* is a list of requests in arrival order: one task's requests (``task_stream``) or every
task's, interleaved at random in equal shares (``interleaved_stream``). It is cut into *windows* of
``window x batch size`` consecutive requests: what a server holds in its queue when it forms
batches, and the unit of the paired timing (every mode of a comparison serves the same window).

A *scheduler* turns a window into batches (lists of indices into the window, each at most the batch
size, every request exactly once):

- ``fifo``   batches in arrival order (one task's stream: every mode serves identical batches);
- ``task``   task-homogeneous batches: the window's requests grouped by task (tasks in order of first
             arrival), each group sorted by length and cut (a model per task, or ``set_adapter``);
- ``mixed``  length-bucketed across adapters: the whole window sorted by length and cut, so a batch
             carries requests for different adapters but of similar length (little padding).

Sorting is stable (ties keep arrival order). ``in_request_order`` puts a window's per-batch outputs
back in the window's order.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import LoraDriftError
from .requests import Request


def task_stream(requests: list[Request], n: int) -> list[Request]:
    """``n`` requests of one task in their order, cycling through them if there are fewer."""
    if not requests:
        raise LoraDriftError("an empty request stream: the task has no test examples")
    return [requests[i % len(requests)] for i in range(n)]


def interleaved_stream(per_task: dict[str, list[Request]], n: int, seed: int = 0) -> list[Request]:
    """``n`` requests of every task in equal shares (up to one), in a seeded random order; each task's
    requests in their own order (cycling if too few)."""
    tasks = list(per_task)
    order = np.random.default_rng(seed).permutation(np.resize(np.arange(len(tasks)), n))
    taken = dict.fromkeys(tasks, 0)
    out = []
    for k in order:
        t = tasks[int(k)]
        out.append(task_stream(per_task[t], taken[t] + 1)[taken[t]])
        taken[t] += 1
    return out


def windows(stream: list[Request], batch_size: int, window: int) -> list[list[Request]]:
    """Consecutive windows of ``window * batch_size`` requests (whole windows only)."""
    n = int(window) * int(batch_size)
    if n < 1:
        raise LoraDriftError(f"window ({window}) and batch size ({batch_size}) must be at least 1")
    return [stream[i:i + n] for i in range(0, len(stream) - n + 1, n)]


def _length(r: Request) -> int:
    if r.length is None:
        raise LoraDriftError(f"request {r.uid} has no length: streams must be built by the model source "
                             "(ModelSource.requests), which sets each request's token count")
    return int(r.length)


def _cut(idx: list[int], batch_size: int) -> list[list[int]]:
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


def _by_length(reqs: list[Request], idx: list[int]) -> list[int]:
    return sorted(idx, key=lambda i: (_length(reqs[i]), i))


def fifo(reqs: list[Request], batch_size: int) -> list[list[int]]:
    """Batches in arrival order."""
    return _cut(list(range(len(reqs))), batch_size)


def by_task(reqs: list[Request], batch_size: int) -> list[list[int]]:
    """Task-homogeneous batches: grouped by task (first-arrival order), sorted by length within a task."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(reqs):
        groups.setdefault(r.task, []).append(i)
    return [b for idx in groups.values() for b in _cut(_by_length(reqs, idx), batch_size)]


def mixed(reqs: list[Request], batch_size: int) -> list[list[int]]:
    """Length-bucketed batches across adapters: the window sorted by length, then cut."""
    return _cut(_by_length(reqs, list(range(len(reqs)))), batch_size)


SCHEDULERS: dict[str, Callable[[list[Request], int], list[list[int]]]] = {
    "fifo": fifo, "task": by_task, "mixed": mixed}


def scheduler(name: str):
    try:
        return SCHEDULERS[name]
    except KeyError:
        raise LoraDriftError(f"unknown scheduler {name!r}: one of {list(SCHEDULERS)} "
                             "(loradrift/serving/schedule.py)") from None


def in_request_order(batches: list[list[int]], outputs: list, n: int) -> np.ndarray:
    """Per-batch outputs (rows in batch order) as one array in the window's request order."""
    rows: list = [None] * n
    for b, out in zip(batches, outputs):
        for j, i in enumerate(b):
            if rows[i] is not None:
                raise LoraDriftError(f"request {i} of the window was served twice")
            rows[i] = np.asarray(out[j])
    if any(r is None for r in rows):
        raise LoraDriftError("a scheduler left requests of the window unserved")
    return np.stack(rows)


def padding(reqs: list[Request], batches: list[list[int]]) -> tuple[int, int]:
    """(real tokens, padded tokens) of a window's batches (right padding to the batch's longest)."""
    real = sum(_length(reqs[i]) for b in batches for i in b)
    padded = sum(len(b) * max(_length(reqs[i]) for i in b) for b in batches)
    return real, padded
