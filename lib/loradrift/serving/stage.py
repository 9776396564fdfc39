"""The deployment stage of a profile: the trained units it serves, the key that says whether its
results are current, and the run (settings: ``settings``, the profile's ``deploy:`` section).

Currency: ``deployment_meta.json`` records ``key`` = ``store.key(deploy_settings(...))``: the timing
settings (threads, repeats, warm-up, bootstrap, seed, every comparison's streams, modes, batch sizes
and windows; the device), the tasks, and every served unit's config hash and finish time.
``store.is_current`` compares it with the key the profile gives now.
"""
from __future__ import annotations

import time
from pathlib import Path

from .. import LoraDriftError
from ..store import IDENTITY, RESULTS, is_current, key, read_json, read_or, result_path, unit_identity
from .analysis import frames as result_frames
from .engine import DESIGN, FILES, Bench, loadavg, plan_points, requests_needed, run_record, tolerance, write_results
from .memory import weight_file_bytes
from .modes import needed_kinds
from .requests import real_requests
from .settings import all_modes, deploy_config, served_methods
from .sources import TrainedSource


def unit_results(prof: dict, tasks, seed: int, methods: dict | None = None) -> dict:
    """{(method, task): test accuracy, F1, n and the unit's identity (`store.unit_identity`)} of the served units
    that exist."""
    from ..config import run_id
    methods = methods or served_methods(prof)
    out = {}
    for t in tasks:
        for m in methods.values():
            rec = read_or(result_path(prof["name"], "run", unit=run_id(t, m, seed)))
            if rec is not None:
                out[(m, t)] = {"accuracy": rec["test"]["accuracy"], "f1": rec["test"]["f1"], "n": rec["test"]["n"],
                               **unit_identity(rec)}
    return out


_unit_results = unit_results   # the name tests/test_drift.py uses


def deploy_settings(cfg: dict, tasks, units: dict) -> dict:
    """Everything that changes the benchmark's result (``units``: {"<method>/<task>": record}): a served unit
    with another identity (`store.unit_identity`: another config hash or other weights) changes it."""
    return {"config": cfg, "tasks": list(tasks),
            "units": {n: {k: u.get(k) for k in IDENTITY if k in u} for n, u in units.items()}}


def outdated_units(prof: dict, meta: dict) -> list[str]:
    """Units a committed benchmark served that have since changed identity (`store.unit_identity`: another config
    or other weights; a record with other identity fields counts as changed) or been removed (empty: current)."""
    seed = int(meta.get("seed", prof["seeds"][0]))
    now = {f"{m}/{t}": u for (m, t), u in unit_results(prof, meta.get("tasks", []), seed).items()}
    same = lambda a, b: all(a.get(k) == b.get(k) for k in IDENTITY)  # noqa: E731
    return sorted(k for k, u in (meta.get("units") or {}).items() if not same(now.get(k) or {}, u))


def _unit_dirs(prof: dict, tasks, seed: int, methods: dict) -> tuple[dict, list[str]]:
    """{task: {kind: model folder}} of the tasks whose served units all exist, and the tasks missing some."""
    from ..config import run_id
    from ..train import model_dir
    dirs, missing = {}, []
    for t in tasks:
        paths = {k: model_dir(prof["name"], run_id(t, m, seed)) for k, m in methods.items()}
        if all(p.exists() for p in paths.values()):
            dirs[t] = paths
        else:
            missing.append(t)
    return dirs, missing


def plan_deploy(prof: dict, tasks=None, **overrides) -> dict:
    """What a run serves: the timing settings, the tasks, the served method of each kind the modes need,
    their units' records ({"<method>/<task>": record}, from the committed run records) and the key."""
    cfg = deploy_config(prof, **overrides)
    methods = served_methods(prof, needed_kinds(all_modes(cfg)))
    plan = {"config": cfg, "seed": int(cfg["seed"]), "methods": methods, "missing": [], "dirs": {}}
    return _for_tasks(prof, plan, list(tasks or prof["tasks"]))


def _for_tasks(prof: dict, plan: dict, tasks: list[str]) -> dict:
    units = {f"{m}/{t}": u for (m, t), u in unit_results(prof, tasks, plan["seed"], plan["methods"]).items()}
    return {**plan, "tasks": tasks, "units": units, "key": key(deploy_settings(plan["config"], tasks, units))}


def locate_units(prof: dict, plan: dict) -> dict:
    """The plan narrowed to the tasks whose served units' model folders exist (``dirs`` {task: {kind:
    folder}}; ``missing`` the other tasks)."""
    dirs, missing = _unit_dirs(prof, plan["tasks"], plan["seed"], plan["methods"])
    if not dirs:
        raise LoraDriftError(f"no trained models for seed {plan['seed']} of tasks {plan['tasks']} in profile "
                             f"{prof['name']}: train them first (`python -m loradrift train --profile "
                             f"{prof['name']} --seed {plan['seed']}`)")
    return {**_for_tasks(prof, plan, [t for t in plan["tasks"] if t in dirs]), "dirs": dirs, "missing": missing}


def storage_rows(base_path, dirs: dict) -> list[dict]:
    """On-disk size of the base model and of each task's deployed units."""
    what = {"full": "full fine-tuned model", "lora": "LoRA adapter (incl. score head)"}
    rows = [{"artifact": "base model", "task": "", "bytes": weight_file_bytes(Path(base_path)), "source": "files"}]
    for t, paths in dirs.items():
        rows += [{"artifact": what[k], "task": t, "source": "files", "bytes": weight_file_bytes(p)}
                 for k, p in sorted(paths.items())]
    return rows


def results_current(prof: dict, meta: dict) -> bool:
    """Were the committed results made with the profile's settings and units, for the tasks they served?"""
    plan = plan_deploy(prof, meta.get("tasks") or None)
    tables = [result_path(prof["name"], "deploy_table", table=t) for t in FILES]
    return is_current(result_path(prof["name"], "deploy_meta"), plan["key"], companions=tables)


def run_deploy(prof: dict | str, tasks=None, glue_source=None, force: bool = False, log=print, **overrides) -> dict:
    """The deployment benchmark of a profile's trained units (seed ``cfg['seed']``, default the first).

    Skips when ``deployment_meta.json`` is current (same key; ``force=True`` re-runs). Keyword overrides
    of the deploy section: repeats, seed, bootstrap, threads, warmup, comparisons. Returns {"out_dir",
    "skipped", "meta"}."""
    from ..config import load_profile
    prof = load_profile(prof) if isinstance(prof, str) else prof
    meta_path = result_path(prof["name"], "deploy_meta")
    tables = [meta_path.parent / RESULTS["deploy_table"].format(table=n) for n in FILES]
    current = lambda p: is_current(meta_path, p["key"], companions=tables)  # noqa: E731
    plan = plan_deploy(prof, tasks, **overrides)
    if force or not current(plan):  # the model folders are needed only to run (a run may have served fewer tasks)
        plan = locate_units(prof, plan)
    if not force and current(plan):
        log(f"deployment results are current: {meta_path} (skipped; force=True re-runs)")
        return {"out_dir": meta_path.parent, "skipped": True, "meta": read_json(meta_path)}
    if plan["missing"]:
        log(f"WARNING: no trained models for {plan['missing']} (seed {plan['seed']}); benchmarking {plan['tasks']} only")
    frames, meta = _benchmark(prof, plan, glue_source, log)
    write_results(meta_path.parent, frames, meta)
    log(f"deployment results -> {meta_path.parent} ({meta['wall_time_s']:.0f} s)")
    return {"out_dir": meta_path.parent, "skipped": False, "meta": meta}


def _benchmark(prof: dict, plan: dict, glue_source, log) -> tuple[dict, dict]:
    """Serve the plan: its tables and its meta record."""
    from ..models import DTYPES
    t_start, load_before = time.perf_counter(), loadavg()
    cfg, tasks, dtype = plan["config"], plan["tasks"], prof["model"].get("dtype", "float32")
    max_len = int(prof["data"]["max_length"])
    source = TrainedSource(prof, plan["dirs"], plan["methods"], cfg["device"], max_len)
    pools = {t: source.requests(real_requests(prof, t, requests_needed(cfg), glue_source)) for t in tasks}
    labels = {r.uid: r.label for rs in pools.values() for r in rs}
    log(f"deploy {prof['name']}: tasks {tasks}, seed {plan['seed']}, comparisons {list(cfg['comparisons'])}, "
        f"{cfg['repeats']} repeats, threads {cfg.get('threads')} on {cfg['device']}")
    bench = Bench(source, pools, cfg, log).run(plan_points(cfg, tasks))
    by_kind = {(k, t): plan["units"].get(f"{m}/{t}", {}) for k, m in plan["methods"].items() for t in tasks}
    frames = result_frames(bench, storage_rows(source.base_path, plan["dirs"]), tolerance(DTYPES[dtype]), labels,
                           by_kind)
    return frames, {"kind": "trained models", "design": DESIGN, "profile": prof["name"], "key": plan["key"],
                    "device": cfg["device"], "config": cfg, "tasks": tasks, "tasks_missing": plan["missing"],
                    "seed": plan["seed"], "dtype": dtype, "max_length": max_len,
                    "base_model": prof["model"]["name_or_path"], "methods": plan["methods"], "units": plan["units"],
                    "shape": source.shape(), "n_pool_requests": {t: len(v) for t, v in pools.items()},
                    **run_record(load_before, t_start, bench)}
