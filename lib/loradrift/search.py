"""Hyperparameter search with Optuna: one study per task x method, feeding the study's training.

What the original meant to do (the book's appendix on the original study, chapters/original.qmd) and
did not: a *seeded* TPE sampler that really engages (n_startup_trials < n_trials), a pruner fed by
intermediate validation scores, and the task's own metric (F1 for MRPC) as the objective. The search
space is data, in the profile's ``search:`` section::

    search:
      n_trials: 8              # per task x method
      n_startup_trials: 4      # random trials before TPE takes over
      seed: 0                  # the sampler's seed is sha256(f"{seed}-{task}-{method}")
      train_fraction: 0.5      # trials train on this stratified share of the train split
      pruner: {n_startup_trials: 3, n_warmup_steps: 2}   # MedianPruner; steps = evaluations
      space:
        full: {learning_rate: {type: float, low: 1.0e-6, high: 5.0e-5, log: true}, ...}
        lora: {...}

A trial trains exactly like a unit (``build_for_training``, ``tokenize``, ``training_arguments``,
the counting Trainer, early stopping on the validation slice) with the trial's values in place of
the profile's, but saves no checkpoint and writes no run result. Its objective is the best value of
the task's metric over its evaluations on the validation slice carved from train: what a unit, which
restores its best checkpoint, would score there. The test split is never read. After each
evaluation the trial reports its best-so-far value; the MedianPruner stops trials that fall below the
median of earlier trials at the same evaluation.

The first trial of every study is the profile's untuned values (``training.common`` +
``training.<method>``), so the gain of the chosen values over the defaults is measured on the same
validation slice under the same conditions.

Studies live in SQLite under ``artifacts/<profile>/search/<task>-<method>.db``: an interrupted search
resumes and runs only the trials still missing. A trial whose process died is found by optuna's
heartbeat (``search.heartbeat: {interval: 60, grace_period: 120, max_retry: 2}``, seconds): once its
heartbeat is older than the grace period it is failed and queued again with the same parameters
(``RetryHeartbeatStaleTrialCallback``; the result records ``retry_of``). Each finished trial is also
a wandb run in group ``<task>-<method>-search`` (``tracking.py``). Results go to ``data/<profile>/search/``, and
``apply_search`` writes the chosen values into the profile YAML under
``training.per_task.<task>.<method>``, where ``unit_config`` picks them up (and units trained with
older values become stale).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from . import LoraDriftError
from .config import config_hash, environment, load_profile, profile_file, training_settings, unit_config
from .store import artifacts_dir, data_dir, read_or, write_json, write_text
from .data import study_splits, tokenize
from .tasks import task_metric
from .models import build_for_training
from .tracking import search_callback
from .train import _compute_metrics, counting_trainer_class, make_collator, training_arguments

# search-space keys are training keys (unit_config's `training` dict): what is tuned is what is used
TUNABLE = {"learning_rate", "num_train_epochs", "warmup_ratio", "weight_decay",
           "per_device_train_batch_size", "lora_alpha", "lora_dropout", "lora_r"}


# The original's chosen values (best_hyperparameters of analysis/<task>_<method>_optimal.yaml, typed in,
# 4 significant digits). Its LoRA optima came from a search run before its LoRA gradient fix, and its
# training then ignored the weight decay, the LoRA warm-up and the LoRA dropout (chapters/original.qmd).
ORIGINAL_SOURCE = ("benc61116/NLP @ eef92c5, analysis/{task}_{method}_optimal.yaml, best_hyperparameters "
                   "(10 random-search trials each)")
ORIGINAL_OPTIMA = {
    ("mrpc", "full"): {"learning_rate": 3.782e-05, "num_train_epochs": 4, "per_device_train_batch_size": 1,
                       "warmup_ratio": 0.2400, "weight_decay": 0.07778},
    ("sst2", "full"): {"learning_rate": 5.563e-05, "num_train_epochs": 4, "per_device_train_batch_size": 1,
                       "warmup_ratio": 0.1694, "weight_decay": 0.08197},
    ("rte", "full"): {"learning_rate": 9.663e-06, "num_train_epochs": 4, "per_device_train_batch_size": 1,
                      "warmup_ratio": 0.08549, "weight_decay": 0.01764},
    ("mrpc", "lora"): {"learning_rate": 2.542e-04, "num_train_epochs": 3, "per_device_train_batch_size": 16,
                       "warmup_ratio": 0.009986, "weight_decay": 0.003032, "lora_alpha": 64,
                       "lora_dropout": 0.1965, "lora_r": 8},
    ("sst2", "lora"): {"learning_rate": 1.333e-04, "num_train_epochs": 3, "per_device_train_batch_size": 8,
                       "warmup_ratio": 0.1398, "weight_decay": 0.01821, "lora_alpha": 8,
                       "lora_dropout": 0.04390},
    ("rte", "lora"): {"learning_rate": 3.088e-04, "num_train_epochs": 4, "per_device_train_batch_size": 4,
                      "warmup_ratio": 0.03755, "weight_decay": 0.06314, "lora_alpha": 8,
                      "lora_dropout": 0.2170, "lora_r": 8},
}
# its "expected performance": best-trial accuracy on 50 (MRPC, RTE) or 150 (SST-2) validation examples
ORIGINAL_EXPECTED = {("mrpc", "full"): 0.84, ("sst2", "full"): 0.92, ("rte", "full"): 0.68,
                     ("mrpc", "lora"): 0.82, ("sst2", "lora"): 0.7733, ("rte", "lora"): 0.60}


# ---------------------------------------------------------------------------------- settings
def search_settings(prof: dict) -> dict:
    s = prof.get("search")
    if not s or "space" not in s:
        raise LoraDriftError(f"profile {prof['name']!r} has no `search:` section with a `space`: add one "
                             "to its YAML (see lib/loradrift/search.py)")
    return s


def sampler_seed(prof: dict, task: str, method: str) -> int:
    """A stable seed per task x method (sha256, not Python's per-process salted hash())."""
    base = search_settings(prof).get("seed", 0)
    return int(hashlib.sha256(f"{base}-{task}-{method}".encode()).hexdigest(), 16) % (2 ** 31)


def default_params(prof: dict, method: str) -> dict:
    """The profile's untuned values of the searched keys (per_task values left out)."""
    base = training_settings(prof, method)
    return {k: base[k] for k in search_settings(prof)["space"][method] if k in base}


def study_key(prof: dict, task: str, method: str) -> str:
    """What a study's trials depend on (not n_trials: raising it continues the same study)."""
    s = search_settings(prof)
    cfg = unit_config(prof, task, method, _train_seed(prof))
    cfg["training"] = training_settings(prof, method)  # untuned base
    return config_hash({"space": s["space"][method], "seed": s.get("seed", 0),
                        "train_fraction": s.get("train_fraction"), "pruner": s.get("pruner"),
                        "n_startup_trials": s.get("n_startup_trials"), "unit": cfg})[:8]


def _train_seed(prof: dict) -> int:
    return int(search_settings(prof).get("train_seed", prof["seeds"][0]))


def storage_path(profile: str, task: str, method: str) -> Path:
    return artifacts_dir(profile) / "search" / f"{task}-{method}.db"


def result_path(profile: str, task: str, method: str) -> Path:
    return data_dir(profile) / "search" / f"{task}-{method}.json"


def suggest(trial, space: dict) -> dict:
    """Suggest one value per key of a YAML search space."""
    out = {}
    for name, spec in space.items():
        kind = spec["type"]
        if name not in TUNABLE:
            raise LoraDriftError(f"search space key {name!r} is not a tunable training key {sorted(TUNABLE)}")
        if kind == "float":
            out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                            log=bool(spec.get("log", False)))
        elif kind == "int":
            out[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]),
                                          log=bool(spec.get("log", False)))
        elif kind == "categorical":
            out[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif kind == "fixed":
            out[name] = spec["value"]
            trial.set_user_attr(f"fixed_{name}", spec["value"])
        else:
            raise LoraDriftError(f"search space {name}: unknown type {kind!r} (float, int, categorical, fixed)")
    return out


def _experimental(fn, *a, **kw):
    """Call one of optuna's features marked experimental (the heartbeat and its retry) without its warning."""
    from optuna.exceptions import ExperimentalWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return fn(*a, **kw)


def make_study(prof: dict, task: str, method: str):
    import optuna
    s = search_settings(prof)
    path = storage_path(prof["name"], task, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed(prof, task, method),
                                         n_startup_trials=int(s.get("n_startup_trials", 4)))
    p = s.get("pruner") or {}
    pruner = optuna.pruners.MedianPruner(n_startup_trials=int(p.get("n_startup_trials", 3)),
                                         n_warmup_steps=int(p.get("n_warmup_steps", 2)))
    hb = s.get("heartbeat") or {}
    storage = _experimental(
        optuna.storages.RDBStorage, f"sqlite:///{path}", heartbeat_interval=int(hb.get("interval", 60)),
        grace_period=int(hb.get("grace_period", 120)),
        heartbeat_stale_trial_callback=_experimental(optuna.storages.RetryHeartbeatStaleTrialCallback,
                                                     max_retry=int(hb.get("max_retry", 2))))
    return optuna.create_study(study_name=f"{task}-{method}-{study_key(prof, task, method)}", storage=storage,
                               sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True)


# ---------------------------------------------------------------------------------- a trial
def _data(prof, task, glue_source, tok):
    """Tokenised train (the search's share of it) and validation slice. The test split is dropped unread."""
    splits = study_splits(prof, task, glue_source)
    train, val = splits["train"], splits["validation"]
    frac = search_settings(prof).get("train_fraction")
    if frac and float(frac) < 1:
        n = max(2, int(round(float(frac) * len(train))))
        train = train.train_test_split(train_size=n, stratify_by_column="label",
                                       seed=int(prof["data"].get("split_seed", 0)))["train"]
    max_len = int(prof["data"]["max_length"])
    return tokenize(task, train, tok, max_len), tokenize(task, val, tok, max_len).sort("length")


def _reporting_callback(trial, metric):
    from transformers import TrainerCallback
    import optuna

    class Report(TrainerCallback):
        """After each evaluation: report the best-so-far validation metric; prune if told to."""
        def __init__(self):
            self.n, self.best, self.pruned = 0, -math.inf, False

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            v = (metrics or {}).get(f"eval_{metric}")
            if v is None:
                return
            self.n += 1
            self.best = max(self.best, float(v))
            trial.report(self.best, step=self.n)  # step = k-th evaluation: comparable across batch sizes
            if trial.should_prune():
                self.pruned = True
                raise optuna.TrialPruned(f"pruned at evaluation {self.n} (best so far {self.best:.4f})")
    return Report()


def run_trial(prof: dict, task: str, method: str, params: dict, trial=None, glue_source=None) -> dict:
    """Train one configuration on the search's train share; return validation results (no test, no files kept)."""
    from transformers import EarlyStoppingCallback
    seed = _train_seed(prof)
    cfg = unit_config(prof, task, method, seed)
    cfg["training"] = {**training_settings(prof, method), **params}
    model, tok = build_for_training(prof, method, cfg["training"], seed)
    train, val = _data(prof, task, glue_source, tok)
    metric = task_metric(task)
    work = Path(tempfile.mkdtemp(prefix=f"{task}-{method}-", dir=_scratch(prof)))
    args = training_arguments(prof, cfg, work, len(train), [], save_strategy="no", load_best_model_at_end=False,
                              run_name=f"search-{task}-{method}")
    callbacks = [EarlyStoppingCallback(int(cfg["training"].get("early_stopping_patience", 2)))]
    rep = _reporting_callback(trial, metric) if trial is not None else None
    if rep:
        callbacks.append(rep)
    trainer = counting_trainer_class()(model=model, args=args, train_dataset=train, eval_dataset=val,
                                       data_collator=make_collator(tok), compute_metrics=_compute_metrics,
                                       callbacks=callbacks)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        trainer.train()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        info = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                "steps": int(trainer.state.global_step), "tokens_real": int(trainer.tokens_real),
                "tokens_padded": int(trainer.tokens_padded), "n_train": len(train), "n_validation": len(val)}
        if trial is not None:
            for k, v in info.items():
                trial.set_user_attr(k, v)
    evals = [r[f"eval_{metric}"] for r in trainer.state.log_history if f"eval_{metric}" in r]
    if not evals:
        raise LoraDriftError(f"{task}-{method}: the trial made no evaluation on the validation slice")
    return {"value": max(evals), "curve": evals, "metric": metric, **info}


def _scratch(prof):
    d = artifacts_dir(prof["name"]) / "search" / "scratch"
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------------------------- a study
def search_one(prof: dict, task: str, method: str, n_trials: int | None = None, glue_source=None) -> dict:
    """Run the missing trials of one task x method study (resuming it), then write its results."""
    import optuna
    from optuna.trial import TrialState
    s = search_settings(prof)
    n_trials = int(n_trials if n_trials is not None else s.get("n_trials", 8))
    study = make_study(prof, task, method)
    # a trial whose process died (its heartbeat stopped more than grace_period ago) is failed and
    # queued again with the same parameters (optuna checks again before each new trial)
    _experimental(optuna.storages.fail_stale_trials, study)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    todo = max(0, n_trials - done)
    has_default = any(t.user_attrs.get("defaults") for t in study.get_trials(deepcopy=False, states=finished
                                                                             + (TrialState.WAITING,)))
    if todo and not has_default:
        study.enqueue_trial(default_params(prof, method), user_attrs={"defaults": True}, skip_if_exists=False)
    print(f"[search {task}-{method}] {done} of {n_trials} trials done; running {todo}")
    space = s["space"][method]

    def objective(trial):
        params = suggest(trial, space)
        return run_trial(prof, task, method, params, trial=trial, glue_source=glue_source)["value"]

    c0 = time.process_time()
    if todo:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # an error in a trial stops the search (the trial is recorded as FAIL and rerun on resume)
        track = search_callback(prof, task, method, task_metric(task))
        study.optimize(objective, n_trials=todo, gc_after_trial=True, callbacks=[track] if track else None)
    return write_results(prof, task, method, study, cpu_s_this_call=time.process_time() - c0)


def write_results(prof: dict, task: str, method: str, study, cpu_s_this_call: float = 0.0) -> dict:
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    s = search_settings(prof)
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append({
            "number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "defaults": bool(t.user_attrs.get("defaults")),
            "retry_of": _experimental(RetryHeartbeatStaleTrialCallback.retried_trial_number, t),
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "duration_s": t.duration.total_seconds() if t.duration else None,
            **{k: t.user_attrs.get(k) for k in ("wall_s", "cpu_s", "steps", "tokens_real", "tokens_padded",
                                                "n_train", "n_validation")}})
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    default = next((t for t in complete if t["defaults"]), None)
    best = max(complete, key=lambda t: t["value"]) if complete else None
    res = {
        "profile": prof["name"], "task": task, "method": method, "metric": task_metric(task),
        "study": study.study_name, "storage": str(storage_path(prof["name"], task, method)),
        "sampler": {"type": "TPESampler", "seed": sampler_seed(prof, task, method),
                    "n_startup_trials": int(s.get("n_startup_trials", 4))},
        "pruner": {"type": "MedianPruner", **{k: int(v) for k, v in (s.get("pruner") or {}).items()}},
        "space": s["space"][method], "train_fraction": s.get("train_fraction"), "train_seed": _train_seed(prof),
        "n_trials": sum(t["state"] in ("COMPLETE", "PRUNED") for t in trials),  # finished trials
        "n_complete": len(complete), "n_pruned": sum(t["state"] == "PRUNED" for t in trials),
        "n_failed": sum(t["state"] == "FAIL" for t in trials),
        "best_params": best["params"] if best else None, "best_value": best["value"] if best else None,
        "best_trial": best["number"] if best else None,
        "default_params": default_params(prof, method), "default_value": default["value"] if default else None,
        "gain_over_default": (best["value"] - default["value"]) if best and default else None,
        "cpu_s": sum(t["cpu_s"] or 0 for t in trials), "wall_s": sum(t["wall_s"] or 0 for t in trials),
        "cpu_s_last_call": cpu_s_this_call,
        "importances": importances(study),
        "trials": trials,
        "environment": environment(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(result_path(prof["name"], task, method), res)
    return res


def importances(study, seed: int = 0) -> dict | None:
    """fANOVA parameter importances (fixed seed) over the complete trials; None if there are too few."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 3:
        return None
    try:
        imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    except (RuntimeError, ValueError):  # e.g. every complete trial has the same value
        return None
    return {k: float(v) for k, v in imp.items()}


def run_search(prof: dict | str, tasks=None, glue_source=None, methods=None, n_trials: int | None = None,
               apply: bool | str = False) -> list[dict]:
    """Search every task x method of the profile (resuming), write the summary; apply if asked.

    ``apply`` True writes the chosen values into the profile's YAML (the built-in one of that name, or
    the path ``prof`` was given as); a string names the profile YAML (name or path) to write.
    """
    prof_in = prof
    prof = load_profile(prof) if isinstance(prof, str) else prof
    tasks = [tasks] if isinstance(tasks, str) else (tasks or prof["tasks"])
    methods = [methods] if isinstance(methods, str) else (methods or prof["methods"])
    out = [search_one(prof, t, m, n_trials=n_trials, glue_source=glue_source) for t in tasks for m in methods]
    write_summary(prof)
    if apply:
        target = apply if isinstance(apply, str) else (prof_in if isinstance(prof_in, str) else prof["name"])
        apply_search(target, tasks=tasks, methods=methods)
    return out


def load_results(profile: str) -> list[dict]:
    """The profile's search results; an unreadable one is named in a warning and left out."""
    d = data_dir(profile) / "search"
    return [r for r in (read_or(p) for p in sorted(d.glob("*-*.json"))) if r is not None] if d.exists() else []


def write_summary(prof: dict) -> dict:
    rows = [{k: r[k] for k in ("task", "method", "metric", "n_trials", "n_complete", "n_pruned", "best_value",
                               "default_value", "gain_over_default", "best_params", "cpu_s", "wall_s")}
            for r in load_results(prof["name"])]
    summ = {"profile": prof["name"], "studies": rows, "cpu_s": sum(r["cpu_s"] for r in rows),
            "wall_s": sum(r["wall_s"] for r in rows)}
    write_json(data_dir(prof["name"]) / "search" / "summary.json", summ)
    return summ


# ---------------------------------------------------------------------------------- apply
def profile_path(profile: str | dict) -> Path:
    """The YAML file that holds a profile's own settings (where ``per_task`` is written)."""
    return Path(profile["_file"]) if isinstance(profile, dict) else profile_file(str(profile))


def _yaml11_float(representer, value: float):
    """A float as YAML 1.1 (PyYAML, the profile loader) reads it back: ``1e-05`` would be a string there."""
    text = repr(float(value))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exp = text.split("e")
        text = f"{mantissa}.0e{exp if exp[0] in '+-' else '+' + exp}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def apply_search(profile: str, tasks=None, methods=None) -> dict:
    """Write the best values of finished searches into the profile YAML (training.per_task.<task>.<method>).

    The file is edited as a round trip (ruamel.yaml): comments and layout survive, only
    ``training.per_task`` changes; the result is re-read and checked before it replaces the old file.
    Returns the new per_task mapping."""
    import io

    import yaml
    from ruamel.yaml import YAML
    path = profile_path(profile)
    prof = load_profile(str(path))
    tasks, methods = tasks or prof["tasks"], methods or list(prof["methods"])
    per_task = json.loads(json.dumps(prof["training"].get("per_task") or {}))
    chosen = [r for r in load_results(prof["name"]) if r["task"] in tasks and r["method"] in methods
              and r.get("best_params")]
    if not chosen:
        raise LoraDriftError(f"no search results for {prof['name']!r} to apply: run "
                             f"`python -m loradrift search --profile {prof['name']}` first")
    for r in chosen:
        per_task.setdefault(r["task"], {})[r["method"]] = dict(r["best_params"])
    text = path.read_text()
    rt = YAML()
    rt.width, rt.preserve_quotes = 1000, True
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    rt.representer.add_representer(float, _yaml11_float)
    doc = rt.load(text)
    fresh = "per_task" not in doc["training"]
    if fresh:
        doc["training"]["per_task"] = per_task
    else:
        _update_in_place(doc["training"]["per_task"], per_task)
    if fresh:
        doc["training"].yaml_set_comment_before_after_key(
            "per_task", before=f"per_task: tuned values (`python -m loradrift search --profile {prof['name']} "
                               "--apply`); they override the method's values", indent=2)
    buf = io.StringIO()
    rt.dump(doc, buf)
    before, after = yaml.safe_load(text), yaml.safe_load(buf.getvalue())
    got = after["training"].pop("per_task", None)
    before["training"].pop("per_task", None)
    if got != per_task or before != after:
        raise LoraDriftError(f"could not rewrite {path} safely; add training.per_task by hand: {per_task}")
    write_text(path, buf.getvalue())
    print(f"applied search results to {path}: training.per_task = {per_task}")
    return per_task



def _update_in_place(node, new: dict) -> None:
    """Make a round-trip YAML mapping equal ``new`` key by key, keeping the nodes (and so the
    comments attached to them) of every key that stays."""
    for k in [k for k in node if k not in new]:
        del node[k]
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(node.get(k), dict):
            _update_in_place(node[k], v)
        else:
            node[k] = v
