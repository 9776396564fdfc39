"""Command line: run one unit or a whole stage of the study for a profile.

    python -m loradrift status                      # every unit: done, stale, partial, corrupt or missing
    python -m loradrift setup                       # data statistics, baselines, sanity check
    python -m loradrift train --task rte --method lora --seed 42
    python -m loradrift train                       # every unit of the profile (skips finished ones)
    python -m loradrift search --apply | drift | deploy | timing
    python -m loradrift all                         # every stage in order (search applied)

The profile comes from --profile, else QUARTO_PROFILE, else ``cpu``. The stages are
``loradrift.stages.STAGES``; each subcommand is one of them (plus ``status`` and ``all``).
"""
from __future__ import annotations

import argparse
import os
import sys

# Idle OpenMP threads sleep instead of spinning (set before torch loads OpenMP). On 2 shared cores a
# spinning 2-thread step stalled behind another process: 17 s/step against 1.8 s with passive waits.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import LoraDriftError  # noqa: E402
from .config import available_profiles, load_profile  # noqa: E402
from . import stages  # noqa: E402

OPTIONS = {  # option name -> (flags, argparse keywords)
    "method": (("--method",), dict(action="append", help="a method of the profile (repeatable; default: all)")),
    "seed": (("--seed",), dict(action="append", type=int, help="repeatable; default: the profile's seeds")),
    "force": (("--force",), dict(action="store_true", help="re-train even if a current result exists")),
    "n_trials": (("--n-trials",), dict(type=int, help="trials per task x method (default: the profile's)")),
    "apply": (("--apply",), dict(action="store_true",
                                 help="write the chosen values into the profile (training.per_task): "
                                      "units trained with older values become stale")),
    "arch": (("--arch",), dict(help="architecture-only run on random weights: tinyllama-1.1b or smollm2-135m")),
    "vllm": (("--vllm",), dict(action="store_true", help="the vLLM multi-LoRA path (CUDA only)")),
}


def _common(p, tasks: bool = True):
    p.add_argument("--profile", help=f"one of {available_profiles()} (default: $QUARTO_PROFILE or cpu)")
    p.add_argument("--glue-dir", help="local GLUE folder (classic TSV layout) or 'hub'; default: auto")
    p.add_argument("--model", help="override the profile's model (hub id, folder, .gguf or pkg:...)")
    if tasks:
        p.add_argument("--task", action="append", help="a task of the profile (repeatable; default: all)")


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m loradrift", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    _common(sub.add_parser("status", help="list units and their state"), tasks=False)
    for stage in stages.STAGES:
        p = sub.add_parser(stage.name, help=stage.help)
        _common(p, tasks=stage.name != "timing")
        for opt in stage.options:
            flags, kw = OPTIONS[opt]
            p.add_argument(*flags, **kw)
    _common(sub.add_parser("all", help="every stage in order: " + ", ".join(s.name for s in stages.STAGES)
                           + " (the search applied)"))
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.model:
        os.environ["LORADRIFT_MODEL"] = args.model
    try:
        prof = load_profile(args.profile)
        if args.cmd == "status":
            return cmd_status(prof) or 0
        if args.cmd == "all":
            return cmd_all(prof, args) or 0
        return run_stage(args.cmd, prof, args) or 0
    except LoraDriftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run_stage(name: str, prof: dict, args, **extra):
    from .config import check_method, check_task
    opts = {k: v for k, v in vars(args).items() if k in OPTIONS and v not in (None, False)}
    for t in getattr(args, "task", None) or ():
        check_task(prof, t)
    for m in opts.get("method") or ():
        check_method(prof, m)
    opts["methods"], opts["seeds"] = opts.pop("method", None), opts.pop("seed", None)
    if opts.pop("apply", False):
        opts["apply"] = args.profile or prof["_file"]
    stages.get_stage(name).run(prof, tasks=getattr(args, "task", None), glue_source=args.glue_dir, **opts, **extra)


def cmd_status(prof):
    from .config import run_id, units
    from .store import data_dir
    from .train import unit_status
    counts = {}
    for t, m, s in units(prof):
        st = unit_status(prof, t, m, s)
        counts[st] = counts.get(st, 0) + 1
        print(f"{run_id(t, m, s):<20} {st}")
    print(f"profile {prof['name']}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + f"  (results in {data_dir(prof['name'])})")


def cmd_all(prof, args):
    """Every stage in order; each skips what is current, so an interrupted `all` resumes."""
    for stage in stages.STAGES:
        if stage.name == "search":
            stage.run(prof, tasks=args.task, glue_source=args.glue_dir, apply=args.profile or prof["_file"])
            prof = load_profile(args.profile or prof["_file"])  # the applied values
        else:
            stage.run(prof, tasks=args.task, glue_source=args.glue_dir)
