"""The deployment benchmark's settings, read from a profile: the timing settings of its ``deploy:``
section and the method of each kind it serves.

``_base.yaml``'s ``deploy:`` section is the default of every profile (also of one that does not extend
``_base``); a profile states what differs; keyword arguments override both. ``methods`` (which method
of each kind is served) and ``vllm`` (the vLLM path's settings) are read beside the timing settings,
not with them.
"""
from __future__ import annotations

import torch

from .. import LoraDriftError
from .modes import ordered

NOT_TIMING = ("methods", "vllm")   # keys of the deploy section that are no timing settings


def shared_defaults() -> dict:
    """``_base.yaml``'s deploy section: the defaults of every profile."""
    import yaml

    from ..config import PROFILE_DIR
    return (yaml.safe_load((PROFILE_DIR / "_base.yaml").read_text()) or {}).get("deploy") or {}


def deploy_section(prof: dict) -> dict:
    from ..config import merge
    return merge(shared_defaults(), prof.get("deploy") or {})


def deploy_config(prof: dict, device: str | None = None, **overrides) -> dict:
    """The timing settings: the deploy section's, then keyword overrides (None values ignored); explicit
    ``batch_sizes`` without ``batch_sizes_by_mode`` apply to every mode. Modes in the table's order."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = {k: v for k, v in deploy_section(prof).items() if k not in NOT_TIMING}
    user = {k: v for k, v in overrides.items() if v is not None}
    if "batch_sizes" in user and "batch_sizes_by_mode" not in user:
        cfg["batch_sizes_by_mode"] = {}
    cfg.update(user)
    cfg.setdefault("seed", int(prof["seeds"][0]))
    cfg["device"] = device
    cfg["modes"] = ordered(cfg["modes"])
    return cfg


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
                             f"has none: add one, or remove those modes from its deploy.modes")
    raise LoraDriftError(f"profile {prof['name']!r} has several methods of kind {kind} ({have}): name the one "
                         f"to serve in deploy.methods.{kind}")


def served_methods(prof: dict, kinds=None) -> dict[str, str]:
    """{kind: method} for the given kinds (default: every kind the profile has a method of)."""
    from ..methods import KINDS, methods_of_kind
    kinds = kinds if kinds is not None else [k for k in KINDS if methods_of_kind(prof, k)]
    return {k: served_method(prof, k) for k in kinds}
