"""The deployment benchmark's settings, read from a profile: the timing settings of its ``deploy:``
section and the method of each kind it serves.

``_base.yaml``'s ``deploy:`` section is the default of every profile (also of one that does not extend
``_base``); a profile states what differs (mappings merge key by key, so a profile can change one
comparison's windows); keyword arguments override both. ``methods`` (which method of each kind is
served) and ``vllm`` (the vLLM path's settings) are read beside the timing settings, not with them.

Timing settings: ``threads`` (torch intra-op threads, null: leave torch's), ``repeats``, ``warmup``
(untimed windows per point), ``bootstrap``, ``seed`` and ``comparisons``: name -> {``streams``: task
names, or ``[interleaved]`` for the stream of every task; ``modes``; ``batch_sizes`` (a list, so a
profile replaces it); ``window``: batches per timed window; ``windows``: {batch size: timed windows
per repeat} (a mapping, merged key by key: sizes not in ``batch_sizes`` are ignored)}.
"""
from __future__ import annotations

import torch

from .. import LoraDriftError
from .modes import get_mode, ordered
from .requests import INTERLEAVED

NOT_TIMING = ("methods", "vllm")   # keys of the deploy section that are no timing settings
TIMING = ("threads", "repeats", "warmup", "bootstrap", "seed", "comparisons")
COMPARISON = ("streams", "modes", "batch_sizes", "window", "windows")


def shared_defaults() -> dict:
    """``_base.yaml``'s deploy section: the defaults of every profile."""
    import yaml

    from ..config import PROFILE_DIR
    return (yaml.safe_load((PROFILE_DIR / "_base.yaml").read_text()) or {}).get("deploy") or {}


def deploy_section(prof: dict) -> dict:
    from ..config import merge
    return merge(shared_defaults(), prof.get("deploy") or {})


def deploy_config(prof: dict, device: str | None = None, **overrides) -> dict:
    """The timing settings: the deploy section's, then keyword overrides (None values ignored; a
    ``comparisons`` override replaces the section's). Checked; modes in the table's order."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = {k: v for k, v in deploy_section(prof).items() if k not in NOT_TIMING}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg.setdefault("seed", int(prof["seeds"][0]))
    cfg["device"] = device
    where = f"deploy section of profile {prof.get('name')!r}"
    cfg["comparisons"] = check_comparisons(cfg, where)
    return cfg


def check_comparisons(cfg: dict, where: str) -> dict:
    """Every key known, every comparison complete and its modes fitting its streams; raises
    LoraDriftError naming what to fix. Returns the comparisons with modes in the table's order and
    batch sizes as integers."""
    unknown = sorted(set(cfg) - set(TIMING) - {"device"})
    if unknown:
        raise LoraDriftError(f"{where}: unknown keys {unknown}; the timing settings are {list(TIMING)} "
                             "(loradrift/serving/settings.py)")
    comps = cfg.get("comparisons") or {}
    if not comps:
        raise LoraDriftError(f"{where}: no comparisons; add deploy.comparisons (see profiles/_base.yaml)")
    out = {}
    for name, c in comps.items():
        missing = [k for k in COMPARISON if k not in (c or {})]
        if missing or set(c) - set(COMPARISON):
            raise LoraDriftError(f"{where}: comparison {name!r} needs exactly {list(COMPARISON)}; "
                                 f"missing {missing}, unknown {sorted(set(c) - set(COMPARISON))}")
        kinds = {INTERLEAVED if s == INTERLEAVED else "task" for s in c["streams"]}
        for m in c["modes"]:
            want = INTERLEAVED if get_mode(m).stream == INTERLEAVED else "task"
            if kinds != {want}:
                raise LoraDriftError(f"{where}: comparison {name!r} serves mode {m!r} (a {get_mode(m).stream} "
                                     f"mode) on streams {c['streams']}: use task names for task modes, "
                                     f"[{INTERLEAVED}] for the others, in separate comparisons")
        if len(c["modes"]) < 2:
            raise LoraDriftError(f"{where}: comparison {name!r} needs at least two modes")
        windows = {int(b): int(n) for b, n in c["windows"].items()}
        lacking = [int(b) for b in c["batch_sizes"] if int(b) not in windows]
        if lacking:
            raise LoraDriftError(f"{where}: comparison {name!r} has no windows for batch sizes {lacking}: add them "
                                 "to its windows")
        out[name] = {**c, "modes": ordered(c["modes"]), "window": int(c["window"]),
                     "batch_sizes": [int(b) for b in c["batch_sizes"]],
                     "windows": {int(b): windows[int(b)] for b in c["batch_sizes"]}}
    return out


def served_method(prof: dict, kind: str) -> str:
    """The method of ``kind`` whose units the benchmark serves: the one ``deploy.methods.<kind>`` names,
    else the profile's only method of that kind, else the one named like the kind."""
    from ..methods import methods_of_kind
    have = methods_of_kind(prof, kind)
    named = (deploy_section(prof).get("methods") or {}).get(kind)
    if named is not None:
        if named not in have:
            raise LoraDriftError(f"deploy.methods.{kind} of profile {prof['name']!r} is {named!r}, which is no "
                                 f"method of kind {kind}: choose one of {have}")
        return named
    if len(have) == 1:
        return have[0]
    if kind in have:
        return kind
    if not have:
        raise LoraDriftError(f"the serving modes need a method of kind {kind}, and profile {prof['name']!r} "
                             f"has none: add one, or remove those modes from its deploy.comparisons")
    raise LoraDriftError(f"profile {prof['name']!r} has several methods of kind {kind} ({have}): name the one "
                         f"to serve in deploy.methods.{kind}")


def served_methods(prof: dict, kinds=None) -> dict[str, str]:
    """{kind: method} for the given kinds (default: every kind the profile has a method of)."""
    from ..methods import KINDS, methods_of_kind
    kinds = kinds if kinds is not None else [k for k in KINDS if methods_of_kind(prof, k)]
    return {k: served_method(prof, k) for k in kinds}


def all_modes(cfg: dict) -> list[str]:
    """Every mode of the run's comparisons, in the table's order."""
    return ordered({m for c in cfg["comparisons"].values() for m in c["modes"]})
