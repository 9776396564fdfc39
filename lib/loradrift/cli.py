"""Command line: run one unit or a whole stage of the study for a profile.

    python -m loradrift status                      # what exists, what is stale or missing
    python -m loradrift setup                       # data statistics, baselines, sanity check
    python -m loradrift train --task rte --method lora --seed 42
    python -m loradrift train                       # every unit of the profile (skips finished ones)
    python -m loradrift drift | deploy | search     # the later stages
    python -m loradrift all                         # setup, search (applied), train, drift, deploy
    python -m loradrift timing                      # the study's run time, stage by stage

The profile comes from --profile, else QUARTO_PROFILE, else ``cpu``.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import LoraDriftError
from .config import available_profiles, load_profile
from .store import data_dir, read_json, write_json


def _common(p):
    p.add_argument("--profile", help=f"one of {available_profiles()} (default: $QUARTO_PROFILE or cpu)")
    p.add_argument("--glue-dir", help="local GLUE folder (classic TSV layout) or 'hub'; default: auto")
    p.add_argument("--model", help="override the profile's model (hub id, folder, .gguf or pkg:...)")


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m loradrift", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    _common(sub.add_parser("status", help="list units and their state"))
    _common(sub.add_parser("setup", help="data statistics, baselines and the sanity check"))
    _common(sub.add_parser("timing", help="write the study's run time, stage by stage, to study_time.json"))
    p = sub.add_parser("train", help="train one unit, or every unit that is not done")
    _common(p)
    p.add_argument("--task", action="append", help="rte, mrpc or sst2 (repeatable; default: all)")
    p.add_argument("--method", action="append", help="full or lora (repeatable; default: both)")
    p.add_argument("--seed", action="append", type=int, help="repeatable; default: the profile's seeds")
    p.add_argument("--force", action="store_true", help="re-train even if a current result exists")
    for name, text in (("drift", "representational drift, weight space and forgetting"),
                       ("deploy", "the serving benchmark"), ("search", "hyperparameter search"),
                       ("all", "setup, search (applied), train, drift and deploy, in order")):
        q = sub.add_parser(name, help=text)
        _common(q)
        q.add_argument("--task", action="append")
        if name == "search":
            q.add_argument("--method", action="append", help="full or lora (repeatable; default: both)")
            q.add_argument("--n-trials", type=int, help="trials per task x method (default: the profile's)")
            q.add_argument("--apply", action="store_true",
                           help="write the chosen values into the profile (training.per_task): older runs become stale")
            q.add_argument("--apply-only", action="store_true", help="apply existing search results, search nothing")
        if name == "deploy":
            q.add_argument("--arch", help="architecture-only run on random weights: tinyllama-1.1b or smollm2-135m")
            q.add_argument("--vllm", action="store_true", help="the vLLM multi-LoRA path (CUDA only)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.model:
        os.environ["LORADRIFT_MODEL"] = args.model
    try:
        prof = load_profile(args.profile)
        return COMMANDS[args.cmd](prof, args) or 0
    except LoraDriftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_status(prof, args):
    from .train import unit_status, units
    from .config import run_id
    counts = {}
    for t, m, s in units(prof):
        st = unit_status(prof, t, m, s)
        counts[st] = counts.get(st, 0) + 1
        print(f"{run_id(t, m, s):<20} {st}")
    print(f"profile {prof['name']}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + f"  (results in {data_dir(prof['name'])})")


def cmd_setup(prof, args):
    from .data import split_stats, study_splits
    from .models import base_model_path, load_tokenizer
    from .train import baselines, sanity_check
    from .config import environment
    out = data_dir(prof["name"])
    tok = load_tokenizer(base_model_path(prof))
    stats = [r for t in prof["tasks"] for r in split_stats(t, study_splits(prof, t, args.glue_dir), tok,
                                                           int(prof["data"]["max_length"]))]
    write_json(out / "data_stats.json", {"splits": stats, "environment": environment()})
    write_json(out / "baselines.json", baselines(prof, args.glue_dir))
    sanity_path = out / "sanity.json"
    done = read_json(sanity_path) if sanity_path.exists() else {}
    for m in prof["methods"]:
        if m not in done:
            done[m] = sanity_check(prof, m, glue_source=args.glue_dir)
            write_json(sanity_path, done)
        print(f"sanity {m}: final loss {done[m]['final_loss']:.4f} ({'passed' if done[m]['passed'] else 'FAILED'})")
    print(f"setup results -> {out}")


def cmd_train(prof, args):
    from .train import train_all, train_unit, units
    if args.force:
        for t, m, s in units(prof, args.task, args.method, args.seed):
            train_unit(prof, t, m, s, force=True, glue_source=args.glue_dir)
    else:
        train_all(prof, args.task, args.method, args.seed, glue_source=args.glue_dir)
    print(f"run results -> {data_dir(prof['name']) / 'runs'}")


def cmd_drift(prof, args):
    from .drift import run_drift
    run_drift(prof, tasks=args.task, glue_source=args.glue_dir)


def cmd_deploy(prof, args):
    if getattr(args, "arch", None):
        from .serving import run_arch
        run_arch(args.arch, glue_source=args.glue_dir)
    elif getattr(args, "vllm", False):
        from .serving import run_vllm
        run_vllm(prof, tasks=args.task, glue_source=args.glue_dir)
    else:
        from .serving import run_deploy
        run_deploy(prof, tasks=args.task, glue_source=args.glue_dir)


def cmd_search(prof, args):
    from .search import apply_search, run_search
    target = args.profile or prof["name"]
    if args.apply_only:
        apply_search(target, tasks=args.task, methods=args.method)
        return
    run_search(prof, tasks=args.task, methods=args.method, n_trials=args.n_trials,
               glue_source=args.glue_dir, apply=target if args.apply else False)


def cmd_timing(prof, args):
    from .report import study_time
    t = study_time(prof["name"])
    write_json(data_dir(prof["name"]) / "study_time.json", t)
    for s in t["stages"]:
        print(f"{s['stage']:<8} {s['wall_s'] / 60:7.1f} min  {s['what']}")
    print(f"total    {t['total_wall_s'] / 60:7.1f} min  -> {data_dir(prof['name']) / 'study_time.json'}")


def cmd_all(prof, args):
    """Every stage in order; each skips what is current, so an interrupted `all` resumes."""
    from .search import run_search
    args.method = args.seed = args.arch = None
    args.force = args.vllm = False
    cmd_setup(prof, args)
    if prof.get("search"):
        run_search(prof, tasks=args.task, glue_source=args.glue_dir, apply=args.profile or prof["name"])
        prof = load_profile(args.profile or prof["name"])  # the applied values
    for step in (cmd_train, cmd_drift, cmd_deploy, cmd_timing):
        step(prof, args)


COMMANDS = {"status": cmd_status, "setup": cmd_setup, "timing": cmd_timing, "train": cmd_train, "drift": cmd_drift,
            "deploy": cmd_deploy, "search": cmd_search, "all": cmd_all}
