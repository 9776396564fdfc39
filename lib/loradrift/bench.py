"""What this machine can do, and how close the study's heavy stages come to it.

``run_bench`` writes ``data/<profile>/bench.json``: the matrix-multiply ceiling of the device in fp32
and bf16 (a large square product and the model's own shapes, at the profile's thread count), and for
full fine-tuning, LoRA and extraction the real (non-padding) tokens per second on a real task's
batches, the FLOP/s that rate means and its fraction of the ceiling, per precision.

FLOPs are counted from the model's shapes (``flops_per_token``): a forward pass costs 2 FLOPs per
weight of every matrix product (the decoder's linear layers and the score head; the embedding is a
lookup) plus causal attention (QKᵀ and AV: 4·d per attended position, (T+1)/2 positions on average).
Full fine-tuning costs 3 forward passes per token (forward, gradients of activations, gradients of
weights); LoRA costs a forward pass, the activations' gradients and the trainable weights' gradients;
extraction costs one forward pass.
"""
from __future__ import annotations

import contextlib
import gc
import os
import time

import numpy as np
import torch

from .config import environment
from .store import is_current, key, read_json, result_path, write_json


# ------------------------------------------------------------------------------------- FLOP counts
def linear_weights(model) -> tuple[int, int]:
    """(weights in matrix products, of which trainable) of a causal-LM classifier (embeddings excluded)."""
    total = trainable = 0
    for name, mod in model.named_modules():
        # peft keeps an unused frozen copy of a trained head (modules_to_save): ".original_module"
        if isinstance(mod, torch.nn.Linear) and "embed" not in name and not name.endswith("lm_head") \
                and "original_module" not in name:
            total += mod.weight.numel()
            trainable += mod.weight.numel() if mod.weight.requires_grad else 0
    return total, trainable


def flops_per_token(model, seq_len: float, mode: str) -> float:
    """FLOPs per real token at mean sequence length ``seq_len``: ``full`` or ``lora`` training, or ``extract``."""
    cfg = model.config
    n, n_train = linear_weights(model)
    attention = 4 * cfg.num_hidden_layers * cfg.hidden_size * (seq_len + 1) / 2
    forward = 2 * n + attention
    if mode == "extract":
        return forward
    if mode == "full":
        return 3 * forward
    if mode == "lora":
        return 2 * forward + 2 * n_train
    raise ValueError(f"mode {mode!r}: full, lora or extract")


# ------------------------------------------------------------------------------------- ceilings
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _time(fn, reps: int, best: bool = False) -> float:
    """Median (or, with ``best``, shortest) seconds of ``reps`` calls after two warm-up calls."""
    fn(), fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return float(min(out) if best else np.median(out))


def matmul_ceiling(shapes: list[tuple[int, int, int]], dtype: str, reps: int = 10) -> list[dict]:
    """GFLOP/s of (M×K)·(K×N) products in ``dtype`` on the CPU or GPU, per shape: the fastest of
    ``reps`` products (a ceiling is what the device reaches, not its typical rate under interference)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for m, k, n in shapes:
        a = torch.randn(m, k, device=dev).to(DTYPES[dtype])
        b = torch.randn(k, n, device=dev).to(DTYPES[dtype])
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        s = _time(lambda: (a @ b, sync()), reps, best=True)
        rows.append({"dtype": dtype, "m": m, "k": k, "n": n, "seconds": s, "gflops": 2 * m * k * n / s / 1e9})
    return rows


def model_shapes(model, tokens: int = 2048) -> list[tuple[int, int, int]]:
    """The distinct (tokens × in) · (in × out) products of the model's linear layers, and a square 2048."""
    shapes = {(2048, 2048, 2048)}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "embed" not in name and mod.out_features > 2:
            shapes.add((tokens, mod.in_features, mod.out_features))
    return sorted(shapes)


# ------------------------------------------------------------------------------------- throughput
def _autocast(precision: str):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(dev, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def batches(prof: dict, task: str, tok, batch_size: int, n: int, glue_source=None) -> list[dict]:
    """``n`` padded batches of the task's training split, grouped by length as the Trainer groups them."""
    from transformers import DataCollatorWithPadding

    from .data import study_splits, tokenize
    enc = tokenize(task, study_splits(prof, task, glue_source)["train"], tok, int(prof["data"]["max_length"]))
    order = np.random.default_rng(0).permutation(len(enc))[: batch_size * n]
    rows = [enc[int(i)] for i in order]
    collate = DataCollatorWithPadding(tok)
    return [collate([{k: r[k] for k in ("input_ids", "attention_mask", "labels")}
                     for r in sorted(rows[i:i + batch_size], key=lambda r: r["length"])])
            for i in range(0, len(rows), batch_size)]


def _train_step(model, precision: str, max_grad_norm: float = 1.0, lr: float = 1e-5):
    """One training step as the Trainer takes it: forward and backward under the precision's autocast,
    gradients clipped to ``max_grad_norm``, transformers' default optimizer (adamw_torch_fused)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, fused=True)

    def step(b):
        with _autocast(precision):
            out = model(**b)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def throughput(model, data: list[dict], mode: str, precision: str, warm_all: bool = False) -> dict:
    """Real tokens/s and FLOP/s of training steps (forward, backward, clipping, AdamW) or of extraction
    forwards. The first batch is an untimed warm-up, or, with ``warm_all``, every batch once (a compiled
    model compiles for every shape it meets there, not inside the timed pass)."""
    train = mode != "extract"
    model.train(train)
    if train:
        step = _train_step(model, precision)
    else:
        def step(b):
            with _autocast(precision), torch.no_grad():
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)

    t0 = time.perf_counter()
    for b in (data if warm_all else data[:1]):  # allocations, oneDNN primitives; a compiled model compiles here
        step(b)
    warmup = time.perf_counter() - t0
    real = flops = 0.0
    t0 = time.perf_counter()
    for b in data[1:]:
        step(b)
        lengths = b["attention_mask"].sum(1).double()
        real += float(lengths.sum())
        flops += float(sum(float(x) * flops_per_token(model, float(x), mode) for x in lengths))
    s = time.perf_counter() - t0
    return {"mode": mode, "precision": precision, "batches": len(data) - 1, "tokens": real, "seconds": s,
            "tokens_per_s": real / s, "gflops": flops / s / 1e9, "warmup_s": warmup}


# ------------------------------------------------------------------------------------- where a step's time goes
# operator groups by name, in order (the first match wins); self time only, so nothing is counted twice
OP_GROUPS = (("attention", ("scaled_dot_product",)),
             ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
                                  "aten::linear")),
             ("optimizer", ("adam", "optimizer.step", "_foreach_")),
             ("casts and copies", ("aten::_to_copy", "aten::to", "aten::copy_")))
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def op_group(name: str) -> str:
    """The group of a profiler event (``OP_GROUPS``; ``other``: elementwise work, norms, the loss, autograd's
    own bookkeeping)."""
    low = name.lower()
    for group, keys in OP_GROUPS:
        if any(low == k or low.startswith(k + "#") or (not k.startswith("aten::") and k in low) for k in keys):
            return group
    return "other"


def step_profile(model, data: list[dict], mode: str, precision: str, ceiling: float | None = None) -> dict:
    """Where the time of training steps goes (torch.profiler, CPU self time, after one warm-up step): each
    operator group's share of the profiled steps' wall time, and the rate the matrix products themselves
    reach (the FLOPs the profiler counts for them, padded positions included, over their time) against
    ``ceiling`` GFLOP/s when given. "attention" is the fused scaled-dot-product kernels only."""
    from torch.profiler import ProfilerActivity, profile
    model.train(True)
    step = _train_step(model, precision)
    step(data[0])
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for b in data[1:]:
            step(b)
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    seconds = {g: 0.0 for g, _ in OP_GROUPS} | {"other": 0.0}
    for e in events:
        seconds[op_group(e.key)] += e.self_cpu_time_total / 1e6
    # shares of the profiled steps' wall time; "unattributed" is the rest (Python between operators, the
    # profiler's own bookkeeping), floored at 0
    shares = {g: v / wall for g, v in seconds.items()}
    shares["unattributed"] = max(0.0, 1 - sum(shares.values()))
    mm = [e for e in events if e.key in MATMUL_OPS]
    mm_s = sum(e.self_cpu_time_total for e in mm) / 1e6
    mm_flops = sum(e.flops for e in mm)
    rate = mm_flops / mm_s / 1e9 if mm_s else None
    return {"mode": mode, "precision": precision, "steps": len(data) - 1, "profiled_s": wall,
            "operators_s": sum(seconds.values()), "shares": shares, "matmul_flops": mm_flops, "matmul_gflops": rate,
            "matmul_fraction_of_ceiling": rate / ceiling if rate and ceiling else None}


# ------------------------------------------------------------------------------------- levers
# each lever runs in a fresh process: thread pinning must be set before OpenMP starts, and a compiled
# model's cost (and a compilation that does not finish in its budget) stays out of this one
LEVERS = {"eager": ({}, False),
          "pinned": ({"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}, False),
          "compiled": ({}, True)}
LEVER_ORDER = ("eager", "pinned", "eager", "compiled", "eager")   # an eager run before and after every lever


def lever_probe(spec: dict) -> dict:
    """In a fresh process: the training rate of ``spec['method']`` on ``spec['task']`` batches, eager or
    ``torch.compile``d (``spec['compile']``), with the environment the parent set."""
    from .methods import kind_of
    from .models import base_model_path, load_classifier, load_tokenizer
    prof = spec["prof"]
    torch.set_num_threads(int(spec["threads"]))
    tok = load_tokenizer(base_model_path(prof))
    data = batches(prof, spec["task"], tok, int(spec["batch_size"]), int(spec["batches"]) + 1, spec.get("glue_source"))
    model = load_classifier(base_model_path(prof), "float32", tok.pad_token_id)
    kind = kind_of(prof, spec["method"])
    model = kind.prepare(model, prof["methods"][spec["method"]])
    if spec.get("compile"):
        model = torch.compile(model, dynamic=True)
    out = throughput(model, data, kind.name, spec["precision"], warm_all=True)
    if spec.get("compile"):   # graphs compiled over the warm-up pass: more than one means recompilations
        from torch._dynamo.utils import counters
        out["graphs"] = int(counters["stats"]["unique_graphs"])
    return out


def levers(prof: dict, task: str, method: str, precision: str, n_batches: int, threads: int,
           budget_s: float, glue_source=None, which=LEVER_ORDER) -> list[dict]:
    """Standard levers measured side by side, each in a fresh process, every probe warmed on all its batches
    before the timed pass: eager between every two levers (so that a drift of the machine shows), thread
    pinning (OMP_PROC_BIND=close, OMP_PLACES=cores) and ``torch.compile`` (dynamic shapes; it compiles in
    the warm-up pass, and the graphs it made are counted). A probe that runs past ``budget_s`` is killed
    with its process group and recorded as not finished."""
    import json
    import subprocess
    import sys
    import tempfile
    spec = {"prof": prof, "task": task, "method": method, "precision": precision, "batches": n_batches,
            "threads": threads, "glue_source": glue_source,
            "batch_size": prof["training"]["common"]["per_device_train_batch_size"]}
    rows = []
    for lever in which:
        env, compiled = LEVERS[lever]
        with tempfile.TemporaryDirectory() as tmp:
            src, out = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
            with open(src, "w") as f:
                json.dump({**spec, "compile": compiled}, f, default=str)
            code = ("import json,sys; from loradrift.bench import lever_probe; "
                    "json.dump(lever_probe(json.load(open(sys.argv[1]))), open(sys.argv[2], 'w'))")
            t0 = time.perf_counter()
            p = subprocess.Popen([sys.executable, "-c", code, src, out], env={**os.environ, **env},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
            try:
                _, err = p.communicate(timeout=budget_s)
                r = json.load(open(out)) if p.returncode == 0 else \
                    {"error": (err.strip().splitlines() or ["?"])[-1][:300]}
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)   # the probe and any compile workers it started
                p.communicate()
                r = {"error": f"not finished in {budget_s:g} s"}
        r.update(lever=lever, task=task, method=method, precision=precision, env=env,
                 process_s=time.perf_counter() - t0, load_avg=list(os.getloadavg()))
        rows.append(r)
        print(f"bench lever {lever:<8}: " + (f"{r['tokens_per_s']:8.0f} tokens/s (warm-up {r['warmup_s']:.1f} s)"
                                             if "tokens_per_s" in r else r["error"]))
    eager = [r["tokens_per_s"] for r in rows if r["lever"] == "eager" and "tokens_per_s" in r]
    for r in rows:
        r["vs_eager"] = r["tokens_per_s"] / float(np.mean(eager)) if eager and "tokens_per_s" in r else None
    return rows


def bench_methods(prof: dict) -> list[str]:
    """The methods the benchmark times: ``bench.methods``, else the compared ones (``drift.compare``): a sweep's
    variants (another learning rate or rank) cost what their method costs."""
    from .drift.settings import drift_config
    return list((prof.get("bench") or {}).get("methods") or drift_config(prof)["compare"])


def run_bench(prof: dict, tasks=None, glue_source=None, n_batches: int | None = None, **_) -> dict:
    """The profile's benchmark (see the module docstring) -> data/<profile>/bench.json."""
    from .methods import kind_of
    from .models import base_model_path, load_classifier, load_tokenizer
    cfg = prof.get("bench") or {}
    threads = int(cfg.get("threads") or torch.get_num_threads())
    torch.set_num_threads(threads)
    # the tasks whose batches are timed (``bench.tasks``, else ``bench.task``, else the profile's first)
    bench_tasks = list(tasks or cfg.get("tasks") or [cfg.get("task", prof["tasks"][0])])
    task = bench_tasks[0]
    n_batches = int(n_batches or cfg.get("batches", 6))
    methods = bench_methods(prof)
    settings = {"model": prof["model"], "methods": {m: prof["methods"][m] for m in methods}, "tasks": bench_tasks,
                "threads": threads, "batches": n_batches,
                "batch_size": prof["training"]["common"]["per_device_train_batch_size"], "bench": cfg}
    out_path = result_path(prof["name"], "bench")
    if is_current(out_path, key(settings)):
        print(f"bench results are current: {out_path} (skipped)")
        return read_json(out_path)
    path = base_model_path(prof)
    tok = load_tokenizer(path)
    precisions = [p for p in ("fp32", "bf16") if p == "fp32" or _bf16_native()]
    base = load_classifier(path, "float32", tok.pad_token_id)
    load_before = list(os.getloadavg())
    measure_ceilings = lambda: [r for p in precisions  # noqa: E731
                                for r in matmul_ceiling(model_shapes(base), p, int(cfg.get("reps", 10)))]
    first = measure_ceilings()
    bs = int(prof["training"]["common"]["per_device_train_batch_size"])
    fresh = lambda method: (load_classifier(path, "float32", tok.pad_token_id) if method == "extract"  # noqa: E731
                            else kind_of(prof, method).prepare(load_classifier(path, "float32", tok.pad_token_id),
                                                               prof["methods"][method]))
    rows, profiles = [], []
    # the precision the profile's units train in (trainer.precision), where the device has it
    from .config import unit_config
    from .trainer import precision as unit_precision
    wanted = "bf16" if unit_precision(unit_config(prof, task, methods[0], prof["seeds"][0])) == "bf16-autocast" else "fp32"
    train_precision = wanted if wanted in precisions else "fp32"
    profile_steps = int(cfg.get("profile_steps", 3))
    for t in bench_tasks:
        data = batches(prof, t, tok, bs, n_batches + 1, glue_source)
        for method in methods + ["extract"]:
            mode = "extract" if method == "extract" else kind_of(prof, method).name
            for p in precisions:
                r = throughput(fresh(method), data, mode, p)
                gc.collect()   # the model and its optimizer states before the next (3 copies of the weights: 2 GB)
                r.update(method=method, task=t, batch_size=bs, load_avg=list(os.getloadavg()))
                rows.append(r)
                print(f"bench {t:<5} {method:<8} {p}: {r['tokens_per_s']:8.0f} tokens/s, {r['gflops']:6.1f} GFLOP/s")
            if method != "extract" and profile_steps and not torch.cuda.is_available():
                # its matrix products' fraction of the ceiling is set below, against the final ceiling
                r = step_profile(fresh(method), data[: profile_steps + 1], mode, train_precision)
                profiles.append({**r, "method": method, "task": t})
                gc.collect()
    lever_cfg = cfg.get("levers") or {}
    lever_rows = levers(prof, lever_cfg.get("task", task), lever_cfg.get("method", methods[0]), train_precision,
                        int(lever_cfg.get("batches", 4)), threads, float(lever_cfg.get("budget_s", 900)),
                        glue_source, lever_cfg.get("which") or LEVER_ORDER) \
        if lever_cfg else None
    # the ceilings again after the rates, each shape's faster measurement kept: a ceiling measured while
    # something else ran is not a ceiling (the load averages before and after are recorded too)
    ceilings = [max(a, b, key=lambda r: r["gflops"]) for a, b in zip(first, measure_ceilings())]
    best = {p: max(r["gflops"] for r in ceilings if r["dtype"] == p) for p in precisions}
    for r in rows:
        r["fraction_of_ceiling"] = r["gflops"] / best[r["precision"]]
    for r in profiles:   # against the final ceiling, as the rates above
        r["matmul_fraction_of_ceiling"] = r["matmul_gflops"] / best[r["precision"]] if r["matmul_gflops"] else None
    out = {"profile": prof["name"], "key": key(settings), "threads": threads, "task": task, "tasks": bench_tasks,
           "ceilings": ceilings, "ceiling": best, "throughput": rows, "step_profile": profiles,
           "levers": lever_rows, "drift_measures": _drift_measures(prof, cfg),
           "extraction": extraction_agreement(prof, task, int(cfg.get("extraction_examples", 128)), glue_source),
           "load_avg_before": load_before, "load_avg_after": list(os.getloadavg()), "environment": environment()}
    write_json(out_path, out)
    return out


def _drift_measures(prof: dict, cfg: dict) -> dict | None:
    """The drift measures' time with and without the Gram cache (``drift.bench.measures_speed``) at
    ``bench.measures_depths`` depths of the profile's largest task shape; None when set to 0."""
    from .drift.bench import measures_speed
    depths = int(cfg.get("measures_depths", 4))
    return measures_speed(prof, depths=depths, rounds=1) if depths else None


def _bf16_native() -> bool:
    from .trainer import cpu_supports_bf16
    return torch.cuda.is_available() or cpu_supports_bf16()


# ------------------------------------------------------------------------------------- extraction in bf16?
def extraction_agreement(prof: dict, task: str, n: int = 128, glue_source=None) -> dict | None:
    """Do drift measures agree when extraction runs in bf16? For the base model and every trained
    unit of ``task`` of the benchmarked methods (seed = the profile's first), 1 − CKA and 1 − debiased CKA with the base at every
    depth, masked and last-token pooling, from fp32 and from bf16 extraction of the same ``n`` test
    examples; the largest difference is set against the smallest seed-to-seed spread of the same
    quantity in the profile's committed drift results. None when the task has no trained units."""
    import pandas as pd

    from .config import run_id
    from .data import study_splits, texts
    from .drift.extract import backbone_of, extract
    from .drift.measures import get_measure
    from .models import base_model_path, load_classifier, load_finetuned, load_tokenizer
    from .train import model_dir
    seed = prof["seeds"][0]
    units = [(m, model_dir(prof["name"], run_id(task, m, seed))) for m in bench_methods(prof)]
    units = [(m, d) for m, d in units if d.exists()]
    if not units:
        return None
    sample = texts(task, study_splits(prof, task, glue_source)["test"].select(range(n)))
    path = base_model_path(prof)
    tok = load_tokenizer(path)

    def pooled(model):
        bb = backbone_of(model)
        return {p: extract(bb, tok, sample, int(prof["data"]["max_length"]), original=False, precision=p)
                for p in ("fp32", "bf16")}
    with torch.no_grad():
        base = pooled(load_classifier(path, "float32", tok.pad_token_id).eval())
        rows = []
        for method, folder in units:
            model = pooled(load_finetuned(prof, folder, method)[0])
            for prec in ("fp32", "bf16"):
                for pooling in ("masked", "last"):
                    for measure in ("cka", "debiased_cka"):
                        fn = get_measure(measure).fn
                        for depth, (x, y) in enumerate(zip(base[prec][pooling], model[prec][pooling])):
                            rows.append({"method": method, "precision": prec, "pooling": pooling,
                                         "measure": measure, "depth": depth, "drift": 1 - float(fn(x, y))})
    d = pd.DataFrame(rows).pivot_table(index=["method", "pooling", "measure", "depth"], columns="precision",
                                       values="drift").reset_index()
    d["diff"] = (d["bf16"] - d["fp32"]).abs()
    return {"task": task, "seed": seed, "n": n, "max_abs_diff": float(d["diff"].max()),
            "median_abs_diff": float(d["diff"].median()),
            "rows": d.to_dict(orient="records")}
