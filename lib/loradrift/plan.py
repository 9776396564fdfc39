"""The l4 profile's memory and time plans: what training TinyLlama-1.1B needs on one 24 GB GPU, computed
from the real module shapes (the model built on the meta device: no weights, no GPU) and the profile's
settings, written to ``data/l4/memory_plan.json`` and ``data/l4/time_plan.json``.

Memory of one training step (bytes; P = all parameters, T = trainable ones, W = trainable weights of matrix
products, L layers, N tokens per micro-batch = batch x max_length, the worst case of a full batch):

- weights: fp32 master weights, 4 P (``models.training_dtype``; bf16 autocast computes)
- gradients: fp32, 4 T (alive through every micro-batch of a gradient-accumulation step)
- optimizer states: AdamW's two fp32 moments, 8 T (the Trainer's default ``adamw_torch_fused`` on torch >= 2.8
  updates in place: no full-size temporaries)
- autocast weight cache: torch.autocast keeps the bf16 copy of every trainable weight it casts until the forward
  pass ends, 2 W (for LoRA, frozen weights are cast per use and not cached)
- activations, per token per layer (``activation_bytes``), a Llama block under bf16 autocast with SDPA's fused
  attention (no sequence-squared term; h hidden, i intermediate, kv the key/value width, n heads):
  without checkpointing ``30 h + 8 i + 4 kv + 4 n + 8``: two RMSNorms keep their fp32 input and normalised output
  (16 h), the seven matrix products their bf16 input (12 h + 2 i: q, k and v each cast the same normed input),
  attention its rotated q, k and v (2 h + 4 kv) and log-sum-exp (4 n), the SwiGLU its gate, activation and up
  outputs (6 i), the norms their inverse RMS (8); plus, without checkpointing, the bf16 copy of every frozen
  weight the products keep for their backward. With checkpointing a layer keeps its fp32 input (4 h) and the
  backward recomputes one layer at a time: one layer's activations and frozen-weight copies, and about as much
  again for the gradients flowing through it.
- peak: the larger of the end of the forward pass (all of the above that the forward holds) and the backward.

Not counted: the CUDA context and allocator fragmentation (~0.5-1 GB on a GPU), the score head's tiny output,
the data. ``measure_activations`` checks the activation formula against what autograd really keeps (saved
tensors, counted by storage) at TinyLlama's width and reduced depth on this CPU; ``measure_step_peak`` checks
the whole plan against the peak RSS of one training step in a child process.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import torch

GB = 1e9
L4_BF16_PEAK = 121e12      # FLOP/s, dense bf16 tensor cores (NVIDIA L4 datasheet; 242 with sparsity)
L4_MEMORY = 24e9           # bytes on the card; the plan's target leaves headroom: <= 20 GB
PLAN_LIMIT = 20e9
MFU = 0.40                 # the stated fraction of the L4's bf16 peak a training step reaches
ORIGINAL_TRAINING_HOURS = (20, 24)   # the original study's reported training time


def arch_config(arch: str = "tinyllama-1.1b", **over):
    from transformers import LlamaConfig

    from .serving.arch import ARCHS
    return LlamaConfig(**dict(ARCHS[arch], **over), num_labels=2, pad_token_id=0)


def meta_classifier(arch: str = "tinyllama-1.1b", **over):
    """The classifier (``LlamaForSequenceClassification``, 2 labels) of a named architecture on the meta device."""
    from transformers import LlamaForSequenceClassification
    with torch.device("meta"):
        return LlamaForSequenceClassification(arch_config(arch, **over))


def prepared(prof: dict, method: str, arch: str = "tinyllama-1.1b", **over):
    """The meta classifier made ready to train with ``method`` the way ``build_for_training`` does."""
    from .methods import kind_of, method_settings
    model = meta_classifier(arch, **over)
    with torch.device("meta"):
        return kind_of(prof, method).prepare(model, dict(method_settings(prof, method)))


def counts(model) -> dict:
    """Parameters: all, trainable, trainable weights of matrix products, and one layer's frozen product weights."""
    from .bench import linear_weights
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_linear, n_linear_trainable = linear_weights(model)
    layers = model.config.num_hidden_layers
    return {"total": int(total), "trainable": int(trainable), "linear_trainable": int(n_linear_trainable),
            "frozen_linear_per_layer": int((n_linear - n_linear_trainable) / layers)}


def activation_bytes(cfg, checkpointing: bool) -> int:
    """Bytes autograd keeps per token per layer of a Llama block under bf16 autocast (module docstring)."""
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    kv = h * cfg.num_key_value_heads // n
    return 4 * h if checkpointing else 30 * h + 8 * i + 4 * kv + 4 * n + 8


def memory(model, batch: int, seq: int, checkpointing: bool) -> dict:
    """The plan of one training step (bytes per component, and the peak) for a prepared model."""
    cfg, c = model.config, counts(model)
    layers, tokens = cfg.num_hidden_layers, batch * seq
    frozen_copies = 2 * c["frozen_linear_per_layer"]            # one layer's bf16 copies of frozen weights
    layer_act = activation_bytes(cfg, False) * tokens
    part = {"weights": 4 * c["total"], "gradients": 4 * c["trainable"], "optimizer": 8 * c["trainable"],
            "autocast_cache": 2 * c["linear_trainable"],
            "embedding_output": 4 * cfg.hidden_size * tokens}
    if checkpointing:
        part["activations"] = activation_bytes(cfg, True) * tokens * layers
        backward = layer_act + frozen_copies + layer_act        # one layer recomputed, and its gradients
    else:
        part["activations"] = (layer_act + frozen_copies) * layers
        backward = layer_act                                    # the gradients flowing through a layer
    states = part["weights"] + part["gradients"] + part["optimizer"]
    forward_end = states + part["autocast_cache"] + part["embedding_output"] + part["activations"]
    backward_peak = states + part["embedding_output"] + part["activations"] + backward
    return {"bytes": part, "backward_working_set": backward, "peak": max(forward_end, backward_peak),
            "peak_at": "forward end" if forward_end >= backward_peak else "backward",
            "params": c, "tokens_per_micro_batch": tokens, "gradient_checkpointing": checkpointing}


def _settings(prof: dict, method: str) -> tuple[int, int, bool, int]:
    from .methods import method_settings
    t = dict(prof["training"]["common"], **method_settings(prof, method))
    return (int(t["per_device_train_batch_size"]), int(prof["data"]["max_length"]),
            bool(t.get("gradient_checkpointing")), int(t.get("gradient_accumulation_steps", 1)))


def memory_plan(prof: dict, arch: str = "tinyllama-1.1b", measured: dict | None = None) -> dict:
    """Per method of the profile: each component in GB, with and without checkpointing, at the profile's settings."""
    out = {"arch": arch, "limit_gb": PLAN_LIMIT / GB, "device_gb": L4_MEMORY / GB, "methods": {},
           "formula": "activations per token per layer: 30h + 8i + 4kv + 4n + 8 bytes (4h with checkpointing); "
                      "weights 4P, gradients 4T, AdamW 8T, autocast cache 2W (see loradrift/plan.py)"}
    for method in prof["methods"]:
        batch, seq, ckpt, accum = _settings(prof, method)
        model = prepared(prof, method, arch)
        rows = {}
        for with_ckpt in (True, False):
            m = memory(model, batch, seq, with_ckpt)
            rows["with_checkpointing" if with_ckpt else "without_checkpointing"] = {
                "gb": {k: round(v / GB, 3) for k, v in m["bytes"].items()},
                "backward_working_set_gb": round(m["backward_working_set"] / GB, 3),
                "peak_gb": round(m["peak"] / GB, 2), "peak_at": m["peak_at"], "fits": m["peak"] <= PLAN_LIMIT}
        chosen = rows["with_checkpointing" if ckpt else "without_checkpointing"]
        out["methods"][method] = {"batch": batch, "max_length": seq, "gradient_accumulation_steps": accum,
                                  "gradient_checkpointing": ckpt, "params": m["params"],
                                  "peak_gb": chosen["peak_gb"], "fits": chosen["fits"], **rows}
    if measured:
        out["check"] = measured
    return out


# ---------------------------------------------------------------------------------------- measurements
def measure_activations(layers: tuple[int, int] = (1, 2), batch: int = 2, seq: int = 96,
                        arch: str = "tinyllama-1.1b") -> dict:
    """Bytes per token per layer autograd keeps for the backward (saved tensors, counted once per storage,
    parameters and bf16 weight copies left out), from the difference of two depths at the architecture's width,
    with and without checkpointing; beside the formula's value. No padding: SDPA's fused causal path."""
    from transformers import LlamaForSequenceClassification
    out = {}
    for ckpt in (False, True):
        kept = []
        for n in layers:
            torch.manual_seed(0)
            cfg = arch_config(arch, num_hidden_layers=n)
            model = LlamaForSequenceClassification(cfg).train()
            if ckpt:
                model.gradient_checkpointing_enable()
            weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
            shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape[::-1]) for p in model.parameters()}
            seen = {}

            def pack(t, seen=seen):
                st = t.untyped_storage()
                if st.data_ptr() not in weights and not (t.dtype == torch.bfloat16 and tuple(t.shape) in shapes
                                                         and t.dim() == 2 and t.shape[0] != batch * seq):
                    seen[st.data_ptr()] = st.nbytes()
                return t
            x = torch.randint(3, cfg.vocab_size, (batch, seq))
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                    torch.autocast("cpu", dtype=torch.bfloat16):
                model(input_ids=x, labels=torch.zeros(batch, dtype=torch.long))
            kept.append(sum(seen.values()))
        measured = (kept[1] - kept[0]) / ((layers[1] - layers[0]) * batch * seq)
        predicted = activation_bytes(cfg, ckpt)
        out["with_checkpointing" if ckpt else "without_checkpointing"] = {
            "measured_bytes_per_token_layer": measured, "predicted": predicted, "ratio": measured / predicted}
    return {"arch": arch, "layers": list(layers), "batch": batch, "seq": seq, **out}


_STEP = r"""
import json, re, sys, torch
from loradrift.plan import arch_config
from transformers import LlamaForSequenceClassification
a = json.loads(sys.argv[1])
torch.manual_seed(0)
model = LlamaForSequenceClassification(arch_config(a["arch"], num_hidden_layers=a["layers"])).train()
if a["ckpt"]:
    model.gradient_checkpointing_enable()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
x = torch.randint(3, model.config.vocab_size, (a["batch"], a["seq"]))
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=x, labels=torch.zeros(a["batch"], dtype=torch.long)).loss
    loss.backward()
    opt.step()
step()                      # creates the gradients and AdamW's states
opt.zero_grad(set_to_none=False)
hwm = re.search(r"VmHWM:\s*(\d+)", open("/proc/self/status").read()).group(1)
print(json.dumps({"peak_kb": int(hwm)}))
"""


def measure_step_peak(layers: int = 2, batch: int = 2, seq: int = 128, ckpt: bool = True,
                      arch: str = "tinyllama-1.1b") -> dict:
    """Peak RSS of a training step (bf16 autocast, fp32 weights, fused AdamW) at the architecture's width and
    ``layers`` depth, in a child process, beside the plan's peak for that configuration. The child's peak covers
    the first step too (no gradients or AdamW states before it); RSS also holds the Python runtime and
    libraries, measured in another child (``VmHWM``: ``ru_maxrss`` survives exec) and subtracted."""
    import os
    args = json.dumps({"arch": arch, "layers": layers, "batch": batch, "seq": seq, "ckpt": ckpt})
    probe = ("import re, torch, transformers, loradrift.plan; "
             "print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    runtime_kb = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                    env=env).stdout.split()[-1])
    res = subprocess.run([sys.executable, "-c", _STEP, args], capture_output=True, text=True, check=True, env=env)
    peak_kb = json.loads(res.stdout.strip().splitlines()[-1])["peak_kb"]
    with torch.device("meta"):
        from transformers import LlamaForSequenceClassification
        model = LlamaForSequenceClassification(arch_config(arch, num_hidden_layers=layers))
    plan = memory(model, batch, seq, ckpt)
    measured = (peak_kb - runtime_kb) * 1024
    return {"arch": arch, "layers": layers, "batch": batch, "seq": seq, "gradient_checkpointing": ckpt,
            "measured_peak_gb": round(measured / GB, 3), "planned_peak_gb": round(plan["peak"] / GB, 3),
            "ratio": round(measured / plan["peak"], 3), "runtime_rss_gb": round(runtime_kb * 1024 / GB, 3),
            "how": "peak RSS (VmHWM) of a child process over two training steps, less a child's after "
                   "importing torch and transformers"}


# ---------------------------------------------------------------------------------------- time
GLUE_TRAIN = {"rte": 2490, "mrpc": 3668, "sst2": 67349}   # GLUE train split sizes (checked against the TSVs)
GLUE_TEST = {"rte": 277, "mrpc": 408, "sst2": 872}        # GLUE validation = the study's test split
# TinyLlama's (Llama 2, 32k) tokenizer against SmolLM2's (49k) on English GLUE text: assumed ~1.1 tokens per
# SmolLM2 token (a smaller vocabulary splits English a little finer); the lengths are data/cpu-v1/data_stats.json's
TOKENIZER_RATIO = 1.1
L4_BANDWIDTH = 300e9       # bytes/s of the L4's memory (datasheet): batch-1 serving reads every weight per step
SEARCH_EPOCHS = 3          # the search space's num_train_epochs (2-4) on average; no trial assumed pruned
DRIFT_FORWARDS = 2         # forwards per test example and model: one for masked/last pooling, ~one for
#                            the original's pooling at sampled pad positions (drift.original_pad_positions)
DEPLOY_STREAMS = 4         # the interleaved stream and the three single-task streams


def mean_tokens(stats_profile: str = "cpu-v1") -> dict:
    """Mean tokens per example per task and split at TinyLlama's tokenizer (``TOKENIZER_RATIO`` x SmolLM2's)."""
    from .store import data_dir, read_json
    stats = read_json(data_dir(stats_profile) / "data_stats.json")
    return {(r["task"], r["split"]): r["tokens_mean"] * TOKENIZER_RATIO for r in stats["splits"]}


def time_plan(prof: dict, arch: str = "tinyllama-1.1b", mfu: float = MFU) -> dict:
    """FLOPs of each stage at TinyLlama scale with the profile's full GLUE data, and the L4 hours they take at
    ``mfu`` of its bf16 peak (serving at batch 1 is bound by reading the weights instead: the slower of the two)."""
    from .bench import flops_per_token
    from .methods import kind_of
    tokens = mean_tokens()
    rate = mfu * L4_BF16_PEAK
    stages, units = {}, {}
    n_seeds, tasks = len(prof["seeds"]), list(prof["tasks"])
    base = meta_classifier(arch)
    for method in prof["methods"]:
        model = prepared(prof, method, arch)
        kind = kind_of(prof, method).name
        batch, _, ckpt, accum = _settings(prof, method)
        c = counts(model)
        epochs = float(prof["methods"][method]["num_train_epochs"])
        evals = int(prof["training"]["common"].get("evals_per_epoch", 1))
        for task in tasks:
            val = int(prof["data"]["tasks"][task]["validation_size"])
            n, seq = GLUE_TRAIN[task] - val, tokens[(task, "train")]
            step = flops_per_token(model, seq, kind) + (flops_per_token(model, seq, "extract") if ckpt else 0)
            fwd = flops_per_token(model, seq, "extract")
            per_epoch = n * seq * step + evals * val * seq * fwd
            # the time a step takes: its FLOPs at ``mfu``, but never less than reading the fp32 weights once per
            # pass (forward, recomputed forward, backward's two products) and, per optimizer step, reading and
            # writing the fp32 weights, gradients and AdamW's states (32 bytes per trainable parameter)
            micro = math.ceil(n / batch)
            passes = 4 if ckpt else 3
            compute_s = n * seq * step / rate
            memory_s = micro * passes * 4 * c["total"] / L4_BANDWIDTH + micro / accum * 32 * c["trainable"] / L4_BANDWIDTH
            eval_s = evals * max(val * seq * fwd / rate, math.ceil(val / 32) * 2 * c["total"] / L4_BANDWIDTH)
            units[f"{task}-{method}"] = {"train_examples": n, "mean_tokens": round(seq, 1),
                                         "flops_per_unit": epochs * per_epoch, "flops_per_epoch": per_epoch,
                                         "seconds_per_epoch": max(compute_s, memory_s) + eval_s,
                                         "bound": "compute" if compute_s >= memory_s else "memory"}
    train = sum(u["flops_per_unit"] for u in units.values()) * n_seeds
    n_trials = int((prof.get("search") or {}).get("n_trials", 0))
    search = sum(u["flops_per_epoch"] for u in units.values()) * SEARCH_EPOCHS * n_trials
    test_tokens = sum(GLUE_TEST[t] * tokens[(t, "test")] for t in tasks)
    n_models = 1 + len(prof["methods"]) * len(tasks) * n_seeds
    drift = n_models * DRIFT_FORWARDS * test_tokens * flops_per_token(base, test_tokens / sum(GLUE_TEST.values()),
                                                                      "extract")
    d = prof.get("deploy") or {}
    seq = test_tokens / sum(GLUE_TEST[t] for t in tasks)
    weights_bytes = 2 * counts(base)["total"]
    deploy_s = 0.0
    for b in d.get("batch_sizes", [1, 8, 32]):
        batches = (int(d.get("n_requests", 500)) // b + int(d.get("warmup_batches", 10))) * int(d.get("repeats", 3))
        per_batch = max(b * seq * flops_per_token(base, seq, "extract") / rate, weights_bytes / L4_BANDWIDTH)
        deploy_s += batches * per_batch * len(d.get("modes", [])) * DEPLOY_STREAMS
    train_s = sum(u["seconds_per_epoch"] * float(prof["methods"][k.split("-", 1)[1]]["num_train_epochs"])
                  for k, u in units.items()) * n_seeds
    search_s = sum(u["seconds_per_epoch"] for u in units.values()) * SEARCH_EPOCHS * n_trials
    stages["search"] = {"flops": search, "hours": round(search_s / 3600, 2)}
    stages["train"] = {"flops": train, "hours": round(train_s / 3600, 2)}
    stages["drift"] = {"flops": drift, "hours": round(drift / rate / 3600, 2)}
    stages["deploy"] = {"flops": None, "hours": round(deploy_s / 3600, 2),
                        "note": "per batch the slower of compute and reading the bf16 weights at 300 GB/s"}
    return {"arch": arch, "device": "NVIDIA L4", "bf16_peak_tflops": L4_BF16_PEAK / 1e12, "fraction_of_peak": mfu,
            "units": units, "stages": stages,
            "total_hours": round(sum(v["hours"] for v in stages.values()), 1),
            "training_hours": stages["train"]["hours"], "original_training_hours": list(ORIGINAL_TRAINING_HOURS),
            "assumptions": {
                "examples": "GLUE train sizes less the validation slice; test = GLUE validation",
                "tokens": f"data/cpu-v1/data_stats.json means (SmolLM2 tokenizer) x {TOKENIZER_RATIO} for TinyLlama's; "
                          "real tokens only (group_by_length keeps padding small)",
                "train": "6 FLOPs per weight per token (full) or 4 (+ trainable, LoRA), plus one forward more under "
                         "gradient checkpointing, plus the evaluations; a step takes at least the time to read the "
                         "fp32 weights per pass and, per optimizer step, 32 bytes per trainable parameter at 300 GB/s "
                         "(short SST-2 batches are bound by that, not by FLOPs)",
                "search": f"every trial runs {SEARCH_EPOCHS} epochs (the space's mean), none pruned: an upper bound",
                "drift": f"{DRIFT_FORWARDS} forwards per test example for the base and every unit",
                "deploy": f"{DEPLOY_STREAMS} streams per mode and batch size"}}


def write_memory_plan(prof: dict, check: bool = True) -> dict:
    """``data/<profile>/memory_plan.json``: the plan, with the activation formula checked against autograd's saved
    tensors and the whole plan against a measured step (TinyLlama's width, 2 layers; ``check``)."""
    from .store import result_path, write_json
    measured = None
    if check:
        measured = {"activations": measure_activations(),
                    "step_peaks": [measure_step_peak(2, 2, 128, True), measure_step_peak(2, 4, 256, False)]}
    plan = memory_plan(prof, measured=measured)
    write_json(result_path(prof["name"], "memory_plan"), plan)
    return plan


def write_time_plan(prof: dict) -> dict:
    """``data/<profile>/time_plan.json``."""
    from .store import result_path, write_json
    plan = time_plan(prof)
    write_json(result_path(prof["name"], "time_plan"), plan)
    return plan


def plan_tables(profile: str = "l4"):
    """(memory, time) display tables from ``data/<profile>/``'s plans, or None where a plan is missing: one row
    per method (peak with and without checkpointing, its parts) and one per stage (L4 hours)."""
    import pandas as pd

    from .store import read_json, result_path
    mem_path, time_path = result_path(profile, "memory_plan"), result_path(profile, "time_plan")
    mem = tim = None
    if mem_path.exists():
        rows = []
        for method, m in read_json(mem_path)["methods"].items():
            parts = m["with_checkpointing"]["gb"]
            rows.append({"method": method, "batch x tokens": f"{m['batch']} x {m['max_length']}",
                         "trainable (M)": round(m["params"]["trainable"] / 1e6, 2),
                         **{f"{k} GB": v for k, v in parts.items()},
                         "peak GB": m["with_checkpointing"]["peak_gb"],
                         "peak GB, no checkpointing": m["without_checkpointing"]["peak_gb"]})
        mem = pd.DataFrame(rows)
    if time_path.exists():
        t = read_json(time_path)
        tim = pd.DataFrame([{"stage": k, "PFLOP": None if v["flops"] is None else round(v["flops"] / 1e15, 1),
                             "L4 hours": v["hours"]} for k, v in t["stages"].items()])
    return mem, tim
