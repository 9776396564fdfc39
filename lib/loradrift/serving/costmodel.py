"""A cost model beside every measured ratio: what each mode should cost, from the model's shapes, the
batches it actually served, and two measured constants.

- **FLOPs per request**: the Llama forward on the padded batch (q, k, v, o, the MLP, attention's
  two L x L products and the score head on every position), plus for an unmerged mode each LoRA module's
  branch, ``2 r (in + out)`` FLOPs (``r (in + out)`` multiply-adds) per token and the scale and add (``lora_flops``).
- **Weight bytes per request**: the weights a forward reads (the embedding rows of its tokens, every
  layer, the head; an unmerged mode also the A and B of each adapter in the batch), over the batch size.
- **Operator calls**: ATen operator calls of one forward, counted (``count_ops``) on the mode's
  first timed batch; their cost: the measured time of one tiny operator (``dispatch_cost``).

The predicted ratio of two modes at one point (``predict``) takes the measured time of the
denominator, splits it into its operator calls (x the dispatch cost) and the rest (its FLOPs at the
rate that rest implies), and prices the numerator's FLOPs and calls the same way. It is a two-term
model: memory traffic enters only as the bytes column, and per-module Python work (peft's hooks and
checks) only where it issues operator calls.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch


def llama_shape(config, lora: dict | None = None, n_labels: int = 2, dtype_bytes: int = 4) -> dict:
    """The dimensions the cost model needs, from a Llama config (``lora``: {"r", "targets"})."""
    h, heads = int(config.hidden_size), int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or h // heads)
    kv = int(config.num_key_value_heads) * head_dim
    i = int(config.intermediate_size)
    dims = {"q_proj": (h, heads * head_dim), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (heads * head_dim, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    lora = lora or {}
    return {"hidden": h, "layers": int(config.num_hidden_layers), "attn": heads * head_dim, "dims": dims,
            "n_labels": n_labels, "lora_r": int(lora.get("r", 0)), "targets": list(lora.get("targets", [])),
            "dtype_bytes": dtype_bytes}


def base_flops(shape: dict, L: int) -> float:
    """FLOPs of one sequence of ``L`` (padded) tokens through the plain model."""
    per_token = 2 * sum(a * b for a, b in shape["dims"].values())
    attention = 4 * L * shape["attn"]            # QK^T and AV, per token
    return shape["layers"] * L * (per_token + attention) + 2 * L * shape["hidden"] * shape["n_labels"]


def lora_flops(shape: dict, L: int) -> float:
    """FLOPs of the LoRA branches of one sequence: x A^T, (.) B^T, the scale and the add, per target."""
    r = shape["lora_r"]
    per_token = sum(2 * r * (a + b) + 2 * b for m, (a, b) in shape["dims"].items() if m in shape["targets"])
    return shape["layers"] * L * per_token


def weight_bytes(shape: dict, tokens: int, adapters: int) -> float:
    """Bytes of weights one forward reads: embedding rows, layers, head; and ``adapters`` adapters' A and B."""
    layer = sum(a * b for a, b in shape["dims"].values())
    ab = sum(shape["lora_r"] * (a + b) for m, (a, b) in shape["dims"].items() if m in shape["targets"])
    n = tokens * shape["hidden"] + shape["layers"] * (layer + adapters * ab) + shape["hidden"] * shape["n_labels"]
    return float(n * shape["dtype_bytes"])


def batch_costs(shape: dict, reqs: list, batches: list[list[int]], unmerged: bool) -> dict:
    """FLOPs and weight bytes of a window's batches (each padded to its longest request)."""
    flops = nbytes = 0.0
    for b in batches:
        L, n = max(reqs[i].length for i in b), len(b)
        flops += n * (base_flops(shape, L) + (lora_flops(shape, L) if unmerged else 0.0))
        adapters = len({reqs[i].task for i in b}) if unmerged else 0
        nbytes += weight_bytes(shape, n * L, adapters)
    return {"flops": flops, "weight_bytes": nbytes}


def count_ops(fn: Callable[[], object]) -> int:
    """ATen operator calls made by ``fn()`` (a forward), counted with a dispatch mode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def dispatch_cost(device: str = "cpu", calls: int = 2000, rounds: int = 7) -> float:
    """Seconds per call of a tiny operator (adding two 8-element tensors): the fixed cost of one
    operator call from Python (median of ``rounds``)."""
    a = torch.ones(8, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        for _ in range(rounds):
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                torch.add(a, a)
            sync()
            times.append((time.perf_counter() - t0) / calls)
    return float(np.median(times))


def predict(num: dict, den: dict, dispatch_s: float) -> float:
    """Predicted time ratio num / den at one point. Each of ``num`` and ``den`` holds per-window
    ``flops``, ``ops`` (operator calls) and, for ``den``, the measured ``seconds``: the den's time less
    its calls' cost is its FLOP time, whose rate prices the num's FLOPs."""
    t_den = den["seconds"]
    compute = t_den - den["ops"] * dispatch_s
    if not t_den > 0 or math.isnan(compute):
        return math.nan
    rate = den["flops"] / compute if compute > 0 else math.inf
    t_num = num["flops"] / rate + num["ops"] * dispatch_s
    return float(t_num / t_den)
