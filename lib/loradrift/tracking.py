"""Experiment tracking with Weights & Biases, offline by default (``wandb sync`` uploads later).

A training unit is one wandb run:

- group ``<task>-<method>`` (the method name carries any variant, ``lora-r64``), job type ``train``,
  tags: the profile and the method's kind; name: the unit id;
- config: the unit config and its hash (``unit``, ``config_hash``), then what transformers' own
  ``WandbCallback`` adds (training arguments, model config);
- a deterministic id, ``<profile>-<unit>-<hash8>``, with ``resume="allow"``: a unit interrupted and
  started again continues its run (offline, each start writes its own ``offline-run-*-<id>`` folder;
  ``wandb sync`` uploads them in order into one run); a forced re-train starts a new run;
- the adapter (LoRA) or model (full) folder as an artifact, logged by reference to the files
  (``policy="immutable"``: nothing is copied; sync before the unit is re-trained);
- the score of the kept weights under ``validation/...`` and ``test/...`` (the Trainer would log
  ``evaluate(metric_key_prefix="validation")`` as ``train/validation_*``), evaluations during
  training under ``eval/...`` as transformers logs them.

A search trial is one run in group ``<task>-<method>-search`` (job type ``search``), logged when the
trial finishes: its parameters, its best-so-far validation value after each evaluation, its state.

wandb is an optional dependency (``pip install 'loradrift[wandb]'``): without it, or with
``LORADRIFT_WANDB=0``, or a profile's ``wandb.mode: disabled``, nothing is tracked.
"""
from __future__ import annotations

import importlib.util
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from .config import config_hash, run_id
from .store import artifacts_dir, repo_root

VALIDATION = "validation"  # the metric_key_prefix of a unit's final scoring on its validation slice


# ---------------------------------------------------------------------------------- settings
def enabled(prof: dict) -> bool:
    """Is tracking on? (wandb installed, not switched off by LORADRIFT_WANDB=0 or mode disabled)"""
    if os.environ.get("LORADRIFT_WANDB", "1") == "0" or importlib.util.find_spec("wandb") is None:
        return False
    return (os.environ.get("WANDB_MODE") or (prof.get("wandb") or {}).get("mode", "offline")) != "disabled"


def wandb_settings(prof: dict) -> list[str]:
    """Set wandb's environment from the profile (offline by default; an environment variable that is
    already set wins) and return the Trainer's ``report_to`` list: ``["wandb"]``, or ``[]`` when off."""
    if not enabled(prof):
        return []
    w = prof.get("wandb") or {}
    os.environ.setdefault("WANDB_MODE", w.get("mode", "offline"))
    os.environ.setdefault("WANDB_PROJECT", f"{w.get('project', 'lora-drift')}-{prof['name']}")
    os.environ.setdefault("WANDB_DIR", str(artifacts_dir(prof["name"])))
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    return ["wandb"]


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:128]


def unit_run_id(prof: dict, cfg: dict, fresh: bool = False) -> str:
    """``<profile>-<unit>-<hash8>``: the same unit config continues the same run; ``fresh`` (a forced
    re-train, which never resumes) adds the start time."""
    rid = _safe_id(f"{prof['name']}-{run_id(cfg['task'], cfg['method'], cfg['seed'])}-{config_hash(cfg)[:8]}")
    return f"{rid}-{time.strftime('%Y%m%dT%H%M%S')}" if fresh else rid


def _init(prof: dict, **kw):
    import wandb
    return wandb.init(project=os.environ["WANDB_PROJECT"], dir=os.environ["WANDB_DIR"], resume="allow", **kw)


def _where(run) -> dict:
    """Where a run lives: its id, project, group, mode and (offline) the folder ``wandb sync`` takes."""
    offline = run.offline
    d = Path(run.settings.sync_dir)
    try:
        shown = str(d.resolve().relative_to(repo_root()))
    except ValueError:
        shown = str(d)
    return {"id": run.id, "project": run.project, "group": run.group, "job_type": run.job_type,
            "mode": "offline" if offline else "online", "dir": shown,
            "url": None if offline else run.url}


def sync_hint(info: dict) -> str:
    """The command that uploads every folder of an offline run (a resumed run has one per start)."""
    folder = Path(info["dir"])
    return f"wandb sync {folder.parent / ('offline-run-*-' + info['id'])}"


# ---------------------------------------------------------------------------------- a unit
@contextmanager
def unit_run(prof: dict, cfg: dict, fresh: bool = False):
    """The wandb run of one training unit (None when tracking is off), finished when the block ends
    (exit code 1 if it raised, so an interrupted unit shows as such until it is resumed)."""
    if not wandb_settings(prof):
        yield None
        return
    from .methods import KINDS
    rid = run_id(cfg["task"], cfg["method"], cfg["seed"])
    kind = prof["methods"][cfg["method"]]["kind"]
    run = _init(prof, id=unit_run_id(prof, cfg, fresh), name=rid, group=f"{cfg['task']}-{cfg['method']}",
                job_type="train", tags=[prof["name"], kind, "adapter" if KINDS[kind].adapter else "full-model"],
                config={"unit": cfg, "unit_id": rid, "config_hash": config_hash(cfg)})
    ok = False
    try:
        yield run
        ok = True
    finally:
        run.finish(exit_code=0 if ok else 1)


def trainer_callbacks() -> list:
    """The Trainer's wandb logging for the active unit run ([] when none): transformers'
    ``WandbCallback``, with the kept weights' ``validation_*`` metrics (``train._score`` logs them) logged as
    ``validation/*``."""
    if importlib.util.find_spec("wandb") is None:
        return []
    import wandb
    if wandb.run is None:
        return []
    from transformers.integrations import WandbCallback

    class UnitWandbCallback(WandbCallback):
        def on_log(self, args, state, control, model=None, logs=None, **kw):
            logs = dict(logs or {})
            own = {f"{VALIDATION}/{k[len(VALIDATION) + 1:]}": logs.pop(k) for k in list(logs)
                   if k.startswith(VALIDATION + "_")}
            if logs:
                super().on_log(args, state, control, model=model, logs=logs, **kw)
            if own and state.is_world_process_zero:
                self._wandb.log({**own, "train/global_step": state.global_step})
    return [UnitWandbCallback()]


def log_unit(run, prof: dict, cfg: dict, folder: Path, result: dict) -> dict | None:
    """Log a finished unit's adapter/model folder as an artifact and its scores as the run summary;
    print the sync command once; return where the run lives (for the unit's result JSON)."""
    if run is None:
        return None
    import wandb
    from .methods import KINDS
    rid, h = result["id"], result["config_hash"]
    what = "adapter" if KINDS[prof["methods"][cfg["method"]]["kind"]].adapter else "model"
    art = wandb.Artifact(f"{rid}-{what}", type="model",
                         metadata={"unit": rid, "config_hash": h, "profile": prof["name"], "contents": what,
                                   "test": result["test"], "validation": result["validation"]})
    art.add_dir(str(folder), policy="immutable")
    run.log_artifact(art, aliases=["latest", f"config-{h[:8]}"])
    run.summary.update({f"test/{k}": v for k, v in result["test"].items()}
                       | {f"{VALIDATION}/{k}": v for k, v in result["validation"].items()}
                       | {"steps": result["steps"], "tokens_per_s": result["tokens_per_s"]})
    info = _where(run) | {"artifact": f"{rid}-{what}"}
    if info["mode"] == "offline":
        print(f"[{rid}] wandb run {info['id']} (offline): upload with `{sync_hint(info)}`")
    return info


# ---------------------------------------------------------------------------------- search
def search_callback(prof: dict, task: str, method: str, metric: str):
    """An Optuna callback logging each finished trial as a run in group ``<task>-<method>-search``
    (None when tracking is off). Ids are ``<profile>-<study>-t<number>``: logging a trial again
    continues its run."""
    if not wandb_settings(prof):
        return None

    def log_trial(study, trial) -> None:
        run = _init(prof, id=_safe_id(f"{prof['name']}-{study.study_name}-t{trial.number}"),
                    name=f"{task}-{method}-trial{trial.number}", group=f"{task}-{method}-search",
                    job_type="search", tags=[prof["name"], "search"],
                    config={"params": trial.params, "task": task, "method": method, "study": study.study_name,
                            "trial": trial.number, "defaults": bool(trial.user_attrs.get("defaults")),
                            "retry_of": trial.system_attrs.get("failed_trial")})
        for step, value in sorted(trial.intermediate_values.items()):
            run.log({f"{VALIDATION}/{metric}_best": value, "evaluation": step})
        run.summary.update({"state": trial.state.name, "value": trial.value,
                            **{k: v for k, v in trial.user_attrs.items() if isinstance(v, (int, float))}})
        info = _where(run)
        run.finish()
        if info["mode"] == "offline" and not getattr(log_trial, "hinted", False):
            log_trial.hinted = True
            glob = Path(info["dir"]).parent / f"offline-run-*-{_safe_id(prof['name'] + '-' + study.study_name)}-t*"
            print(f"[search {task}-{method}] wandb: one offline run per trial; upload with `wandb sync {glob}`")
    return log_trial
