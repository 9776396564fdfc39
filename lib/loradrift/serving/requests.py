"""Requests: real test-split examples in the training format (``real_requests``), or random token
ids of given lengths for architecture-only runs (``random_requests``). Each carries its token count
(``length``, set by the model source), which the schedulers (``schedule``) bucket by.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

INTERLEAVED = "interleaved"   # the stream name of the interleaved stream of every task


@dataclass
class Request:
    uid: str                      # "<task>:<index into the test split>"
    task: str                     # also the adapter name
    label: int | None = None
    text: str | None = None       # real requests
    ids: list[int] | None = None  # architecture-only requests (random token ids)
    length: int | None = None     # tokens after truncation (what the server pads to)

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
