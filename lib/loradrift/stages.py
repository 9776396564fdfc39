"""The study's stages, in the order they run: one list used by the CLI, ``all`` and the chapters.

A stage has a name, a one-line description, the results it writes (a glob under ``data/<profile>/``)
and a ``run(prof, tasks=None, glue_source=None, **options)`` function. Each stage skips what is
current, so running the list again resumes an interrupted study. A stage holds its lock while it runs
(``store.lock``: a second process refuses, naming the holder); ``train`` locks each unit instead, so
several processes may train different units.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

from . import LoraDriftError
from .store import data_dir, lock, read_json, result_path, write_json


def run_setup(prof: dict, tasks=None, glue_source=None, **_) -> dict:
    """Data statistics, trivial baselines and the sanity check (can each method fit 10 examples?)."""
    from .config import environment, unit_config, units
    from .data import split_stats, study_splits
    from .models import base_model_path, load_tokenizer
    from .train import baselines, sanity_check, sanity_task
    name = prof["name"]
    tok = load_tokenizer(base_model_path(prof))
    max_len = int(prof["data"]["max_length"])
    # with per-seed training subsets, the statistics describe the first seed's subset of the task's first method
    first = {t: unit_config(prof, t, *next((m, s) for tt, m, s in units(prof) if tt == t)) for t in prof["tasks"]
             if any(tt == t for tt, _, _ in units(prof))}
    stats = [r for t in prof["tasks"]
             for r in split_stats(t, study_splits(prof, t, glue_source, unit=first.get(t)), tok, max_len)]
    write_json(result_path(name, "data_stats"), {"splits": stats, "environment": environment()})
    write_json(result_path(name, "baselines"), baselines(prof, glue_source))
    sanity_path = result_path(name, "sanity")
    done = read_json(sanity_path) if sanity_path.exists() else {}
    for m in prof["sanity"]["learning_rate"]:   # the methods the sanity check has a learning rate for
        if m not in done or done[m].get("task") != sanity_task(prof):   # none yet, or of another task
            done[m] = sanity_check(prof, m, glue_source=glue_source)
            write_json(sanity_path, done)
        print(f"sanity {m}: final loss {done[m]['final_loss']:.4f} ({'passed' if done[m]['passed'] else 'FAILED'})")
    print(f"setup results -> {data_dir(name)}")
    return done


def run_bench(prof: dict, tasks=None, glue_source=None, **_) -> dict:
    """Matrix-multiply ceilings and the training and extraction rates against them (see ``bench``)."""
    from .bench import run_bench as bench
    return bench(prof, tasks=tasks, glue_source=glue_source)


def run_search(prof: dict, tasks=None, glue_source=None, methods=None, n_trials=None, apply=None, **_):
    """Optuna search per task x method; ``apply`` (a profile name or YAML path) writes the chosen values there."""
    from .search import run_search as search
    if not prof.get("search"):
        print(f"profile {prof['name']} has no search: section (skipped)")
        return []
    return search(prof, tasks=tasks, methods=methods, n_trials=n_trials, glue_source=glue_source,
                  apply=apply or False)


def run_train(prof: dict, tasks=None, glue_source=None, methods=None, seeds=None, force=False, **_):
    from .config import units
    from .train import train_all, train_unit
    if force:
        return [train_unit(prof, t, m, s, force=True, glue_source=glue_source)
                for t, m, s in units(prof, tasks, methods, seeds)]
    return train_all(prof, tasks, methods, seeds, glue_source=glue_source)


def run_drift(prof: dict, tasks=None, glue_source=None, **_):
    from .drift import run_drift as drift
    return drift(prof, tasks=tasks, glue_source=glue_source)


def run_deploy(prof: dict, tasks=None, glue_source=None, arch=None, vllm=False, **_):
    from . import serving
    if arch:
        return serving.run_arch(arch, glue_source=glue_source)
    if vllm:
        return serving.run_vllm(prof, tasks=tasks, glue_source=glue_source)
    return serving.run_deploy(prof, tasks=tasks, glue_source=glue_source)


def run_timing(prof: dict, **_) -> dict:
    """The study's wall time, stage by stage, from what each stage recorded."""
    from .findings import study_time
    t = study_time(prof)
    path = write_json(result_path(prof["name"], "study_time"), t)
    for s in t["stages"]:
        print(f"{s['stage']:<8} {s['wall_s'] / 60:7.1f} min  {s['what']}")
    print(f"total    {t['total_wall_s'] / 60:7.1f} min  -> {path}")
    if not t["complete"]:
        tr = next(s for s in t["stages"] if s["stage"] == "train")
        print(f"not complete: {tr['units_done']} of {tr['units_planned']} units done; the rest projected at "
              f"{t['projected_left_s'] / 60:.0f} min")
    return t


def locked(name: str, run: Callable) -> Callable:
    """``run`` holding the lock of the stage's results for the profile it runs on."""
    @functools.wraps(run)
    def holding(prof: dict, *a, **kw):
        with lock(prof["name"], f"stage-{name}", f"the {name} stage"):
            return run(prof, *a, **kw)
    return holding


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    run: Callable
    results: str                              # glob under data/<profile>/ that holds its results
    options: tuple[str, ...] = field(default=())  # CLI options beyond --profile/--glue-dir/--model/--task

    def command(self, profile: str) -> str:
        return f"python -m loradrift {self.name} --profile {profile}"

    def has_results(self, profile: str) -> bool:
        return any(data_dir(profile).glob(self.results))


STAGES: list[Stage] = [
    Stage("setup", "data statistics, baselines and the sanity check", locked("setup", run_setup), "data_stats.json"),
    Stage("bench", "the device's matrix-multiply ceilings and the study's rates against them",
          locked("bench", run_bench), "bench.json"),
    Stage("search", "hyperparameter search (Optuna), optionally applied to the profile",
          locked("search", run_search), "search/*.json", ("method", "n_trials", "apply")),
    Stage("train", "the training units (each skipped when its result is current)", run_train, "runs/*.json",
          ("method", "seed", "force")),
    Stage("drift", "RQ1: representational drift, weight space and forgetting", locked("drift", run_drift), "drift_*"),
    Stage("deploy", "RQ2: the serving benchmark", locked("deploy", run_deploy), "deployment_*", ("arch", "vllm")),
    Stage("timing", "the study's run time, stage by stage", locked("timing", run_timing), "study_time.json"),
]


def get_stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise LoraDriftError(f"unknown stage {name!r}: one of {[s.name for s in STAGES]}")
