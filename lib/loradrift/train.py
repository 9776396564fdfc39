"""One training unit (task x method x seed) with transformers' Trainer, and the run store.

A unit trains on the profile's train split, evaluates on the validation slice during training
(early stopping, best checkpoint restored), then is scored once on the test split. It saves its
model (full) or adapter (LoRA) to ``artifacts/<profile>/models/<id>/`` and its result to
``data/<profile>/runs/<id>.json``, as a pair: both are staged, then put in place in an order that a
crash cannot break (the result records the model's fingerprint). Checkpoints under
``artifacts/<profile>/runs/<id>/`` make an interrupted unit resume, with every count it records
covering the whole unit; an unreadable checkpoint is discarded. A unit whose result exists with the
same config is skipped, and one whose recorded config differs from the profile is *stale*. One
process at a time trains a unit (``store.lock``).
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import LoraDriftError
from .config import config_hash, environment, load_profile, run_id, unit_config, units
from .store import (artifacts_dir, data_dir, folder_fingerprint, lock, weights_fingerprint, read_json, read_or, replace_dir,
                    unreadable, write_json, write_text)
from .store import result_path as _result_path
from .data import study_splits, tokenize, tokenize_original_eval
from .tasks import get_task, task_metric
from .models import build_for_training, parameter_counts
from .trainer import (_no_eval_at_end, _stop_when_fit, best_weights, checkpoint_counters, checkpoint_problem,
                      counting_trainer_class, precision)
from . import tracking


# ---------------------------------------------------------------------------------- helpers
def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    preds = np.asarray(logits).argmax(-1)
    return {"accuracy": float(accuracy_score(labels, preds)),
            "f1": float(f1_score(labels, preds, pos_label=1, zero_division=0))}


def _compute_metrics(eval_pred):
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return classification_metrics(logits, eval_pred.label_ids)


def make_collator(tokenizer):
    from transformers import DataCollatorWithPadding
    return DataCollatorWithPadding(tokenizer=tokenizer)


def training_arguments(prof, cfg, out_dir, n_train, report_to, **over):
    from transformers import TrainingArguments
    t = cfg["training"]
    bs = int(t["per_device_train_batch_size"]) * int(t.get("gradient_accumulation_steps", 1))
    steps_per_epoch = max(1, math.ceil(n_train / bs))
    every = max(1, steps_per_epoch // int(t.get("evals_per_epoch", 1)))
    # resume checkpoints (model + optimizer) every few evaluations; the best weights are kept by BestWeights
    save_every = every * int((prof.get("run") or {}).get("checkpoint_every_evals", 4))
    cuda = torch.cuda.is_available()
    kw = dict(
        output_dir=str(out_dir), seed=cfg["seed"], data_seed=cfg["seed"],
        learning_rate=float(t["learning_rate"]), num_train_epochs=float(t["num_train_epochs"]),
        per_device_train_batch_size=int(t["per_device_train_batch_size"]),
        per_device_eval_batch_size=int(t["per_device_eval_batch_size"]),
        gradient_accumulation_steps=int(t.get("gradient_accumulation_steps", 1)),
        warmup_steps=math.ceil(float(t["warmup_ratio"]) * steps_per_epoch * float(t["num_train_epochs"])),
        weight_decay=float(t["weight_decay"]),
        lr_scheduler_type=t.get("lr_scheduler_type", "linear"), max_grad_norm=float(t.get("max_grad_norm", 1.0)),
        eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=save_every,
        save_total_limit=1, load_best_model_at_end=False,
        # counts a resumed unit carries on from its checkpoint: real tokens in the state, the rest and the
        # early-stopping patience in stateful callbacks
        include_num_input_tokens_seen="non_padding", restore_callback_states_from_checkpoint=True,
        metric_for_best_model=task_metric(cfg["task"]), greater_is_better=True,
        logging_steps=max(1, min(10, every // 2)), report_to=report_to, run_name=run_id(cfg["task"], cfg["method"], cfg["seed"]),
        train_sampling_strategy="group_by_length", label_names=["labels"],
        bf16=precision(cfg) == "bf16-autocast", use_cpu=not cuda,
        dataloader_num_workers=0, disable_tqdm=False, remove_unused_columns=True,
    )
    kw.update(over)
    return TrainingArguments(**kw)


# ---------------------------------------------------------------------------------- store
def result_path(profile: str, rid: str) -> Path:
    return _result_path(profile, "run", unit=rid)


def model_dir(profile: str, rid: str) -> Path:
    return artifacts_dir(profile) / "models" / rid


def work_dir(profile: str, rid: str) -> Path:
    """A unit's working folder while it trains: ``checkpoints/``, ``config.json`` (whose checkpoints they are)
    and ``commit/`` (the new model and result, staged before they replace the old pair)."""
    return artifacts_dir(profile) / "runs" / rid


MARKER = "loradrift_unit.json"   # in a saved model's folder: the fingerprint its result records


def _model_marker(folder: Path) -> dict | None:
    """The marker of a model folder ({} when unreadable, None when the folder or its marker is absent)."""
    try:
        return read_json(folder / MARKER) if (folder / MARKER).exists() else None
    except LoraDriftError:
        return {}


def unit_status(prof: dict, task: str, method: str, seed: int) -> str:
    """``done``; ``stale`` (result made with another config); ``corrupt`` (result unreadable); ``staged`` (a
    new model and result are written and wait to replace the old pair: the next ``train`` commits them
    without training); ``mismatched`` (the model in artifacts/ is not the one the result records: it is
    re-trained); ``partial`` (resume checkpoints); ``missing``. A result without its model (a fresh
    clone: models are not committed) is done."""
    rid = run_id(task, method, seed)
    p = result_path(prof["name"], rid)
    work = work_dir(prof["name"], rid)
    if (work / "commit" / "result.json").exists():
        return "staged"
    if p.exists():
        try:
            rec = read_json(p)
        except LoraDriftError:
            return "corrupt"
        marker = _model_marker(model_dir(prof["name"], rid))
        if marker is not None and marker.get("fingerprint") != rec.get("model_fingerprint"):
            return "mismatched"
        return "done" if rec.get("config_hash") == config_hash(unit_config(prof, task, method, seed)) else "stale"
    return "partial" if any((work / "checkpoints").glob("checkpoint-*")) else "missing"


def load_runs(profile: str, subdir: str = "runs") -> list[dict]:
    """Every run result of a profile (in ``data/<profile>/<subdir>``), with its status against the
    current profile config; a result that cannot be read is named in a warning and left out."""
    prof = load_profile(profile)
    out = []
    for p in sorted((data_dir(prof["name"]) / subdir).glob("*.json")):
        rec = read_or(p)
        if rec is None:
            continue
        try:
            cfg = unit_config(prof, rec["task"], rec["method"], rec["seed"])
        except (KeyError, TypeError, LoraDriftError) as e:
            unreadable(f"{p} is not a run result of profile {prof['name']!r} ({type(e).__name__}: {e}); "
                       "shown without it")
            continue
        rec["status"] = "done" if rec.get("config_hash") == config_hash(cfg) else "stale"
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------- a unit
def train_unit(prof: dict | str, task: str, method: str, seed: int, force: bool = False,
               glue_source: str | None = None) -> dict:
    """Train and test one unit; skip it if its result is current; resume it if interrupted.

    One process at a time trains a unit (a lock names the holder). The new model and result are staged,
    then put in place model first, result last; a commit interrupted between the two is finished by the
    next run, so the model in artifacts/ and the result in data/ are always a pair (``unit_status``)."""
    prof = load_profile(prof) if isinstance(prof, str) else prof
    cfg = unit_config(prof, task, method, seed)
    rid = run_id(task, method, seed)
    out_json = result_path(prof["name"], rid)
    with lock(prof["name"], f"unit-{rid}", f"training {rid}"):
        _finish_commit(prof, rid)
        status = unit_status(prof, task, method, seed)
        if status == "done" and not force:
            print(f"[{rid}] result exists and is current: {out_json} (skipped)")
            return read_json(out_json)
        if status in ("stale", "corrupt", "mismatched"):
            why = {"stale": "was made with another config", "corrupt": "cannot be read",
                   "mismatched": f"does not record the model in {model_dir(prof['name'], rid)}"}[status]
            print(f"[{rid}] {status.upper()}: {out_json} {why}; re-training")
        _check_writable(prof, rid)
        previous = _previous(prof, rid) if status == "done" else None  # a forced re-run of the same config
        t0, started = time.perf_counter(), time.time()
        with tracking.unit_run(prof, cfg, fresh=force) as wb:
            trainer, enc, last = _fit(prof, cfg, force, glue_source, started)
            result = _score(prof, cfg, trainer, enc, last)
            result["wandb"] = None
            if previous:
                result["previous"] = previous
            _commit(prof, rid, trainer, result, t0)
            if wb is not None:  # the artifact is the model folder in place, so it is logged after the commit
                result["wandb"] = tracking.log_unit(wb, prof, cfg, model_dir(prof["name"], rid), result)
                write_json(out_json, result)
    print(f"[{rid}] test {task_metric(task)} = {result['test'][task_metric(task)]:.4f} -> {out_json}")
    return result


def _previous(prof: dict, rid: str) -> dict:
    """What a forced re-run of the same config replaces: when and how fast the earlier result was made, under
    what load and on how many cores, and the hash of its weight files (recorded, else read from its model
    folder before it is replaced, if that folder's marker names the result's model; None otherwise, as in a
    fresh clone). ``same_weights``, set at the commit: did the re-run save the same weights, bit for bit?
    (None when there was nothing to compare with.)"""
    old, folder = read_json(result_path(prof["name"], rid)), model_dir(prof["name"], rid)
    env = old.get("environment") or {}
    weights = old.get("weights_fingerprint")
    marker = _model_marker(folder)
    if weights is None and marker and old.get("model_fingerprint") and marker.get("fingerprint") == old["model_fingerprint"]:
        weights = weights_fingerprint(folder)
    return {"finished_at": old.get("finished_at"), "wall_time_s": old.get("wall_time_s"),
            "load_avg": env.get("load_avg"), "cpu_count": env.get("cpu_count"), "weights_fingerprint": weights}


def _check_writable(prof: dict, rid: str) -> None:
    """Before any training, and creating nothing: can this unit write its result, model and checkpoints?
    (A folder not there yet is made in the nearest one that is.)"""
    for folder in (result_path(prof["name"], rid).parent, model_dir(prof["name"], rid).parent,
                   work_dir(prof["name"], rid)):
        there = next(p for p in (folder, *folder.parents) if p.exists())
        try:
            if not there.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder")
            with tempfile.TemporaryFile(dir=there):
                pass
        except OSError as e:
            raise LoraDriftError(f"cannot write to {there} ({e.strerror or e}): make it a writable folder "
                                 f"(e.g. `chmod u+w {there}`), then run again; nothing was trained") from None


def _checkpoint_dir(prof: dict, rid: str, cfg: dict, force: bool) -> Path:
    """The unit's checkpoint folder, emptied when its checkpoints belong to another config."""
    work = work_dir(prof["name"], rid)
    ck_dir = work / "checkpoints"
    marker = work / "config.json"
    h = config_hash(cfg)
    if marker.exists() and (force or read_or(marker, {}).get("config_hash") != h):
        shutil.rmtree(ck_dir, ignore_errors=True)  # checkpoints of another config cannot be resumed
    write_json(marker, {"config_hash": h, "config": cfg})
    return ck_dir


def _resume_point(ck_dir: Path, rid: str) -> str | None:
    """The newest checkpoint that reads whole; each unusable one is deleted with one line saying so
    (a crash while a checkpoint is written leaves the previous one: the Trainer rotates only after it
    has written the new one)."""
    step = lambda p: int(p.name.rsplit("-", 1)[-1]) if p.name.rsplit("-", 1)[-1].isdigit() else -1  # noqa: E731
    found = sorted((p for p in ck_dir.glob("checkpoint-*") if p.is_dir()), key=step, reverse=True) \
        if ck_dir.exists() else []
    for i, ck in enumerate(found):
        problem = checkpoint_problem(ck)
        if problem is None:
            return str(ck)
        shutil.rmtree(ck, ignore_errors=True)
        left = [c.name for c in found[i + 1:]]
        print(f"[{rid}] discarded checkpoint {ck} ({problem}); "
              + (f"trying {left[0]}" if left else "no earlier checkpoint: the unit starts again"))
    return None


def _fit(prof: dict, cfg: dict, force: bool, glue_source, started: float | None = None):
    """Train with early stopping on the validation slice (resuming from the last usable checkpoint):
    (trainer holding the best checkpoint's weights, encoded splits, the checkpoint resumed from)."""
    from transformers import EarlyStoppingCallback
    task, rid = cfg["task"], run_id(cfg["task"], cfg["method"], cfg["seed"])
    splits = study_splits(prof, task, glue_source, unit=cfg)  # data and model first: a bad input leaves no folder behind
    model, tok = build_for_training(prof, cfg["method"], cfg["training"], cfg["seed"])
    enc = {k: tokenize(task, v, tok, int(prof["data"]["max_length"])) for k, v in splits.items()}
    if get_task(task).b is not None:   # the original's re-evaluation format of its full-FT models (claim 6)
        enc["test_original"] = tokenize_original_eval(task, splits["test"], tok)
    for k in [k for k in enc if k != "train"]:  # evaluation order does not matter: sort by length, pad little
        enc[k] = enc[k].sort("length")
    ck_dir = _checkpoint_dir(prof, rid, cfg, force)
    args = training_arguments(prof, cfg, ck_dir, len(enc["train"]), [])  # wandb: the unit's run, tracking.py
    trainer = counting_trainer_class()(
        started_at=started, model=model, args=args, train_dataset=enc["train"], eval_dataset=enc["validation"],
        data_collator=make_collator(tok), processing_class=tok, compute_metrics=_compute_metrics,
        callbacks=[EarlyStoppingCallback(int(cfg["training"].get("early_stopping_patience", 2))),
                   *tracking.trainer_callbacks()])
    trainer.best = best = best_weights(model, args.metric_for_best_model, args.greater_is_better)
    trainer.add_callback(best)
    if not cfg["training"].get("eval_at_end", True):
        trainer.add_callback(_no_eval_at_end())
    last = _resume_point(ck_dir, rid)
    if last:
        print(f"[{rid}] resuming from {last}")
        if "wall_seconds" not in (checkpoint_counters(last) or {}):
            print(f"[{rid}] {last} was written before checkpoints carried the unit's wall time: its result will "
                  "count this process's wall time only")
        best.resume(last)
    trainer.train_output = trainer.train(resume_from_checkpoint=last)
    best.restore()  # the best evaluation's weights, as a unit keeps them
    for cb in (EarlyStoppingCallback, best):  # they only watch evaluations made during training
        trainer.remove_callback(cb)
    return trainer, enc, last


def _class_shares(logits) -> dict:
    """The share of test predictions in the positive class and in the model's most predicted class
    (1.0: the model answers one class for every example)."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    pos = float((np.asarray(logits).argmax(-1) == 1).mean())
    return {"positive_share": pos, "top_class_share": max(pos, 1 - pos)}


def _original_eval(trainer, enc: dict) -> dict | None:
    """Test metrics in the original study's re-evaluation format (`data.tokenize_original_eval`), for a
    pair task; None for a single-sentence task (the formats are the same there)."""
    if "test_original" not in enc:
        return None
    pred = trainer.predict(enc["test_original"], metric_key_prefix="test")
    m = pred.metrics
    return {"accuracy": m["test_accuracy"], "f1": m["test_f1"], "loss": m["test_loss"],
            "n": len(enc["test_original"]), **_class_shares(pred.predictions)}


def _best_validation(trainer) -> dict | None:
    """The validation metrics of the kept weights, as their evaluation during training logged them (the same
    weights on the same slice: re-evaluating them would repeat a whole pass); None when no evaluation ran."""
    step = trainer.best.step
    row = next((r for r in reversed(trainer.state.log_history) if r.get("step") == step and "eval_loss" in r), None)
    return None if row is None else {f"validation_{k}": row[f"eval_{k}"] for k in ("accuracy", "f1", "loss")}


def _score(prof: dict, cfg: dict, trainer, enc: dict, last) -> dict:
    """Score the kept (best) weights on the test split (their validation metrics are those of the evaluation
    that chose them): the unit's result record (every count covers the whole unit, resumed or not)."""
    task, rid = cfg["task"], run_id(cfg["task"], cfg["method"], cfg["seed"])
    val = _best_validation(trainer)
    if val is None:
        val = trainer.evaluate(enc["validation"], metric_key_prefix="validation")
    else:
        trainer.log(dict(val))   # logged as a re-evaluation logs them (the wandb run's validation/* history)
    pred = trainer.predict(enc["test"], metric_key_prefix="test")
    test, shares = pred.metrics, _class_shares(pred.predictions)
    hist, state = trainer.state.log_history, trainer.state
    real, padded, step_s = trainer.tokens_real, trainer.tokens_padded, trainer.step_seconds
    return {
        "id": rid, "task": task, "method": cfg["method"], "seed": int(cfg["seed"]), "profile": prof["name"],
        "test": {"accuracy": test["test_accuracy"], "f1": test["test_f1"], "loss": test["test_loss"],
                 "n": len(enc["test"]), **shares},
        "test_original_eval": _original_eval(trainer, enc),
        "validation": {"accuracy": val["validation_accuracy"], "f1": val["validation_f1"],
                       "loss": val["validation_loss"], "n": len(enc["validation"]),
                       "metric": task_metric(task), "best": trainer.best.best,
                       "best_step": trainer.best.step},
        "curves": {
            "train": [{"step": r["step"], "epoch": r.get("epoch"), "loss": r["loss"]} for r in hist if "loss" in r],
            "validation": [{"step": r["step"], "epoch": r.get("epoch"), "loss": r["eval_loss"],
                            "accuracy": r.get("eval_accuracy"), "f1": r.get("eval_f1")}
                           for r in hist if "eval_loss" in r]},
        "train_loss": trainer.train_loss,
        "steps": int(state.global_step), "epochs": float(state.epoch or 0),
        "early_stopped": state.global_step < state.max_steps,
        "resumed_from": last,
        "train_runtime_s": float(trainer.counters.train_seconds),
        "wall_time_s": None,
        "train_tokens_real": int(real), "train_tokens_padded": int(padded),
        "pad_fraction": 1 - real / padded if padded else None,
        "train_step_s": step_s,
        "tokens_per_s": real / step_s if step_s else None,
        "params": parameter_counts(trainer.model),
        "precision": precision(cfg),
        "weights_dtype": str(next(trainer.model.parameters()).dtype).removeprefix("torch."),
        "n_train": len(enc["train"]),
        "model_fingerprint": None,
        "config": cfg, "config_hash": config_hash(cfg), "environment": environment(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _commit(prof: dict, rid: str, trainer, result: dict, t0: float) -> None:
    """Stage the new pair (the model, marked with its fingerprint, and the result recording it) in the unit's
    work folder, then put it in place (``_finish_commit``). A crash before the staged result is written
    leaves the old pair (and the checkpoints: the unit resumes); after it, the next run finishes the commit."""
    stage = work_dir(prof["name"], rid) / "commit"
    shutil.rmtree(stage, ignore_errors=True)
    trainer.model.save_pretrained(stage / "model")
    trainer.processing_class.save_pretrained(stage / "model")
    _canonical_adapter_config(stage / "model")
    result["model_fingerprint"] = fingerprint = folder_fingerprint(stage / "model")
    result["weights_fingerprint"] = weights = weights_fingerprint(stage / "model")
    if result.get("previous"):
        before = result["previous"]["weights_fingerprint"]
        result["previous"]["same_weights"] = None if before is None else before == weights
    write_json(stage / "model" / MARKER, {"id": rid, "fingerprint": fingerprint,
                                          "result": str(result_path(prof["name"], rid))})
    # a resumed unit's wall time includes what its earlier processes spent up to the checkpoint it resumed from
    result["wall_time_s"] = time.perf_counter() - t0 + trainer.counters.carried_wall
    write_json(stage / "result.json", result)
    _finish_commit(prof, rid, recovering=False)


def _canonical_adapter_config(folder: Path) -> None:
    """peft writes an adapter's target modules (a set) in the process's hash order: sorted, the same adapter
    saves the same files, and the folder's fingerprint names the model."""
    path = folder / "adapter_config.json"
    if path.exists():
        cfg = read_json(path)
        if isinstance(cfg.get("target_modules"), list):
            cfg["target_modules"] = sorted(cfg["target_modules"])
            write_text(path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")  # peft's layout, sorted


def _finish_commit(prof: dict, rid: str, recovering: bool = True) -> bool:
    """Put a staged pair in place: the model first, then the result; then drop the work folder. Run again after
    a crash at any point, it finishes the same commit (True when it committed one). A staging without its
    result (a crash while staging) is dropped: the old pair was never touched."""
    work = work_dir(prof["name"], rid)
    stage, dest, out_json = work / "commit", model_dir(prof["name"], rid), result_path(prof["name"], rid)
    staged = read_or(stage / "result.json") if stage.exists() else None
    if staged is None:
        shutil.rmtree(stage, ignore_errors=True)
        return False
    if (stage / "model").exists():
        replace_dir(stage / "model", dest)
    elif (_model_marker(dest) or {}).get("fingerprint") != staged.get("model_fingerprint"):
        print(f"[{rid}] dropped a staged result whose model is gone ({stage})")
        shutil.rmtree(stage, ignore_errors=True)
        return False
    try:
        write_json(out_json, staged)
    except OSError as e:
        raise LoraDriftError(f"could not write {out_json} ({e.strerror or e}): the new model is in {dest} and its "
                             f"result waits in {stage / 'result.json'}; make {out_json.parent} writable and run "
                             "`train` again to finish") from None
    shutil.rmtree(work, ignore_errors=True)  # checkpoints, config marker, staging
    if recovering:
        print(f"[{rid}] finished an interrupted commit: {dest} and {out_json}")
    return True


def train_all(prof: dict | str, tasks=None, methods=None, seeds=None, glue_source=None) -> list[dict]:
    prof = load_profile(prof) if isinstance(prof, str) else prof
    todo = units(prof, tasks, methods, seeds)
    out = []
    for i, (t, m, s) in enumerate(todo, 1):
        print(f"=== unit {i}/{len(todo)}: {run_id(t, m, s)} ({unit_status(prof, t, m, s)})")
        out.append(train_unit(prof, t, m, s, glue_source=glue_source))
    return out


# ---------------------------------------------------------------------------------- checks
def sanity_task(prof: dict) -> str:
    """The task the sanity check fits: ``sanity.task``, else the profile's first task (its primary task
    in the `cpu` design: SST-2's short examples make the check a matter of seconds)."""
    return prof["sanity"].get("task") or prof["tasks"][0]


def sanity_check(prof: dict | str, method: str, task: str | None = None, glue_source=None) -> dict:
    """Can the method fit 10 training examples? Training loss must fall below 0.1."""
    from transformers import Trainer
    prof = load_profile(prof) if isinstance(prof, str) else prof
    s = prof["sanity"]
    task = task or sanity_task(prof)
    cfg = unit_config(prof, task, method, 0)
    splits = study_splits(prof, task, glue_source)
    small = splits["train"].select(range(int(s["n_examples"])))
    model, tok = build_for_training(prof, method, cfg["training"], 0)
    enc = tokenize(task, small, tok, int(prof["data"]["max_length"]))
    args = training_arguments(prof, cfg, artifacts_dir(prof["name"]) / "sanity" / method, len(enc), [],
                              learning_rate=float(s["learning_rate"][method]), max_steps=int(s["steps"]),
                              per_device_train_batch_size=len(enc), gradient_accumulation_steps=1,
                              warmup_steps=0, weight_decay=0.0, lr_scheduler_type="constant",
                              eval_strategy="no", save_strategy="no", load_best_model_at_end=False,
                              logging_steps=1, train_sampling_strategy="random", disable_tqdm=True)
    t0 = time.perf_counter()
    trainer = Trainer(model=model, args=args, train_dataset=enc, data_collator=make_collator(tok),
                      callbacks=[_stop_when_fit(float(s.get("threshold", 0.1)))])
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"method": method, "task": task, "n_examples": len(enc), "steps": int(s["steps"]),
            "steps_run": int(trainer.state.global_step),
            "learning_rate": float(s["learning_rate"][method]), "losses": losses,
            "final_loss": losses[-1], "passed": bool(min(losses[-3:]) < float(s.get("threshold", 0.1))),
            "seconds": time.perf_counter() - t0, "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def baselines(prof: dict | str, glue_source=None, n_random: int = 1000) -> list[dict]:
    """Majority-class and uniform-random predictors on the test split."""
    prof = load_profile(prof) if isinstance(prof, str) else prof
    rows = []
    rng = np.random.default_rng(0)
    for task in prof["tasks"]:
        sp = study_splits(prof, task, glue_source)
        y = np.array(sp["test"]["label"])
        majority = int(np.bincount(sp["train"]["label"]).argmax())
        onehot = np.eye(2)[np.full_like(y, majority)]
        rows.append({"task": task, "baseline": "majority", **classification_metrics(onehot, y)})
        draws = [classification_metrics(np.eye(2)[rng.integers(0, 2, len(y))], y) for _ in range(n_random)]
        rows.append({"task": task, "baseline": "random",
                     "accuracy": float(np.mean([d["accuracy"] for d in draws])),
                     "f1": float(np.mean([d["f1"] for d in draws]))})
    return rows
