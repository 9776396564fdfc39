"""Profiles: the settings of one scale of the study, as layered YAML data, checked when loaded.

A *profile* (``cpu``, ``l4``) is a YAML file in ``loradrift/profiles``. It ``extends`` a layer
(``_base.yaml``) and states only what differs: mappings merge key by key, lists and values replace.
Methods are data too (``methods:``, each with a registered ``kind``); a method may ``extend``
another, so a LoRA rank variant is ``lora-r64: {extends: lora, lora_r: 64}``.
"""
from __future__ import annotations

import copy
import os
import platform
from pathlib import Path
from typing import Any

import yaml

from . import LoraDriftError
from .store import key

PROFILE_DIR = Path(__file__).parent / "profiles"

# keys every profile must have after its layers are merged (dotted paths), and their types
REQUIRED = {
    "name": str, "model.name_or_path": str, "model.dtype": str, "data.max_length": int, "data.split_seed": int,
    "data.tasks": dict, "tasks": list, "methods": dict, "seeds": list,
    "training.common.per_device_train_batch_size": int, "training.common.per_device_eval_batch_size": int,
}
# keys a profile may leave out, and their types where it has them (None: the key may be null)
OPTIONAL = {
    "data.test_size": (int, None), "data.train_subset": (str,), "run.checkpoint_every_evals": (int,),
    "study": (dict,), "recorded_as": (str,), "interim": (str,),
    "training.common.gradient_accumulation_steps": (int,), "training.common.evals_per_epoch": (int,),
    "training.common.early_stopping_patience": (int,), "training.common.max_grad_norm": (int, float),
}
TASK_SIZES = {"validation_size": (int,), "train_size": (int, None)}   # data.tasks.<task>
GROUP_KEYS = {"tasks": (list,), "methods": (list,), "seeds": (list, int), "drift": (bool,), "train_sizes": (list,)}
METHOD_REQUIRED = {"kind": str, "learning_rate": (int, float), "num_train_epochs": (int, float),
                   "warmup_ratio": (int, float), "weight_decay": (int, float)}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml") if not p.name.startswith("_"))


def active_profile(explicit: str | None = None) -> str:
    """The profile named explicitly, else by QUARTO_PROFILE (first known entry), else ``cpu``."""
    if explicit:
        return explicit
    for name in os.environ.get("QUARTO_PROFILE", "").split(","):
        if name.strip() in available_profiles():
            return name.strip()
    return "cpu"


def profile_file(name: str) -> Path:
    """The YAML file of a profile name (or the path itself, for a .yaml path)."""
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"
    if not path.exists():
        raise LoraDriftError(f"unknown profile {path.stem!r}: choose one of {available_profiles()} "
                             f"(or add {path.name} to {PROFILE_DIR})")
    return path


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge recursively; anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _read_layers(path: Path, seen=()) -> dict:
    if path in seen:
        raise LoraDriftError(f"{path}: `extends` loops back to itself")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise LoraDriftError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)}); fix the file") from None
    if not isinstance(doc, dict):
        raise LoraDriftError(f"{path}: a profile is a YAML mapping of settings")
    parents = doc.pop("extends", None) or []
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        ppath = (path.parent / parent).with_suffix(".yaml")
        if not ppath.exists():
            raise LoraDriftError(f"{path}: extends {parent!r}, but {ppath} does not exist")
        merged = merge(merged, _read_layers(ppath, (*seen, path)))
    return merge(merged, doc)


def resolve_methods(methods: dict, where: str) -> dict:
    """Each method's settings with its ``extends`` chain applied (a variant inherits its parent's)."""
    def one(name, chain=()):
        if name in chain:
            raise LoraDriftError(f"{where}: method {name!r} extends itself")
        if name not in methods:
            raise LoraDriftError(f"{where}: method {chain[-1]!r} extends {name!r}, which is not a method")
        m = dict(methods[name] or {})
        parent = m.pop("extends", None)
        return merge(one(parent, (*chain, name)), m) if parent else m
    return {name: one(name) for name in methods}


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            raise KeyError(dotted)
        d = d[part]
    return d


def validate(prof: dict, where: str) -> dict:
    """Every missing or mistyped key of a merged profile, named with its file, before any model loads."""
    from .methods import KINDS
    from .tasks import get_task
    problems = []
    for dotted, typ in REQUIRED.items():
        try:
            v = _get(prof, dotted)
        except KeyError:
            problems.append(f"missing {dotted}")
            continue
        if not _is(v, (typ,)):
            problems.append(f"{dotted} should be {typ.__name__}, not {type(v).__name__}")
    for dotted, types in OPTIONAL.items():
        try:
            v = _get(prof, dotted)
        except KeyError:
            continue
        if not _is(v, types):
            problems.append(f"{dotted} should be {_names(types)}, not {v!r}")
    if problems:
        raise LoraDriftError(f"profile {where}: " + "; ".join(problems))
    for t in prof["tasks"]:
        get_task(t)
        sizes = prof["data"]["tasks"].get(t)
        if t not in prof["data"]["tasks"]:
            problems.append(f"missing data.tasks.{t} (its train_size and validation_size)")
        elif not isinstance(sizes, dict):
            problems.append(f"data.tasks.{t} should be a mapping {{train_size: ..., validation_size: ...}}, "
                            f"not {sizes!r}")
        else:
            problems += [f"missing data.tasks.{t}.validation_size"] if "validation_size" not in sizes else []
            problems += [f"data.tasks.{t}.{k} should be {_names(types)}, not {sizes[k]!r}"
                         for k, types in TASK_SIZES.items() if k in sizes and not _is(sizes[k], types)]
    for m, s in prof["methods"].items():
        for k, typ in METHOD_REQUIRED.items():
            if k not in s:
                problems.append(f"method {m} lacks {k}")
            elif not isinstance(s[k], typ):
                problems.append(f"method {m}: {k} should be a {getattr(typ, '__name__', 'number')}")
        if s.get("kind") in KINDS:
            problems += [f"method {m} ({s['kind']}) lacks {k}" for k in KINDS[s["kind"]].required if k not in s]
        elif "kind" in s:
            problems.append(f"method {m}: unknown kind {s['kind']!r} (one of {list(KINDS)})")
    problems += _group_problems(prof)
    if problems:
        raise LoraDriftError(f"profile {where}: " + "; ".join(problems))
    if "drift" in prof:   # the drift settings (pre-registered endpoints included) are checked when the profile loads
        from .drift.settings import drift_config
        drift_config(prof)
    return prof


def _group_problems(prof: dict) -> list[str]:
    """What is wrong with the profile's ``study:`` groups (unknown tasks, methods or keys, too many seeds)."""
    problems = []
    for g, spec in (prof.get("study") or {}).items():
        if not isinstance(spec, dict):
            problems.append(f"study.{g} should be a mapping {{tasks, methods, seeds, drift, train_sizes}}")
            continue
        problems += [f"study.{g}: unknown key {k!r} (one of {list(GROUP_KEYS)})" for k in spec if k not in GROUP_KEYS]
        problems += [f"study.{g}.{k} should be {_names(t)}, not {spec[k]!r}"
                     for k, t in GROUP_KEYS.items() if k in spec and not _is(spec[k], t)]
        problems += [f"study.{g}: task {t!r} is not in the profile's tasks {prof['tasks']}"
                     for t in spec.get("tasks") or () if t not in prof["tasks"]]
        problems += [f"study.{g}: method {m!r} is not one of the profile's methods {list(prof['methods'])}"
                     for m in spec.get("methods") or () if m not in prof["methods"]]
        n = spec.get("seeds")
        if isinstance(n, int) and not 1 <= n <= len(prof["seeds"]):
            problems.append(f"study.{g}.seeds is {n}: a count between 1 and the {len(prof['seeds'])} seeds listed")
    return problems


def _is(v, types) -> bool:
    """Is ``v`` of one of ``types`` (None in ``types``: may be null; a bool is not a number)?"""
    if v is None:
        return None in types
    if isinstance(v, bool):
        return bool in types
    return isinstance(v, tuple(t for t in types if t is not None))


def _names(types) -> str:
    return " or ".join("null" if t is None else t.__name__ for t in types)


def load_profile(name: str | dict | None = None) -> dict[str, Any]:
    """A profile, merged from its layers, its methods resolved, and checked."""
    if isinstance(name, dict):
        return name
    path = profile_file(active_profile(name))
    prof = _read_layers(path)
    prof["name"] = path.stem
    # the name a unit's config records (not inherited: a profile renamed after its units were trained
    # states its old name here, so its results stay current)
    prof["recorded_as"] = (yaml.safe_load(path.read_text()) or {}).get("recorded_as") or path.stem
    if isinstance(prof.get("methods"), dict):
        prof["methods"] = resolve_methods(prof["methods"], str(path))
        prof["methods"].update(size_variants(prof))
    prof["_file"] = str(path)
    return validate(prof, str(path))


def check_task(prof: dict, task: str) -> str:
    from .tasks import get_task
    get_task(task)
    if task not in prof["tasks"]:
        raise LoraDriftError(f"task {task!r} is not in profile {prof['name']!r}: choose one of {prof['tasks']}")
    return task


def check_method(prof: dict, method: str) -> str:
    if method not in prof["methods"]:
        raise LoraDriftError(f"unknown method {method!r}: choose one of {list(prof['methods'])}")
    return method


def searched_values(prof: dict, task: str, method: str) -> dict[str, Any]:
    """The values a search chose for one task x method (``training.per_task``); {} when it has none."""
    return ((prof["training"].get("per_task") or {}).get(task) or {}).get(method) or {}


def training_settings(prof: dict, method: str, task: str | None = None) -> dict[str, Any]:
    """Training settings: the common ones, then the method's, then (given a task) the values searched for it."""
    settings = {k: v for k, v in prof["methods"][check_method(prof, method)].items() if k != "kind"}
    return {**prof["training"]["common"], **settings, **(searched_values(prof, task, method) if task else {})}


def unit_config(prof: dict, task: str, method: str, seed: int) -> dict[str, Any]:
    """Everything that determines one training unit's result (recorded with it, hashed for staleness).

    A method's ``kind`` is recorded when it differs from the method's name (``lora-r64`` is a ``lora``)."""
    check_task(prof, task)
    training = training_settings(prof, method, task)
    sizes = dict(prof["data"]["tasks"][task])
    if "train_size" in training:   # a learning-curve variant (`study.<group>.train_sizes`)
        sizes["train_size"] = int(training.pop("train_size"))
    cfg = {
        "profile": prof.get("recorded_as", prof["name"]), "task": task, "method": method, "seed": int(seed),
        "model": copy.deepcopy(prof["model"]),
        "data": {k: v for k, v in prof["data"].items() if k not in ("tasks", "source")} | {"sizes": sizes},
        "training": training,
    }
    if prof["methods"][method]["kind"] != method:
        cfg["kind"] = prof["methods"][method]["kind"]
    return cfg


def config_hash(cfg: dict) -> str:
    return key(cfg)


def run_id(task: str, method: str, seed: int) -> str:
    """A unit's id: ``<task>-<method>-s<seed>``; the method name carries any variant (``lora-r64``)."""
    return f"{task}-{method}-s{seed}"


def size_variant(method: str, size: int) -> str:
    """The name of a method trained on ``size`` examples (a learning-curve point): ``full-n500``."""
    return f"{method}-n{int(size)}"


def size_variants(prof: dict) -> dict:
    """The methods that ``study.<group>.train_sizes`` implies: each group method at each size."""
    out = {}
    for spec in (prof.get("study") or {}).values():
        for m in (spec or {}).get("methods") or ():
            for n in (spec or {}).get("train_sizes") or ():
                if m in prof["methods"]:
                    out[size_variant(m, n)] = {**prof["methods"][m], "train_size": int(n)}
    return out


def study_groups(prof: dict) -> dict[str, dict]:
    """The study's groups of units, in the order they run, each {tasks, methods, seeds (a list), drift,
    train_sizes}. A profile without ``study:`` has one group: every task x method x seed."""
    groups = prof.get("study") or {"all": {}}
    out = {}
    for g, spec in groups.items():
        n = spec.get("seeds")
        seeds = prof["seeds"][:n] if isinstance(n, int) else (n or prof["seeds"])
        out[g] = {"tasks": list(spec.get("tasks") or prof["tasks"]), "methods": list(spec.get("methods") or prof["methods"]),
                  "seeds": [int(s) for s in seeds], "drift": bool(spec.get("drift", True)),
                  "train_sizes": list(spec.get("train_sizes") or [])}
    return out


def group_units(prof: dict, group: dict) -> list[tuple[str, str, int]]:
    """One group's units, task by task (a task's results are complete early). With ``train_sizes``,
    each size is a method variant (``full-n500``), except the task's own train size: that is the plain method."""
    out = []
    for t in group["tasks"]:
        own = prof["data"]["tasks"][t].get("train_size")
        methods = [m if n == own else size_variant(m, n) for n in group["train_sizes"] for m in group["methods"]] \
            if group["train_sizes"] else group["methods"]
        out += [(t, m, s) for s in group["seeds"] for m in methods]
    return out


def units(prof: dict, tasks=None, methods=None, seeds=None) -> list[tuple[str, str, int]]:
    """The study's units in the order they run (group by group, see `study_groups`), each once;
    ``tasks``/``methods``/``seeds`` select among them."""
    for t in tasks or ():
        check_task(prof, t)
    for m in methods or ():
        check_method(prof, m)
    seen, out = set(), []
    for g in study_groups(prof).values():
        for u in group_units(prof, g):
            if u not in seen and (not tasks or u[0] in tasks) and (not methods or u[1] in methods) \
                    and (not seeds or u[2] in {int(s) for s in seeds}):
                seen.add(u)
                out.append(u)
    if not out and (tasks or methods or seeds):
        raise LoraDriftError(f"no unit of profile {prof['name']!r} has task {tasks or 'any'}, method {methods or 'any'} "
                             f"and seed {seeds or 'any'}: see its study groups (`study:`) for the units it trains")
    return out


def drift_units(prof: dict, task: str) -> list[tuple[str, str, int]]:
    """(run id, method, seed) of the task's units whose drift is measured (groups with ``drift: true``)."""
    seen: dict = {}
    for g in study_groups(prof).values():
        if g["drift"]:
            for t, m, s in group_units(prof, g):
                if t == task:
                    seen.setdefault((m, s), len(seen))
    order = list(prof["methods"])   # method by method, each in its seeds' order
    return [(run_id(task, m, s), m, s) for m, s in sorted(seen, key=lambda u: (order.index(u[0]), seen[u]))]


def environment() -> dict[str, Any]:
    """Hardware and software a result came from."""
    import importlib.metadata as md

    import torch
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")},
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # other work on the machine slows CPU timings: the 1/5/15-minute load averages say how much
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {},
    }
    for pkg in ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "safetensors", "numpy",
                "scipy", "optuna", "wandb", "loradrift"):
        try:
            env["versions"][pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env["versions"][pkg] = None
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
