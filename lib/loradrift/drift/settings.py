"""The drift stage's settings: a profile's ``drift:`` section over the defaults in ``_base.yaml``, checked.

Every default lives in ``lib/loradrift/profiles/_base.yaml`` (``drift:``); a profile changes what it
needs (``cpu.yaml``: fewer bootstrap replicates). A profile given as a plain dict (the tests' tiny
profiles) gets the same defaults.
"""
from __future__ import annotations

import functools

import yaml

from .. import LoraDriftError
from ..config import PROFILE_DIR, merge
from .extract import POOLINGS
from .measures import MEASURES

# settings only the seed-level tests (drift_summary.json) use: not part of a task's key
SUMMARY_ONLY = ("primary", "exploratory")
# a seed-level test's depth -> its column in the per-seed drift (`tables.seed_drifts`)
DEPTHS = {"final_norm": "last", "last_decoder": "last_decoder", "decoder_mean": "mean"}
EXPLORATORY_DEPTHS = ("final_norm", "decoder_mean")   # each exploratory (pooling, measure) is tested at these
MAX_PRIMARY = 3
PRIMARY_KEYS = ("task", "pooling", "measure", "depth")
# settings a profile may add that _base.yaml leaves out (absent = the default named here)
OPTIONAL = {"precision": "fp32"}   # bf16: extraction under bf16 autocast (see bench.extraction_agreement)


@functools.lru_cache(maxsize=1)
def _defaults_text() -> str:
    return (PROFILE_DIR / "_base.yaml").read_text()


def defaults() -> dict:
    """The ``drift:`` section of ``_base.yaml`` (a fresh copy)."""
    return yaml.safe_load(_defaults_text())["drift"]


def drift_config(prof: dict) -> dict:
    """The drift settings of a profile: ``_base.yaml``'s, updated by the profile's ``drift:`` section
    (mappings merge key by key, lists replace). Unknown settings and unregistered measures are errors."""
    base, over = defaults(), prof.get("drift") or {}
    unknown = sorted(set(over) - set(base) - set(OPTIONAL))
    if unknown:
        raise LoraDriftError(f"unknown drift setting {unknown[0]!r} in profile {prof['name']}: known {sorted(base)}")
    cfg = merge(base, over)
    _check(cfg, prof)
    return cfg


def _check(cfg: dict, prof: dict) -> None:
    where = f"profile {prof['name']}, drift"
    problems = [f"{where}.poolings: unknown pooling {p!r} (one of {list(POOLINGS)})"
                for p in cfg["poolings"] if p not in POOLINGS]
    for pooling, names in (cfg["measures"] or {}).items():
        if names and pooling not in cfg["poolings"]:
            problems.append(f"{where}.measures: pooling {pooling!r} is not in drift.poolings {cfg['poolings']}")
        problems += [f"{where}.measures.{pooling}: unknown measure {m!r} (registered: {sorted(MEASURES)}; "
                     "register one in loradrift/drift/measures.py)" for m in names or () if m not in MEASURES]
    if cfg.get("precision", "fp32") not in ("fp32", "bf16"):
        problems.append(f"{where}.precision: fp32 or bf16, not {cfg['precision']!r}")
    ctl = cfg["controls"]
    if ctl["pooling"] not in cfg["poolings"]:
        problems.append(f"{where}.controls.pooling {ctl['pooling']!r} is not in drift.poolings")
    problems += [f"{where}.controls: unknown measure {m!r}" for m in ctl["measures"] if m not in MEASURES]
    problems += [f"{where}.exploratory: ({p}, {m}) is not among drift.measures" for p, m in cfg["exploratory"]
                 if m not in ((cfg["measures"] or {}).get(p) or ())]
    problems += _primary_problems(cfg, where)
    if len(cfg["compare"]) != 2:
        problems.append(f"{where}.compare: name two methods, not {cfg['compare']}")
    elif "methods" in prof:
        problems += [f"{where}.compare: {m!r} is not a method of the profile ({list(prof['methods'])})"
                     for m in cfg["compare"] if m not in prof["methods"]]
    if problems:
        raise LoraDriftError("; ".join(problems))


def _primary_problems(cfg: dict, where: str) -> list[str]:
    """What is wrong with the pre-registered primary endpoints: more than `MAX_PRIMARY`, other keys
    than `PRIMARY_KEYS`, an unregistered task, a (pooling, measure) the stage does not compute, an
    unknown depth, or one endpoint twice."""
    from ..tasks import TASKS
    primary = cfg["primary"] or []
    if not isinstance(primary, list) or len(primary) > MAX_PRIMARY:
        return [f"{where}.primary: a list of at most {MAX_PRIMARY} endpoints (Holm runs over them), not {primary!r}"]
    problems = []
    for i, e in enumerate(primary):
        at = f"{where}.primary[{i}]"
        if not isinstance(e, dict) or set(e) != set(PRIMARY_KEYS):
            problems.append(f"{at}: a mapping of exactly {list(PRIMARY_KEYS)}, not {e!r}")
            continue
        if e["task"] not in TASKS:
            problems.append(f"{at}: unknown task {e['task']!r} (registered: {sorted(TASKS)})")
        if e["measure"] not in ((cfg["measures"] or {}).get(e["pooling"]) or ()):
            problems.append(f"{at}: ({e['pooling']}, {e['measure']}) is not among drift.measures")
        if e["depth"] not in DEPTHS:
            problems.append(f"{at}: depth {e['depth']!r} is not one of {list(DEPTHS)}")
    keys = [tuple(e.get(k) for k in PRIMARY_KEYS) for e in primary if isinstance(e, dict)]
    problems += [f"{where}.primary: {list(k)} is listed twice" for k in {k for k in keys if keys.count(k) > 1}]
    return problems


def base_vs_model(cfg: dict) -> list[tuple[str, str]]:
    """(pooling, measure) compared between the base and each fine-tuned model, in the configured order."""
    return [(p, m) for p, names in (cfg["measures"] or {}).items() for m in names or ()]

