"""The task registry: every GLUE task the study can run, declared once.

A task names its GLUE folder and columns, its label names (in the hub's order), the metric it is
judged by, and its text format. Adding a task is one ``register_task(Task(...))`` here (or in a
user's code) plus its sizes under ``data.tasks`` in a profile.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import Registry

# the trivial predictors every task is compared with (train.baselines computes them)
BASELINES = ("majority", "random")


@dataclass(frozen=True)
class Task:
    name: str                   # the study's id: rte, mrpc, sst2
    folder: str                 # the classic GLUE layout's folder, also the display name (RTE, MRPC, SST-2)
    a: str                      # TSV column of the first text
    b: str | None               # TSV column of the second text (pairs), None for single sentences
    label: str                  # TSV column of the label
    names: tuple[str, ...]      # label names in the hub's order (label ids 0, 1)
    metric: str                 # accuracy or f1 (positive class = label 1)
    hub: tuple[str, str | None]  # the hub dataset's text columns
    sep: str = " [SEP] "        # how a pair is joined into one input (the original's literal "[SEP]")

    @property
    def display(self) -> str:
        return self.folder

    def text(self, text_a: str, text_b: str | None = None) -> str:
        """The single input format of the task, used in training, evaluation, extraction and serving.

        It is the original study's format: a single sentence as it is, a pair as ``"<a> [SEP] <b>"``
        (the literal text "[SEP]", which the Llama tokenizer splits into ordinary tokens). No
        template, no EOS; the classifier reads the last real token."""
        return text_a.strip() if self.b is None else f"{text_a.strip()}{self.sep}{text_b.strip()}"


TASKS: Registry = Registry("task", "loradrift/tasks.py")
register_task = TASKS.register
get_task = TASKS.lookup


register_task(Task("rte", "RTE", "sentence1", "sentence2", "label", ("entailment", "not_entailment"),
                   "accuracy", ("sentence1", "sentence2")))
register_task(Task("mrpc", "MRPC", "#1 String", "#2 String", "Quality", ("not_equivalent", "equivalent"),
                   "f1", ("sentence1", "sentence2")))
register_task(Task("sst2", "SST-2", "sentence", None, "label", ("negative", "positive"),
                   "accuracy", ("sentence", None)))


def task_name(task: str) -> str:
    """The task's GLUE name for prose and tables: RTE, MRPC, SST-2."""
    return get_task(task).display


def task_metric(task: str) -> str:
    return get_task(task).metric
