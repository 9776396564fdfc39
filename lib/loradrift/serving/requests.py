"""Requests and the streams they are served in: one task's stream, or every task's interleaved.

Requests are real test-split examples in the training format (``real_requests``), or random token
ids of given lengths for architecture-only runs (``random_requests``). Every point of the benchmark
serves at least ``n_requests`` requests, in whole batches; ``BATCHINGS`` cuts the streams into
batches for each mode's ``batching`` (``modes.Mode``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

INTERLEAVED = "multi"   # the stream name of the interleaved stream of every task


@dataclass
class Request:
    uid: str                      # "<task>:<index into the test split>"
    task: str                     # also the adapter name
    label: int | None = None
    text: str | None = None       # real requests
    ids: list[int] | None = None  # architecture-only requests (random token ids)

    @property
    def adapter(self) -> str:
        return self.task


def real_requests(prof: dict, task: str, n: int, glue_source=None, seed: int = 0) -> list[Request]:
    """``n`` labelled test-split examples of ``task`` in the training format, in a seeded shuffled order."""
    from ..data import study_splits, texts
    test = study_splits(prof, task, glue_source)["test"]
    order = np.random.default_rng(seed).permutation(len(test))
    txt = texts(task, test)
    labels = test["label"]
    return [Request(uid=f"{task}:{int(i)}", task=task, label=int(labels[int(i)]), text=txt[int(i)])
            for i in order[:n]]


def random_requests(task: str, lengths: Iterable[int], vocab_size: int, seed: int = 0) -> list[Request]:
    """Architecture-only requests: uniformly random token ids (from 3: no special tokens) of the given
    lengths, without labels."""
    rng = np.random.default_rng(seed)
    return [Request(uid=f"{task}:{i}", task=task, ids=rng.integers(3, vocab_size, int(L)).tolist())
            for i, L in enumerate(lengths)]


def n_per_point(n_requests: int, bs: int) -> int:
    """Timed requests of one point: at least ``n_requests``, in whole batches."""
    return int(math.ceil(n_requests / bs) * bs)


def single_batches(reqs: list[Request], bs: int, n_requests: int) -> list[list[Request]]:
    """One task's stream in batches of ``bs`` (cycling through the requests if there are too few)."""
    n = n_per_point(n_requests, bs)
    stream = [reqs[i % len(reqs)] for i in range(n)]
    return [stream[i:i + bs] for i in range(0, n, bs)]


def multi_batches(per_task: dict[str, list[Request]], bs: int, n_requests: int) -> list[list[Request]]:
    """The interleaved stream: task-homogeneous batches, the task changing every batch (round robin),
    about ``n_requests`` in all. Batch k of task t holds the same requests as batch k of t's own
    stream, so its logits can be compared exactly."""
    tasks = list(per_task)
    n_task = int(math.ceil(n_requests / len(tasks)))
    per = {t: single_batches(per_task[t], bs, n_task) for t in tasks}
    k = max(len(v) for v in per.values())
    return [per[t][i] for i in range(k) for t in tasks if i < len(per[t])]


def mixed_batches(per_task: dict[str, list[Request]], bs: int, n_requests: int) -> list[list[Request]]:
    """The same requests as ``multi_batches``, interleaved request by request, then cut into batches
    of ``bs``: each batch carries requests for different adapters."""
    homog = multi_batches(per_task, bs, n_requests)
    tasks = list(per_task)
    queues = {t: [r for b in homog if b[0].task == t for r in b] for t in tasks}
    flat, i = [], 0
    while any(queues.values()):
        t = tasks[i % len(tasks)]
        if queues[t]:
            flat.append(queues[t].pop(0))
        i += 1
    return [flat[j:j + bs] for j in range(0, len(flat), bs)]


# batching -> (streams {task: requests}, stream name, batch size, n_requests) -> batches
BATCHINGS = {
    "task": lambda streams, stream, bs, n: single_batches(streams[stream], bs, n),
    "interleaved": lambda streams, stream, bs, n: multi_batches(streams, bs, n),
    "mixed": lambda streams, stream, bs, n: mixed_batches(streams, bs, n),
}
