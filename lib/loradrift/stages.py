"""The study's stages, in the order ``all`` runs them (a minimal stand-in: the lead's ``stages`` module
replaces this one; it keeps exactly this interface).

A stage has a ``name`` (the CLI command), a one-line ``help``, ``run(prof, tasks=None, glue_source=None,
**opts)`` that computes what is missing, ``results``: a glob under ``data/<profile>/`` that matches its
results, and ``command(profile)``: the command line that runs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import LoraDriftError


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    results: str                # glob under data/<profile>/
    compute: Callable           # compute(prof, tasks=None, glue_source=None, **opts)

    def run(self, prof: dict, tasks=None, glue_source=None, **opts):
        return self.compute(prof, tasks=tasks, glue_source=glue_source, **opts)

    def command(self, profile: str) -> str:
        return f"python -m loradrift {self.name} --profile {profile}"


def _setup(prof, tasks=None, glue_source=None, **_):
    import types

    from .cli import cmd_setup   # the lead's stages module holds this body itself
    cmd_setup(prof, types.SimpleNamespace(glue_dir=glue_source))


def _search(prof, tasks=None, glue_source=None, **opts):
    from .search import run_search
    return run_search(prof, tasks=tasks, glue_source=glue_source, **opts)


def _train(prof, tasks=None, glue_source=None, **opts):
    from .train import train_all
    return train_all(prof, tasks, glue_source=glue_source, **opts)


def _drift(prof, tasks=None, glue_source=None, **_):
    from .drift import run_drift
    return run_drift(prof, tasks=tasks, glue_source=glue_source)


def _deploy(prof, tasks=None, glue_source=None, **opts):
    from .serving import run_deploy
    return run_deploy(prof, tasks=tasks, glue_source=glue_source, **opts)


def _timing(prof, tasks=None, glue_source=None, **_):
    from .findings import study_time
    from .store import result_path, write_json
    t = study_time(prof["name"])
    write_json(result_path(prof["name"], "study_time"), t)
    return t


STAGES = [
    Stage("setup", "data statistics, baselines, sanity check", "data_stats.json", _setup),
    Stage("search", "hyperparameter search", "search*", _search),
    Stage("train", "training units", "runs/*.json", _train),
    Stage("drift", "representational drift", "drift*", _drift),
    Stage("deploy", "serving benchmark", "deployment*", _deploy),
    Stage("timing", "the study's run time, stage by stage", "study_time.json", _timing),
]


def get_stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise LoraDriftError(f"unknown stage {name!r}: one of {[s.name for s in STAGES]}")
