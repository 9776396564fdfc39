"""Architecture-only runs: the benchmark on a randomly initialised model of a named architecture, with
random, non-zero adapters and random token inputs of realistic lengths. A pure cost measurement,
labelled as such wherever it appears: no labels, no accuracy; the identity checks still hold.

Architectures and settings: ``profiles/_arch.yaml`` (``archs``; ``run`` for every run, then
``by_device``; keyword arguments override both). Results: ``data/arch-<arch>-<cpu|cuda>/``.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from .. import LoraDriftError
from ..store import repo_root
from .analysis import frames as result_frames
from .engine import DESIGN, Bench, loadavg, plan_points, requests_needed, run_record, tolerance, write_results
from .requests import random_requests
from .servers import IdsEncoder
from .sources import ModelSource


def _arch_settings() -> dict:
    from ..config import PROFILE_DIR
    return yaml.safe_load((PROFILE_DIR / "_arch.yaml").read_text())


_SETTINGS = _arch_settings()
ARCHS: dict[str, dict] = _SETTINGS["archs"]
FALLBACK_LENGTHS: dict[str, tuple[float, float]] = {t: tuple(v) for t, v in _SETTINGS["fallback_lengths"].items()}


def arch_config(arch: str, device: str | None = None, **overrides) -> dict:
    """The run's settings: ``_arch.yaml``'s ``run``, then its device's, then keyword overrides; the
    timing settings checked as a profile's (``settings.check_comparisons``)."""
    from .settings import TIMING, check_comparisons
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if arch not in ARCHS:
        raise LoraDriftError(f"unknown architecture {arch!r}: choose one of {list(ARCHS)} "
                             "(or add it to loradrift/profiles/_arch.yaml)")
    cfg = {**copy.deepcopy(_SETTINGS["run"]), **copy.deepcopy(_SETTINGS["by_device"][device_kind(device)])}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    timing = {k: cfg[k] for k in TIMING if k in cfg}
    cfg["comparisons"] = check_comparisons(timing, f"_arch.yaml settings for {device_kind(device)}")
    cfg.update({"arch": arch, "device": device})
    return cfg


def device_kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def arch_out_dir(arch: str, device: str) -> Path:
    return repo_root() / "data" / f"arch-{arch}-{device_kind(device)}"


def realistic_lengths(task: str, n: int, seed: int = 0, glue_source=None, max_length: int = 512,
                      source: str = "auto") -> tuple[list[int], str]:
    """Token lengths of ``n`` test-split examples of ``task`` under the cpu profile's (SmolLM2) tokenizer,
    when GLUE and that model are available (``source="auto"``); otherwise (or with ``source="fallback"``)
    draws from a log-normal with the means and sds of FALLBACK_LENGTHS."""
    try:
        if source == "fallback":
            raise LookupError
        from ..config import load_profile
        from ..data import study_splits, texts
        from ..models import base_model_path, load_tokenizer
        prof = load_profile("cpu")
        tok = load_tokenizer(base_model_path(prof))
        test = study_splits(prof, task, glue_source)["test"]
        lens = [min(len(x), max_length) for x in tok(texts(task, test))["input_ids"]]
        rng = np.random.default_rng(seed)
        return [int(lens[i]) for i in rng.permutation(len(lens))[:n]] * (n // len(lens) + 1), "GLUE test split, SmolLM2 tokenizer"
    except Exception:
        mean, sd = FALLBACK_LENGTHS[task]
        s2 = math.log(1 + (sd / mean) ** 2)
        rng = np.random.default_rng(seed)
        L = rng.lognormal(math.log(mean) - s2 / 2, math.sqrt(s2), n)
        return [int(min(max(2, round(x)), max_length)) for x in L], "log-normal fallback (FALLBACK_LENGTHS)"


def random_classifier(arch_kwargs: dict, dtype, seed: int, device: str):
    """A randomly initialised LlamaForSequenceClassification (2 labels, pad id 0) of the given shape."""
    from transformers import LlamaConfig, LlamaForSequenceClassification
    cfg = LlamaConfig(**arch_kwargs, num_labels=2, pad_token_id=0)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForSequenceClassification(cfg).to(dtype)
    return model.eval()


def randomize_adapter(model, adapter: str, seed: int, std: float | None = None):
    """Give an adapter random, non-zero LoRA A and B and its own random score head (so it is no no-op)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in model.named_parameters():
        if f".{adapter}." not in name and not name.endswith(f".{adapter}.weight"):
            continue
        if "lora_A" in name or "lora_B" in name:
            s = std if std is not None else 1.0 / math.sqrt(p.shape[1])
            p.data.copy_((torch.randn(p.shape, generator=g) * s).to(p.dtype))
        elif "modules_to_save" in name:
            p.data.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.dtype))
    return model


def random_lora_model(arch_kwargs: dict, dtype, device: str, adapters: list[str], cfg: dict):
    """Base (seeded) + one random adapter per name (seeded by position): the architecture-only LoRA model."""
    from peft import get_peft_model

    from ..methods import LoRA
    base = random_classifier(arch_kwargs, dtype, int(cfg["seed"]), device)
    lc = LoRA.peft_config({**cfg, "lora_dropout": 0.0})
    model = get_peft_model(base, lc, adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, lc)
    for i, name in enumerate(adapters):
        randomize_adapter(model, name, int(cfg["seed"]) + 1 + i)
    model.set_adapter(adapters[0])
    return model.eval()


class RandomSource(ModelSource):
    """Random models of one architecture. Every LoRA model holds the same seeded adapters, so a task's
    adapter alone and the resident model give comparable logits; ``full`` is a plain model of the
    same shape (its cost is ``base``'s)."""

    def __init__(self, arch_kwargs: dict, cfg: dict):
        from ..models import DTYPES
        self.kw, self.cfg, self.dtype, self.device = arch_kwargs, cfg, DTYPES[cfg["dtype"]], cfg["device"]
        self.encode = IdsEncoder(0, int(cfg["max_length"]), self.device)

    def base(self, task):
        return random_classifier(self.kw, self.dtype, int(self.cfg["seed"]), self.device), {}

    full = base

    def adapter(self, task):
        model = random_lora_model(self.kw, self.dtype, self.device, list(self.cfg["tasks"]), self.cfg)
        for t in self.cfg["tasks"]:
            if t != task:
                model.delete_adapter(t)
        model.set_adapter(task)
        return model, {}

    def resident(self, tasks):
        return random_lora_model(self.kw, self.dtype, self.device, tasks, self.cfg), {"adapters_resident": len(tasks)}

    def shape(self):
        from transformers import LlamaConfig

        from .costmodel import llama_shape
        return llama_shape(LlamaConfig(**self.kw), {"r": self.cfg["lora_r"], "targets": self.cfg["target_modules"]},
                           dtype_bytes=torch.finfo(self.dtype).bits // 8)


def arch_storage(arch_kwargs: dict, cfg: dict, dtype) -> list[dict]:
    """Storage computed from parameter counts (nothing is written to disk in architecture-only mode)."""
    h, L, kv = arch_kwargs["hidden_size"], arch_kwargs["num_hidden_layers"], arch_kwargs["num_key_value_heads"]
    kv_dim = h // arch_kwargs["num_attention_heads"] * kv
    i_, V = arch_kwargs["intermediate_size"], arch_kwargs["vocab_size"]
    per_layer = h * h * 2 + h * kv_dim * 2 + 3 * h * i_ + 2 * h
    total = V * h + L * per_layer + h + 2 * h  # embeddings, layers, final norm, score head
    dims = {"q_proj": (h, h), "k_proj": (h, kv_dim), "v_proj": (h, kv_dim), "o_proj": (h, h),
            "gate_proj": (h, i_), "up_proj": (h, i_), "down_proj": (i_, h)}
    r = int(cfg["lora_r"])
    lora = L * sum(r * (a + b) for m, (a, b) in dims.items() if m in cfg["target_modules"]) + 2 * h
    nbytes = torch.finfo(dtype).bits // 8
    row = {"task": "", "source": "parameter count"}
    return [{"artifact": "base model", **row, "bytes": total * nbytes},
            {"artifact": "full fine-tuned model", **row, "bytes": total * nbytes},
            {"artifact": "LoRA adapter (incl. score head)", **row, "bytes": lora * nbytes}]


def _pools(cfg: dict, source: RandomSource, vocab_size: int, glue_source) -> tuple[dict, dict]:
    """Each task's random requests of realistic lengths, and where the lengths came from."""
    n, pools, origin = requests_needed(cfg), {}, {}
    for i, t in enumerate(cfg["tasks"]):
        lens, origin[t] = realistic_lengths(t, n, i, glue_source, int(cfg["max_length"]), cfg.get("lengths", "auto"))
        pools[t] = source.requests(random_requests(t, lens[:n], vocab_size, seed=100 + i))
    return pools, origin


def run_arch(arch: str = "tinyllama-1.1b", device: str | None = None, glue_source=None, log=print,
             **overrides) -> dict:
    """The benchmark on random weights of architecture ``arch`` (``ARCHS``), with random adapters of the
    study's rank and targets and random token inputs of realistic lengths. Results:
    ``data/arch-<arch>-<cpu|cuda>/deployment_*.csv``. Returns {"out_dir", "meta"}."""
    cfg = arch_config(arch, device, **overrides)
    out_dir, arch_kwargs = arch_out_dir(arch, cfg["device"]), ARCHS[arch]
    t_start, load_before = time.perf_counter(), loadavg()
    source = RandomSource(arch_kwargs, cfg)
    pools, length_source = _pools(cfg, source, arch_kwargs["vocab_size"], glue_source)
    log(f"architecture-only {arch} (RANDOM weights) on {cfg['device']}, {cfg['dtype']}: comparisons "
        f"{list(cfg['comparisons'])}, {cfg['repeats']} repeats")
    bench = Bench(source, pools, cfg, log).run(plan_points(cfg, list(cfg["tasks"])))
    frames = result_frames(bench, arch_storage(arch_kwargs, cfg, source.dtype), tolerance(source.dtype))
    meta = {"kind": "architecture-only (random weights, random adapters, random tokens)", "design": DESIGN,
            "arch": arch, "arch_config": arch_kwargs, "device": cfg["device"], "dtype": cfg["dtype"], "config": cfg,
            "length_source": length_source, "shape": source.shape(),
            "mean_length": {t: float(np.mean([r.length for r in v])) for t, v in pools.items()},
            **run_record(load_before, t_start, bench)}
    write_results(out_dir, frames, meta)
    log(f"architecture-only results -> {out_dir} ({meta['wall_time_s']:.0f} s)")
    return {"out_dir": out_dir, "meta": meta}
