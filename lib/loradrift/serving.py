"""The deployment benchmark (RQ2): what serving a LoRA-adapted classifier costs, measured honestly.

Serving *modes* (``MODES``):

- ``base``          the base model with an untrained ``score`` head (a cost reference only);
- ``full``          a fully fine-tuned model (one per task);
- ``lora``          base + one task's adapter, unmerged (``PeftModel``);
- ``merged``        the same adapter merged into the weights (``merge_and_unload``);
- ``multi``         one base with *every* task's adapter resident (``load_adapter``), serving a stream
                    that interleaves tasks batch by batch; ``set_adapter`` runs *inside* the timed region;
- ``mixed``         the same resident model, but one batch carries requests for different adapters
                    (peft's ``adapter_names=`` forward argument);
- ``routed-merged`` one merged model per task, all resident, each batch routed to its task's model:
                    what ``multi`` should be compared with (the original's H2 as written).

Every timed call covers what a server does for a batch: tokenise and pad, switch adapter if needed,
forward, synchronise (``torch.cuda.synchronize`` on a GPU) and bring the logits to the host. Clock:
``time.perf_counter``. Requests are real test-split examples in the training format. Per-request
latency is the latency of the batch that carries it; throughput is requests / wall time of the whole
timed stream (measured, not derived). Ratios between modes carry bootstrap intervals over batches
(paired where the two modes served identical batches).

Correctness is measured on the same forward passes: ``multi`` and ``mixed`` must predict exactly
what the single-adapter ``lora`` model predicts (each task's trained ``score`` head lives in
``modules_to_save`` and must switch with the adapter), ``merged`` is compared with ``lora`` (agreement,
max |Δlogit|), and every mode's accuracy is computed on the labelled requests it served.

The *architecture-only* mode (``run_arch``) runs the same benchmark on a randomly initialised model
of a named architecture with random, non-zero adapters and random token inputs of realistic lengths:
a pure cost measurement, labelled as such wherever it appears.

Results: ``data/<profile>/deployment_*.csv`` and ``deployment_meta.json``; architecture-only runs
write the same files under ``data/arch-<arch>-<cpu|cuda>/``.
"""
from __future__ import annotations

import copy
import gc
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from . import LoraDriftError
from .config import config_hash, environment, run_id
from .store import data_dir, read_json, repo_root, write_csv, write_json

MODES = ("base", "full", "lora", "merged", "multi", "mixed", "routed-merged")
SINGLE_MODES = ("base", "full", "lora", "merged")          # one task's stream, one model
MULTI_MODES = ("multi", "mixed", "routed-merged")           # the interleaved stream of all tasks

MODE_INFO = {
    "base": "base model, untrained head (cost reference)",
    "full": "full fine-tuned model",
    "lora": "LoRA unmerged (peft)",
    "merged": "LoRA merged (merge_and_unload)",
    "multi": "all adapters resident, set_adapter per batch (timed)",
    "mixed": "all adapters resident, mixed-adapter batches (adapter_names=)",
    "routed-merged": "one merged model per task, all resident, batches routed",
}

# mode pairs whose latency ratio the chapter reports: (numerator, denominator, stream family)
RATIOS = [("lora", "merged", "single"), ("lora", "full", "single"), ("merged", "full", "single"),
          ("full", "base", "single"), ("merged", "base", "single"), ("lora", "base", "single"),
          ("multi", "routed-merged", "multi"), ("mixed", "routed-merged", "multi"), ("mixed", "multi", "multi")]

# What runs by default. CPU: reduced so that the cpu profile's benchmark (SmolLM2-135M, fp32) fits in about
# 15-20 minutes on 2 cores (measured: 869 s with the interleaved modes at batch 1 and 8 only): one repeat; no
# `base` (a plain model of the same shape as `full` and `merged`, so the same cost); `full` at batch 1
# only (the original's comparison; `merged` is the same architecture at every batch size).
# `batch_sizes_by_mode` overrides `batch_sizes` per mode.
DEFAULTS = {
    "cuda": {"batch_sizes": [1, 8, 32], "batch_sizes_by_mode": {}, "n_requests": 500, "warmup_batches": 10,
             "repeats": 3, "modes": list(MODES), "bootstrap": 2000},
    "cpu": {"batch_sizes": [1, 8, 32], "n_requests": 200, "warmup_batches": 1, "repeats": 1,
            "batch_sizes_by_mode": {"full": [1]},
            "modes": ["full", "lora", "merged", "multi", "mixed", "routed-merged"], "bootstrap": 2000},
}


def mode_batch_sizes(cfg: dict, mode: str) -> list[int]:
    return [int(b) for b in (cfg.get("batch_sizes_by_mode") or {}).get(mode, cfg["batch_sizes"])]

# Architecture-only runs. TinyLlama-1.1B's config (the original study's model) typed in; SmolLM2-135M's too.
ARCHS = {
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                           rms_norm_eps=1e-5, rope_theta=10000.0),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True),
}
ARCH_DEFAULTS = {
    # the full configuration: the original's scale on a GPU
    "cuda": {"batch_sizes": [1, 8, 32], "n_requests": 500, "warmup_batches": 10, "repeats": 3,
             "modes": list(MODES), "tasks": ["rte", "mrpc", "sst2"], "single_tasks": ["rte", "mrpc", "sst2"],
             "dtype": "bfloat16", "bootstrap": 2000, "max_length": 512},
    # reduced for 2 CPU cores (~1 s per request at batch 1 for TinyLlama): batch 1 only, 100 requests
    # per point, one task's stream for the single-adapter modes, no resident copies of merged models
    "cpu": {"batch_sizes": [1], "n_requests": 100, "warmup_batches": 1, "repeats": 1,
            "modes": ["lora", "merged", "multi", "mixed"], "tasks": ["rte", "mrpc", "sst2"],
            "single_tasks": ["mrpc"], "dtype": "float32", "bootstrap": 2000, "max_length": 512},
}
# token lengths used when no tokenizer / GLUE is at hand (SmolLM2 tokenizer on the GLUE validation
# split = our test split, data/cpu/data_stats.json; sd from the 95th percentile): a log-normal
FALLBACK_LENGTHS = {"rte": (73.0, 45.0), "mrpc": (58.0, 15.0), "sst2": (23.0, 11.0)}

FILES = ("latency", "batches", "ratios", "memory", "storage", "correctness", "accuracy")


# ============================================================================ requests and batches
@dataclass
class Request:
    uid: str                      # "<task>:<index into the test split>"
    task: str                     # also the adapter name
    label: int | None = None
    text: str | None = None       # real requests
    ids: list[int] | None = None  # architecture-only requests (random token ids)

    @property
    def adapter(self) -> str:
        return self.task


def real_requests(prof: dict, task: str, n: int, glue_source=None, seed: int = 0) -> list[Request]:
    """``n`` labelled test-split examples of ``task`` in the training format, in a seeded shuffled order."""
    from .data import study_splits, texts
    test = study_splits(prof, task, glue_source)["test"]
    order = np.random.default_rng(seed).permutation(len(test))
    txt = texts(task, test)
    labels = test["label"]
    return [Request(uid=f"{task}:{int(i)}", task=task, label=int(labels[int(i)]), text=txt[int(i)])
            for i in order[:n]]


def random_requests(task: str, lengths: Iterable[int], vocab_size: int, seed: int = 0,
                    low: int = 3) -> list[Request]:
    """Architecture-only requests: uniformly random token ids with the given lengths (no labels)."""
    rng = np.random.default_rng(seed)
    return [Request(uid=f"{task}:{i}", task=task, ids=rng.integers(low, vocab_size, int(L)).tolist())
            for i, L in enumerate(lengths)]


def n_per_point(n_requests: int, bs: int) -> int:
    """Timed requests of one point: at least ``n_requests``, in whole batches."""
    return int(math.ceil(n_requests / bs) * bs)


def single_batches(reqs: list[Request], bs: int, n_requests: int) -> list[list[Request]]:
    """One task's stream in batches of ``bs`` (cycling through the requests if there are too few)."""
    n = n_per_point(n_requests, bs)
    stream = [reqs[i % len(reqs)] for i in range(n)]
    return [stream[i:i + bs] for i in range(0, n, bs)]


def multi_batches(per_task: dict[str, list[Request]], bs: int, n_requests: int) -> list[list[Request]]:
    """The interleaved stream for ``multi`` / ``routed-merged``: task-homogeneous batches, the task
    changing every batch (round robin), about ``n_requests`` in all. Batch k of task t holds the same
    requests as batch k of t's single-task stream, so its logits can be compared exactly."""
    tasks = list(per_task)
    n_task = int(math.ceil(n_requests / len(tasks)))
    per = {t: single_batches(per_task[t], bs, n_task) for t in tasks}
    k = max(len(v) for v in per.values())
    return [per[t][i] for i in range(k) for t in tasks if i < len(per[t])]


def mixed_batches(per_task: dict[str, list[Request]], bs: int, n_requests: int) -> list[list[Request]]:
    """The same requests as ``multi_batches``, interleaved request by request, then cut into batches
    of ``bs``: each batch carries requests for different adapters."""
    homog = multi_batches(per_task, bs, n_requests)
    tasks = list(per_task)
    queues = {t: [r for b in homog if b[0].task == t for r in b] for t in tasks}
    flat, i = [], 0
    while any(queues.values()):
        t = tasks[i % len(tasks)]
        if queues[t]:
            flat.append(queues[t].pop(0))
        i += 1
    return [flat[j:j + bs] for j in range(0, len(flat), bs)]


# ============================================================================ encoders and servers
class TextEncoder:
    """Tokenise and right-pad a batch of texts (truncation at the profile's max_length), as in training."""

    def __init__(self, tokenizer, max_length: int, device: str = "cpu"):
        self.tok, self.max_length, self.device = tokenizer, int(max_length), device

    def __call__(self, batch: list[Request]) -> dict:
        enc = self.tok([r.text for r in batch], truncation=True, max_length=self.max_length,
                       padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


class IdsEncoder:
    """Right-pad a batch of token-id lists (architecture-only requests)."""

    def __init__(self, pad_id: int, max_length: int, device: str = "cpu"):
        self.pad_id, self.max_length, self.device = int(pad_id), int(max_length), device

    def __call__(self, batch: list[Request]) -> dict:
        seqs = [r.ids[:self.max_length] for r in batch]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}


class Server:
    """One serving mode: ``server(batch) -> logits`` (float32, on the host). Everything inside the call
    is what gets timed."""

    mode = "plain"

    def __init__(self, model, encode: Callable):
        self.model, self.encode = model, encode
        self.switches = 0

    def __call__(self, batch: list[Request]) -> torch.Tensor:
        enc = self.encode(batch)
        with torch.inference_mode():
            logits = self._forward(batch, enc)
        return logits.float().cpu()

    def _forward(self, batch, enc):
        return self.model(**enc).logits


class SwitchServer(Server):
    """All adapters resident; ``set_adapter`` when the batch's task differs from the active one."""

    mode = "multi"

    def __init__(self, model, encode, active: str | None = None):
        super().__init__(model, encode)
        self.active = active

    def _forward(self, batch, enc):
        task = _homogeneous(batch)
        if task != self.active:
            self.model.set_adapter(task)
            self.active = task
            self.switches += 1
        return self.model(**enc).logits


class MixedServer(Server):
    """All adapters resident; one forward for a batch of requests for different adapters."""

    mode = "mixed"

    def _forward(self, batch, enc):
        return self.model(**enc, adapter_names=[r.adapter for r in batch]).logits


class RoutedServer(Server):
    """One model per task, all resident; a (task-homogeneous) batch goes to its task's model."""

    mode = "routed"

    def __init__(self, models: dict, encode):
        super().__init__(models, encode)

    def _forward(self, batch, enc):
        return self.model[_homogeneous(batch)](**enc).logits


def _homogeneous(batch: list[Request]) -> str:
    tasks = {r.task for r in batch}
    if len(tasks) != 1:
        raise ValueError(f"this server needs task-homogeneous batches, got tasks {sorted(tasks)}")
    return tasks.pop()


# ============================================================================ timing and statistics
def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_stream(server: Callable, batches: list[list[Request]], warmup_batches: int = 2,
                clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] = _sync) -> dict:
    """Serve ``batches`` after ``warmup_batches`` untimed ones; per-batch latency, wall time, logits.

    The clock reads bracket the whole ``server(batch)`` call (encoding, any adapter switch, forward,
    device sync, copy to host). The wall time spans the whole timed stream, so throughput is measured.
    """
    for i in range(warmup_batches):
        server(batches[i % len(batches)])
    sync()
    if hasattr(server, "switches"):
        server.switches = 0  # count only the switches inside the timed stream
    lat, logits = [], []
    start = clock()
    for b in batches:
        t0 = clock()
        out = server(b)
        sync()
        lat.append(clock() - t0)
        logits.append(out)
    wall = clock() - start
    return {"latency_s": np.array(lat), "sizes": np.array([len(b) for b in batches]), "wall_s": wall,
            "logits": logits}


def latency_summary(lat_s: np.ndarray, sizes: np.ndarray, wall_s: float) -> dict:
    """Per-request latency percentiles (each request has its batch's latency) and measured throughput."""
    per_req = np.repeat(np.asarray(lat_s) * 1e3, np.asarray(sizes))
    return {"n_requests": int(np.sum(sizes)), "n_batches": int(len(lat_s)),
            "latency_mean_ms": float(per_req.mean()), "latency_p50_ms": float(np.percentile(per_req, 50)),
            "latency_p95_ms": float(np.percentile(per_req, 95)), "latency_p99_ms": float(np.percentile(per_req, 99)),
            "latency_sd_ms": float(per_req.std(ddof=1)) if len(per_req) > 1 else float("nan"),
            "throughput_rps": float(np.sum(sizes) / wall_s), "wall_s": float(wall_s)}


def ratio_ci(num_lat, num_sizes, den_lat, den_sizes, paired: bool, n_boot: int = 2000, seed: int = 0,
             level: float = 0.95) -> tuple[float, float, float]:
    """Ratio of mean per-request latencies (num / den) with a percentile bootstrap interval over batches.

    Paired (the two modes served the same batches in the same order): one resample of batch indices
    for both. Unpaired: independent resamples.
    """
    a, na = np.asarray(num_lat, float), np.asarray(num_sizes, float)
    b, nb = np.asarray(den_lat, float), np.asarray(den_sizes, float)
    est = (a @ na / na.sum()) / (b @ nb / nb.sum())
    rng = np.random.default_rng(seed)
    if paired:
        if len(a) != len(b):
            raise ValueError("a paired ratio needs the same number of batches in both modes")
        idx = rng.integers(0, len(a), (n_boot, len(a)))
        ia = ib = idx
    else:
        ia = rng.integers(0, len(a), (n_boot, len(a)))
        ib = rng.integers(0, len(b), (n_boot, len(b)))
    ma = (a[ia] * na[ia]).sum(1) / na[ia].sum(1)
    mb = (b[ib] * nb[ib]).sum(1) / nb[ib].sum(1)
    lo, hi = np.percentile(ma / mb, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(est), float(lo), float(hi)


# ============================================================================ memory and storage
def _rss_bytes() -> int:
    import psutil
    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _release_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # hand freed heap pages back to the OS, so the next mode's RSS starts clean
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryMeter:
    """Peak memory while a mode is loaded and served: process RSS (peak mark reset at the start, baseline
    subtracted) and, on a GPU, ``torch.cuda.max_memory_allocated``."""

    def __enter__(self):
        _release_memory()
        self.rss_base = _rss_bytes()
        self.hwm_ok = _reset_peak_rss()
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.cuda_base = torch.cuda.memory_allocated()
        return self

    def read(self) -> dict:
        peak = _peak_rss_bytes() if self.hwm_ok else None
        now = _rss_bytes()
        peak = max(peak or 0, now)
        out = {"rss_baseline_mb": self.rss_base / 2**20, "rss_peak_mb": peak / 2**20,
               "rss_peak_increase_mb": (peak - self.rss_base) / 2**20,
               "rss_peak_method": "VmHWM reset via /proc/self/clear_refs" if self.hwm_ok else "RSS at end (no peak mark)"}
        if self.cuda:
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["cuda_peak_increase_mb"] = (torch.cuda.max_memory_allocated() - self.cuda_base) / 2**20
        return out

    def __exit__(self, *exc):
        return False


def tensor_bytes(model) -> int:
    """Bytes of a model's parameters and buffers (or of several models)."""
    models = model.values() if isinstance(model, dict) else [model]
    seen, total = set(), 0
    for m in models:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def folder_bytes(path: Path, patterns=("*.safetensors", "*.bin", "*.json")) -> int:
    path = Path(path)
    return int(sum(f.stat().st_size for p in patterns for f in path.glob(p) if f.is_file()))


# ============================================================================ adapters
def check_adapter(path: Path) -> Path:
    """Check a saved LoRA adapter before serving it: readable config and weights, LoRA A/B tensors, and
    the trained ``score`` head (modules_to_save). Raises LoraDriftError saying what is wrong."""
    path = Path(path)
    fix = "delete the folder and its result JSON (data/<profile>/runs/<id>.json), then re-train the unit"
    if not path.is_dir():
        raise LoraDriftError(f"no adapter at {path}: train the LoRA unit first (`python -m loradrift train ...`)")
    cfg_file, w_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not cfg_file.exists() or not w_file.exists():
        raise LoraDriftError(f"adapter {path} is incomplete (needs adapter_config.json and "
                             f"adapter_model.safetensors): {fix}")
    try:
        json.loads(cfg_file.read_text())
    except ValueError as e:
        raise LoraDriftError(f"adapter {path}: adapter_config.json is not valid JSON ({e}): {fix}") from e
    try:
        from safetensors import safe_open
        with safe_open(str(w_file), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # truncated or overwritten file
        raise LoraDriftError(f"adapter {path}: cannot read adapter_model.safetensors "
                             f"({type(e).__name__}: {e}); it is corrupt: {fix}") from e
    if not any("lora_A" in k for k in keys) or not any("lora_B" in k for k in keys):
        raise LoraDriftError(f"adapter {path} holds no LoRA A/B weights: {fix}")
    if not any(".score." in k or k.endswith("score.weight") for k in keys):
        raise LoraDriftError(f"adapter {path} holds no trained `score` head (modules_to_save); serving it "
                             f"would use an untrained head: {fix}")
    return path


def _wrap_load(path, fn):
    try:
        return fn()
    except LoraDriftError:
        raise
    except Exception as e:
        raise LoraDriftError(f"could not load the adapter at {path} ({type(e).__name__}: {e}); it may be "
                             "corrupt or made for another base model: delete the folder and its result "
                             "JSON, then re-train") from e


def load_multi_adapter(base_model, adapters: dict[str, Path]):
    """One PeftModel holding every task's adapter (named by task), the first one active."""
    from peft import PeftModel
    names = list(adapters)
    for p in adapters.values():
        check_adapter(p)
    first = names[0]
    model = _wrap_load(adapters[first], lambda: PeftModel.from_pretrained(base_model, str(adapters[first]),
                                                                          adapter_name=first))
    for t in names[1:]:
        _wrap_load(adapters[t], lambda t=t: model.load_adapter(str(adapters[t]), adapter_name=t))
    model.set_adapter(first)
    return model.eval()


# ============================================================================ the engine
@dataclass
class Group:
    """Modes that share one loaded object (``multi`` and ``mixed`` share the resident model)."""
    name: str                      # e.g. "lora", "multi"
    stream: str                    # a task, or "multi"
    load: Callable[[], dict]       # -> {"servers": {mode: server}, "models": obj, "extra": {...}}
    modes: list[str] = field(default_factory=list)


def _batches_for(mode: str, stream: str, streams: dict, bs: int, n_requests: int):
    if stream != "multi":
        return single_batches(streams[stream], bs, n_requests)
    per_task = {t: streams[t] for t in streams}
    if mode == "mixed":
        return mixed_batches(per_task, bs, n_requests)
    return multi_batches(per_task, bs, n_requests)


def run_groups(groups: list[Group], streams: dict[str, list[Request]], cfg: dict, log=print):
    """Run every group's modes at every batch size, ``repeats`` times (order reversed on odd repeats).

    Returns (latency rows, batch rows, memory rows, logits {(mode, stream, bs, repeat): {uid: logits}}).
    """
    lat_rows, batch_rows, mem_rows, logits = [], [], [], {}
    for rep in range(int(cfg["repeats"])):
        order = groups if rep % 2 == 0 else groups[::-1]
        for g in order:
            with MemoryMeter() as meter:
                t0 = time.perf_counter()
                loaded = g.load()
                load_s = time.perf_counter() - t0
                for mode, server in loaded["servers"].items():
                    for bs in mode_batch_sizes(cfg, mode):
                        batches = _batches_for(mode, g.stream, streams, int(bs), int(cfg["n_requests"]))
                        server.switches = 0
                        res = time_stream(server, batches, int(cfg["warmup_batches"]))
                        summ = latency_summary(res["latency_s"], res["sizes"], res["wall_s"])
                        lat_rows.append({"mode": mode, "stream": g.stream, "batch_size": int(bs), "repeat": rep,
                                         **summ, "switches": server.switches,
                                         **_padding_stats(server, batches)})
                        for i, (b, l) in enumerate(zip(batches, res["latency_s"])):
                            batch_rows.append({"mode": mode, "stream": g.stream, "batch_size": int(bs),
                                               "repeat": rep, "batch": i, "n": len(b),
                                               "tasks": "+".join(sorted({r.task for r in b})),
                                               "latency_ms": float(l) * 1e3})
                        got = logits.setdefault((mode, g.stream, int(bs), rep), {})
                        for b, out in zip(batches, res["logits"]):
                            for r, row in zip(b, out.numpy()):
                                got.setdefault(r.uid, row)
                        log(f"  {mode:<14} {g.stream:<6} bs={bs:<3} rep={rep} "
                            f"p50={summ['latency_p50_ms']:.1f} ms  {summ['throughput_rps']:.1f} req/s")
                mem = meter.read()
            mem_rows.append({"group": g.name, "modes": "+".join(loaded["servers"]), "stream": g.stream,
                             "repeat": rep, "load_s": load_s, "model_mb": tensor_bytes(loaded["models"]) / 2**20,
                             **mem, **loaded.get("extra", {})})
            loaded = server = res = None  # drop every reference to the models before the next group
            _release_memory()
    return lat_rows, batch_rows, mem_rows, logits


def _padding_stats(server: Server, batches) -> dict:
    """Real and padded tokens of the stream (computed outside the timed region)."""
    real = padded = 0
    for b in batches:
        m = server.encode(b)["attention_mask"]
        real += int(m.sum())
        padded += int(m.numel())
    return {"tokens_real": real, "tokens_padded": padded, "pad_fraction": 1 - real / padded if padded else 0.0}


def ratio_rows(batch_rows: list[dict], n_boot: int = 2000) -> list[dict]:
    """Latency ratios of RATIOS at every (stream, batch size), with bootstrap intervals over batches."""
    import pandas as pd
    df = pd.DataFrame(batch_rows)
    if df.empty:
        return []
    out = []
    for num, den, family in RATIOS:
        streams = sorted(s for s in df["stream"].unique() if (s == "multi") == (family == "multi"))
        for s in streams:
            for bs in sorted(df["batch_size"].unique()):
                a = df[(df["mode"] == num) & (df["stream"] == s) & (df["batch_size"] == bs)].sort_values(["repeat", "batch"])
                b = df[(df["mode"] == den) & (df["stream"] == s) & (df["batch_size"] == bs)].sort_values(["repeat", "batch"])
                if a.empty or b.empty:
                    continue
                paired = "mixed" not in (num, den) and len(a) == len(b)
                est, lo, hi = ratio_ci(a["latency_ms"], a["n"], b["latency_ms"], b["n"], paired, n_boot)
                out.append({"numerator": num, "denominator": den, "stream": s, "batch_size": int(bs),
                            "ratio": est, "ci_low": lo, "ci_high": hi, "paired": paired,
                            "n_batches": len(a)})
    return out


def correctness_rows(logits: dict, tol: float = 1e-4) -> list[dict]:
    """Prediction agreement and max |Δlogit| of each mode against its reference, on shared requests."""
    refs = [("multi", "lora", "identical"), ("mixed", "lora", "identical"), ("merged", "lora", "agreement"),
            ("routed-merged", "merged", "identical")]
    out = []
    keys = sorted(logits)
    for mode, ref, kind in refs:
        for (m, s, bs, rep) in keys:
            if m != mode or rep != 0:
                continue
            got = logits[(m, s, bs, rep)]
            for task in sorted({u.split(":")[0] for u in got}):
                ref_key = (ref, task, bs, 0)  # every reference is a single-task mode on its task's stream
                if ref_key not in logits:
                    continue
                r = logits[ref_key]
                uids = [u for u in got if u.split(":")[0] == task and u in r]
                if not uids:
                    continue
                A = np.stack([got[u] for u in uids])
                B = np.stack([r[u] for u in uids])
                d = float(np.abs(A - B).max())
                agree = float((A.argmax(1) == B.argmax(1)).mean())
                out.append({"mode": mode, "reference": ref, "task": task, "batch_size": int(bs), "n": len(uids),
                            "prediction_agreement": agree, "max_abs_dlogit": d, "kind": kind,
                            "passed": bool(agree == 1.0 and (kind == "agreement" or d <= tol))})
    return out


def accuracy_rows(logits: dict, labels: dict[str, int], units: dict | None = None) -> list[dict]:
    """Accuracy (and F1 of the positive class) of every mode on the labelled requests it served, at the
    smallest batch size; beside it the trained unit's accuracy on the whole test split, if known."""
    from .train import classification_metrics
    out = []
    if not labels:
        return out
    min_bs = {}
    for (m, s, bs, rep) in logits:
        if rep == 0:
            min_bs[(m, s)] = min(bs, min_bs.get((m, s), bs))
    served = {}  # task -> uids served by every mode (the common set, for a like-for-like comparison)
    for (m, s), bs in min_bs.items():
        for u in logits[(m, s, bs, 0)]:
            served.setdefault(u.split(":")[0], {}).setdefault((m, s), set()).add(u)
    common = {t: set.intersection(*v.values()) for t, v in served.items()}
    for (m, s), bs in sorted(min_bs.items()):
        got = logits[(m, s, bs, 0)]
        for task in sorted({u.split(":")[0] for u in got}):
            uids = [u for u in got if u.split(":")[0] == task and u in labels]
            if not uids:
                continue
            met = classification_metrics(np.stack([got[u] for u in uids]), np.array([labels[u] for u in uids]))
            cu = sorted(u for u in common[task] if u in labels)
            mc = classification_metrics(np.stack([got[u] for u in cu]), np.array([labels[u] for u in cu])) if cu else {}
            unit = (units or {}).get(("full" if m == "full" else "lora", task), {}) if m != "base" else {}
            out.append({"mode": m, "task": task, "stream": s, "batch_size": int(bs), "n": len(uids),
                        "accuracy": met["accuracy"], "f1": met["f1"],
                        "n_common": len(cu), "accuracy_common": mc.get("accuracy"), "f1_common": mc.get("f1"),
                        "unit_test_accuracy": unit.get("accuracy"), "unit_test_f1": unit.get("f1"),
                        "unit_test_n": unit.get("n")})
    return out


def _write_all(out_dir: Path, frames: dict, meta: dict):
    import pandas as pd
    for name in FILES:
        write_csv(out_dir / f"deployment_{name}.csv", pd.DataFrame(frames.get(name, [])))
    write_json(out_dir / "deployment_meta.json", meta)


# ============================================================================ real models (a profile)
def deploy_config(prof: dict, device: str | None = None, **overrides) -> dict:
    """Defaults for the device, then the profile's optional ``deploy:`` section, then keyword overrides."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = copy.deepcopy(DEFAULTS["cuda" if device.startswith("cuda") else "cpu"])
    user = {**(prof.get("deploy") or {}), **{k: v for k, v in overrides.items() if v is not None}}
    if "batch_sizes" in user and "batch_sizes_by_mode" not in user:
        cfg["batch_sizes_by_mode"] = {}  # explicit batch sizes apply to every mode
    cfg.update(user)
    cfg.setdefault("seed", int(prof["seeds"][0]))
    cfg["device"] = device
    unknown = set(cfg["modes"]) - set(MODES)
    if unknown:
        raise LoraDriftError(f"unknown serving modes {sorted(unknown)}: choose from {list(MODES)}")
    return cfg


def _unit_files(prof: dict, tasks, seed: int, modes) -> tuple[dict, list[str]]:
    """Model folders of the units the benchmark serves, and the tasks whose units are missing."""
    from .train import model_dir
    need = {"full"} if "full" in modes else set()
    if set(modes) & {"lora", "merged", "multi", "mixed", "routed-merged"}:
        need.add("lora")
    dirs, missing = {}, []
    for t in tasks:
        paths = {m: model_dir(prof["name"], run_id(t, m, seed)) for m in need}
        if all(p.exists() for p in paths.values()):
            dirs[t] = paths
        else:
            missing.append(t)
    return dirs, missing


def _unit_results(prof: dict, tasks, seed: int) -> dict:
    from .train import result_path
    out = {}
    for t in tasks:
        for m in ("full", "lora"):
            p = result_path(prof["name"], run_id(t, m, seed))
            if p.exists():
                rec = read_json(p)
                out[(m, t)] = {"accuracy": rec["test"]["accuracy"], "f1": rec["test"]["f1"], "n": rec["test"]["n"],
                               "config_hash": rec.get("config_hash"), "finished_at": rec.get("finished_at")}
    return out


def _adapter_group(model, mode, encode):
    """A server over one adapter model: unmerged (`lora`), or merged first (`merged`, merge time recorded)."""
    extra = {}
    if mode == "merged":
        t1 = time.perf_counter()
        model = model.merge_and_unload().eval()
        extra["merge_s"] = time.perf_counter() - t1
    return {"servers": {mode: Server(model, encode)}, "models": model, "extra": extra}


def _multi_group(model, encode, modes, n_adapters, **switch_kw):
    """Servers over one model holding every adapter: switching (`multi`) and mixed batches (`mixed`)."""
    servers = {}
    if "multi" in modes:
        servers["multi"] = SwitchServer(model, encode, **switch_kw)
    if "mixed" in modes:
        servers["mixed"] = MixedServer(model, encode)
    return {"servers": servers, "models": model, "extra": {"adapters_resident": n_adapters}}


def outdated_units(prof: dict, meta: dict) -> list[str]:
    """Units a committed benchmark served that have since been re-trained or removed (empty: current)."""
    seed = int(meta.get("seed", prof["seeds"][0]))
    now = {f"{m}/{t}": u for (m, t), u in _unit_results(prof, meta.get("tasks", []), seed).items()}
    same = lambda a, b: all(a.get(k) == b.get(k) for k in ("config_hash", "finished_at"))  # noqa: E731
    return sorted(k for k, u in (meta.get("units") or {}).items() if not same(now.get(k) or {}, u))


def run_deploy(prof: dict | str, tasks=None, glue_source=None, force: bool = False, out_dir=None,
               log=print, **overrides) -> dict:
    """The deployment benchmark of a profile's trained models (seed ``cfg['seed']``, default the first).

    Skips if ``deployment_meta.json`` records the same configuration and the same trained units
    (``force=True`` re-runs). Keyword overrides: batch_sizes, n_requests, warmup_batches, repeats,
    modes, seed, bootstrap. Returns {"out_dir", "skipped", "meta"}.
    """
    from .config import load_profile
    from .models import DTYPES, base_model_path, load_classifier, load_finetuned, load_tokenizer
    prof = load_profile(prof) if isinstance(prof, str) else prof
    cfg = deploy_config(prof, **overrides)
    tasks = list(tasks or prof["tasks"])
    seed = int(cfg["seed"])
    out_dir = Path(out_dir) if out_dir else data_dir(prof["name"])
    dirs, missing = _unit_files(prof, tasks, seed, cfg["modes"])
    if not dirs:
        raise LoraDriftError(f"no trained models for seed {seed} of tasks {tasks} in profile {prof['name']}: "
                             f"train them first (`python -m loradrift train --profile {prof['name']} --seed {seed}`)")
    tasks = [t for t in tasks if t in dirs]
    units = _unit_results(prof, tasks, seed)
    key = config_hash({"cfg": {k: v for k, v in cfg.items() if k != "device"}, "tasks": tasks,
                       "units": {f"{m}/{t}": u.get("config_hash") for (m, t), u in units.items()},
                       "unit_times": {f"{m}/{t}": u.get("finished_at") for (m, t), u in units.items()}})
    meta_path = out_dir / "deployment_meta.json"
    if meta_path.exists() and not force:
        old = read_json(meta_path)
        if old.get("key") == key and old.get("device") == cfg["device"]:
            log(f"deployment results are current: {meta_path} (skipped; force=True re-runs)")
            return {"out_dir": out_dir, "skipped": True, "meta": old}
    if missing:
        log(f"WARNING: no trained models for {missing} (seed {seed}); benchmarking {tasks} only")

    t_start = time.perf_counter()
    device = cfg["device"]
    dtype = prof["model"].get("dtype", "float32")
    base_path = base_model_path(prof)
    tok = load_tokenizer(base_path)
    max_len = int(prof["data"]["max_length"])
    encode = TextEncoder(tok, max_len, device)
    n_stream = max(n_per_point(int(cfg["n_requests"]), b) for m in cfg["modes"] for b in mode_batch_sizes(cfg, m))
    streams = {t: real_requests(prof, t, n_stream, glue_source) for t in tasks}
    labels = {r.uid: r.label for rs in streams.values() for r in rs}
    modes = [m for m in MODES if m in cfg["modes"]]

    def base_model():
        torch.manual_seed(0)  # the untrained score head of `base` / of the resident multi-adapter model
        return load_classifier(base_path, dtype, tok.pad_token_id)

    def loader(mode, task):
        def load():
            if mode == "base":
                m = base_model().to(device).eval()
                return {"servers": {"base": Server(m, encode)}, "models": m}
            if mode == "full":
                m, _ = load_finetuned(prof, dirs[task]["full"], "full")
                m = m.to(device).eval()
                return {"servers": {"full": Server(m, encode)}, "models": m}
            check_adapter(dirs[task]["lora"])
            if mode in ("lora", "merged"):
                t0 = time.perf_counter()
                m, _ = load_finetuned(prof, dirs[task]["lora"], "lora", merge=False)
                m = m.to(device).eval()
                return _adapter_group(m, mode, encode)
            raise AssertionError(mode)
        return load

    def multi_loader():
        names = [m for m in ("multi", "mixed") if m in modes]
        m = load_multi_adapter(base_model(), {t: dirs[t]["lora"] for t in tasks}).to(device).eval()
        return _multi_group(m, encode, names, len(tasks))

    def routed_loader():
        models = {}
        for t in tasks:
            check_adapter(dirs[t]["lora"])
            m, _ = load_finetuned(prof, dirs[t]["lora"], "lora", merge=True)
            models[t] = m.to(device).eval()
        return {"servers": {"routed-merged": RoutedServer(models, encode)}, "models": models,
                "extra": {"models_resident": len(tasks)}}

    groups = [Group(m, t, loader(m, t), [m]) for t in tasks for m in SINGLE_MODES if m in modes]
    if len(tasks) > 1 and {"multi", "mixed"} & set(modes):
        groups.append(Group("multi", "multi", multi_loader, [m for m in ("multi", "mixed") if m in modes]))
    if len(tasks) > 1 and "routed-merged" in modes:
        groups.append(Group("routed-merged", "multi", routed_loader, ["routed-merged"]))

    torch.set_grad_enabled(False)
    load_before = _loadavg()
    log(f"deploy {prof['name']}: tasks {tasks}, seed {seed}, modes {modes}, batch sizes {cfg['batch_sizes']}, "
        f"{cfg['n_requests']} requests/point, {cfg['repeats']} repeat(s) on {device}")
    lat, bat, mem, logits = run_groups(groups, streams, cfg, log)
    torch.set_grad_enabled(True)

    storage = _storage_rows(prof, tasks, dirs, base_path)
    frames = {"latency": lat, "batches": bat, "memory": mem, "storage": storage,
              "ratios": ratio_rows(bat, int(cfg["bootstrap"])),
              "correctness": correctness_rows(logits, tol=_tol(DTYPES[dtype])),
              "accuracy": accuracy_rows(logits, labels, units)}
    meta = {"kind": "trained models", "profile": prof["name"], "key": key, "device": device, "config": cfg,
            "tasks": tasks, "tasks_missing": missing, "seed": seed, "dtype": dtype, "max_length": max_len,
            "base_model": prof["model"]["name_or_path"], "units": {f"{m}/{t}": u for (m, t), u in units.items()},
            "n_stream_requests": {t: len(v) for t, v in streams.items()},
            "timing": "perf_counter around tokenise+pad, adapter switch, forward, device sync, logits to host",
            **_run_record(load_before, t_start)}
    _write_all(out_dir, frames, meta)
    log(f"deployment results -> {out_dir} ({meta['wall_time_s']:.0f} s)")
    return {"out_dir": out_dir, "skipped": False, "meta": meta}


def _run_record(load_before, t_start: float) -> dict:
    """What every benchmark run records about itself: load, duration, vLLM status, environment."""
    return {"loadavg_before": load_before, "loadavg_after": _loadavg(),
            "wall_time_s": time.perf_counter() - t_start, "vllm": _vllm_status(),
            "environment": environment(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _storage_rows(prof, tasks, dirs, base_path) -> list[dict]:
    rows = [{"artifact": "base model", "task": "", "bytes": folder_bytes(Path(base_path), ("*.safetensors", "*.bin")),
             "source": "files"}]
    for t in tasks:
        if "full" in dirs[t]:
            rows.append({"artifact": "full fine-tuned model", "task": t, "source": "files",
                         "bytes": folder_bytes(dirs[t]["full"], ("*.safetensors", "*.bin"))})
        if "lora" in dirs[t]:
            rows.append({"artifact": "LoRA adapter (incl. score head)", "task": t, "source": "files",
                         "bytes": folder_bytes(dirs[t]["lora"], ("*.safetensors", "*.bin"))})
    return rows


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _vllm_status() -> dict:
    from .vllm_serving import vllm_available
    ok, why = vllm_available()
    return {"available": ok, "detail": why}


# ============================================================================ architecture-only
def arch_config(arch: str, device: str | None = None, **overrides) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if arch not in ARCHS:
        raise LoraDriftError(f"unknown architecture {arch!r}: choose one of {list(ARCHS)}")
    cfg = copy.deepcopy(ARCH_DEFAULTS["cuda" if device.startswith("cuda") else "cpu"])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg.update({"arch": arch, "device": device})
    cfg.setdefault("lora_r", 8)
    cfg.setdefault("lora_alpha", 16)
    cfg.setdefault("target_modules", ["q_proj", "v_proj"])
    cfg.setdefault("seed", 0)
    if not set(cfg["single_tasks"]) <= set(cfg["tasks"]):
        raise LoraDriftError("single_tasks must be a subset of tasks")
    unknown = set(cfg["modes"]) - set(MODES)
    if unknown:
        raise LoraDriftError(f"unknown serving modes {sorted(unknown)}: choose from {list(MODES)}")
    return cfg


def arch_out_dir(arch: str, device: str) -> Path:
    return repo_root() / "data" / f"arch-{arch}-{'cuda' if device.startswith('cuda') else 'cpu'}"


def realistic_lengths(task: str, n: int, seed: int = 0, glue_source=None, max_length: int = 512,
                      source: str = "auto") -> tuple[list[int], str]:
    """Token lengths of ``n`` test-split examples of ``task`` under the cpu profile's (SmolLM2) tokenizer,
    when GLUE and that model are available (``source="auto"``); otherwise (or with ``source="fallback"``)
    draws from a log-normal with the means and sds of FALLBACK_LENGTHS."""
    try:
        if source == "fallback":
            raise LookupError
        from .config import load_profile
        from .data import study_splits, texts
        from .models import base_model_path, load_tokenizer
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


def random_classifier(arch_kwargs: dict, dtype, seed: int, device: str, pad_token_id: int = 0):
    """A randomly initialised LlamaForSequenceClassification (2 labels) of the given shape."""
    from transformers import LlamaConfig, LlamaForSequenceClassification
    cfg = LlamaConfig(**arch_kwargs, num_labels=2, pad_token_id=pad_token_id)
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
    from peft import LoraConfig, TaskType, get_peft_model
    base = random_classifier(arch_kwargs, dtype, int(cfg["seed"]), device)
    lc = LoraConfig(r=int(cfg["lora_r"]), lora_alpha=cfg["lora_alpha"], lora_dropout=0.0,
                    target_modules=list(cfg["target_modules"]), bias="none", task_type=TaskType.SEQ_CLS)
    model = get_peft_model(base, lc, adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, lc)
    for i, name in enumerate(adapters):
        randomize_adapter(model, name, int(cfg["seed"]) + 1 + i)
    model.set_adapter(adapters[0])
    return model.eval()


def run_arch(arch: str = "tinyllama-1.1b", device: str | None = None, out_dir=None, glue_source=None,
             log=print, **overrides) -> dict:
    """The benchmark on a randomly initialised model of a named architecture (``ARCHS``), with random
    adapters of the study's rank and targets (r=8, q_proj/v_proj, lora_B non-zero) and random token
    inputs of realistic lengths. A pure cost measurement: no labels, no accuracy; identity checks still
    hold. Results: ``data/arch-<arch>-<cpu|cuda>/deployment_*.csv`` (override with ``out_dir``)."""
    from .models import DTYPES
    cfg = arch_config(arch, device, **overrides)
    device = cfg["device"]
    dtype = DTYPES[cfg["dtype"]]
    arch_kwargs = ARCHS[arch]
    out_dir = Path(out_dir) if out_dir else arch_out_dir(arch, device)
    t_start = time.perf_counter()
    tasks, single = list(cfg["tasks"]), list(cfg["single_tasks"])
    n_stream = max(n_per_point(int(cfg["n_requests"]), b) for m in cfg["modes"] for b in mode_batch_sizes(cfg, m))
    streams, length_source = {}, {}
    for i, t in enumerate(tasks):
        lens, src = realistic_lengths(t, n_stream, i, glue_source, int(cfg["max_length"]),
                                      cfg.get("lengths", "auto"))
        streams[t] = random_requests(t, lens[:n_stream], arch_kwargs["vocab_size"], seed=100 + i)
        length_source[t] = src
    encode = IdsEncoder(0, int(cfg["max_length"]), device)
    modes = [m for m in MODES if m in cfg["modes"]]

    def single_loader(mode, task):
        def load():
            if mode in ("base", "full"):
                m = random_classifier(arch_kwargs, dtype, int(cfg["seed"]), device)
                return {"servers": {mode: Server(m, encode)}, "models": m}
            # the task's adapter alone (same seeds as in the multi-adapter model, so logits are comparable)
            m = random_lora_model(arch_kwargs, dtype, device, tasks, cfg)
            for t in tasks:
                if t != task:
                    m.delete_adapter(t)
            m.set_adapter(task)
            return _adapter_group(m, mode, encode)
        return load

    def multi_loader():
        m = random_lora_model(arch_kwargs, dtype, device, tasks, cfg)
        return _multi_group(m, encode, modes, len(tasks), active=tasks[0])

    def routed_loader():
        models = {}
        for t in tasks:
            m = random_lora_model(arch_kwargs, dtype, device, tasks, cfg)
            m.set_adapter(t)
            models[t] = m.merge_and_unload(adapter_names=[t]).eval()
        return {"servers": {"routed-merged": RoutedServer(models, encode)}, "models": models,
                "extra": {"models_resident": len(tasks)}}

    # "full" in architecture-only mode is a plain model of the same shape: its cost is base's
    groups = [Group(m, t, single_loader(m, t), [m]) for t in single for m in SINGLE_MODES if m in modes]
    if len(tasks) > 1 and {"multi", "mixed"} & set(modes):
        groups.append(Group("multi", "multi", multi_loader))
    if len(tasks) > 1 and "routed-merged" in modes:
        groups.append(Group("routed-merged", "multi", routed_loader))
    log(f"architecture-only {arch} (RANDOM weights) on {device}: modes {modes}, batch sizes {cfg['batch_sizes']}, "
        f"{cfg['n_requests']} requests/point, single-adapter streams {single}")
    torch.set_grad_enabled(False)
    load_before = _loadavg()
    lat, bat, mem, logits = run_groups(groups, streams, cfg, log)
    torch.set_grad_enabled(True)
    storage = _arch_storage(arch_kwargs, cfg, dtype)
    frames = {"latency": lat, "batches": bat, "memory": mem, "storage": storage,
              "ratios": ratio_rows(bat, int(cfg["bootstrap"])), "correctness": correctness_rows(logits, tol=_tol(dtype)),
              "accuracy": []}
    meta = {"kind": "architecture-only (random weights, random adapters, random tokens)", "arch": arch,
            "arch_config": arch_kwargs, "device": device, "config": {**cfg, "dtype": cfg["dtype"]},
            "length_source": length_source,
            "mean_length": {t: float(np.mean([len(r.ids) for r in v])) for t, v in streams.items()},
            "timing": "perf_counter around pad, adapter switch, forward, device sync, logits to host",
            **_run_record(load_before, t_start)}
    _write_all(out_dir, frames, meta)
    log(f"architecture-only results -> {out_dir} ({meta['wall_time_s']:.0f} s)")
    return {"out_dir": out_dir, "meta": meta}


def _tol(dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 2e-2


def _arch_storage(arch_kwargs: dict, cfg: dict, dtype) -> list[dict]:
    """Storage computed from parameter counts (nothing is written to disk in architecture-only mode)."""
    h, L, kv = arch_kwargs["hidden_size"], arch_kwargs["num_hidden_layers"], arch_kwargs["num_key_value_heads"]
    heads = arch_kwargs["num_attention_heads"]
    kv_dim = h // heads * kv
    i_, V = arch_kwargs["intermediate_size"], arch_kwargs["vocab_size"]
    per_layer = h * h * 2 + h * kv_dim * 2 + 3 * h * i_ + 2 * h
    total = V * h + L * per_layer + h + 2 * h  # embeddings, layers, final norm, score head
    dims = {"q_proj": (h, h), "k_proj": (h, kv_dim), "v_proj": (h, kv_dim), "o_proj": (h, h),
            "gate_proj": (h, i_), "up_proj": (h, i_), "down_proj": (i_, h)}
    r = int(cfg["lora_r"])
    lora = L * sum(r * (a + b) for m, (a, b) in dims.items() if m in cfg["target_modules"]) + 2 * h
    nbytes = torch.finfo(dtype).bits // 8
    return [{"artifact": "base model", "task": "", "bytes": total * nbytes, "source": "parameter count"},
            {"artifact": "full fine-tuned model", "task": "", "bytes": total * nbytes, "source": "parameter count"},
            {"artifact": "LoRA adapter (incl. score head)", "task": "", "bytes": lora * nbytes,
             "source": "parameter count"}]


# ============================================================================ for the chapter
# The original study's deployment headline, typed in (nothing copied): benc61116/NLP @ eef92c5,
# deployment/deployment_benchmark_summary.csv and the RQ2 notebook, as summarised in the replication
# notes (METHODS.md §6, §7.3). Batch 1, bf16, transformers+PEFT eager, NVIDIA L4, 100 requests per
# configuration, time.time() without torch.cuda.synchronize(), throughput = 1000 / mean latency.
ORIGINAL_SOURCE = "benc61116/NLP @ eef92c5, deployment/deployment_benchmark_summary.csv (METHODS.md §7.3)"
ORIGINAL_DEPLOYMENT = [  # mode, configurations, mean latency ms (sd over configurations), req/s, peak GPU MB
    {"mode": "lora", "original_name": "single_lora", "configs": 9, "latency_ms": 35.09, "latency_sd": 0.58,
     "throughput_rps": 28.51, "peak_gpu_mb": 1995},
    {"mode": "full", "original_name": "full_ft", "configs": 9, "latency_ms": 25.51, "latency_sd": 0.22,
     "throughput_rps": 39.20, "peak_gpu_mb": 1991},
    {"mode": "merged", "original_name": "lora_merged", "configs": 9, "latency_ms": 25.47, "latency_sd": 0.22,
     "throughput_rps": 39.26, "peak_gpu_mb": 2018},
    {"mode": "multi (re-wrapped, switch untimed)", "original_name": "multi_lora_3", "configs": 1,
     "latency_ms": 34.73, "latency_sd": None, "throughput_rps": 28.79, "peak_gpu_mb": 2002},
]
ORIGINAL_PER_TASK_MS = {  # task -> (separate LoRA, merged, full FT), mean of 3 seeds
    "mrpc": (34.74, 25.44, 25.63), "sst2": (34.88, 25.53, 25.41), "rte": (35.64, 25.45, 25.49)}
ORIGINAL_OVERHEAD = 0.375  # as reported (+37.5 %, separate LoRA over full FT; 35.09 / 25.51 - 1 from the rounded means)


def load_results(out_dir) -> dict | None:
    """The benchmark's tables of one run folder as DataFrames (plus ``meta``), or None if absent."""
    import pandas as pd
    out_dir = Path(out_dir)
    if not (out_dir / "deployment_meta.json").exists():
        return None
    res = {"meta": read_json(out_dir / "deployment_meta.json")}
    for name in FILES:
        p = out_dir / f"deployment_{name}.csv"
        try:
            res[name] = pd.read_csv(p) if p.exists() else pd.DataFrame()
        except pd.errors.EmptyDataError:
            res[name] = pd.DataFrame()
    vmeta = out_dir / "deployment_vllm_meta.json"
    if vmeta.exists():
        res["vllm_meta"] = read_json(vmeta)
        for name in ("latency", "correctness"):
            p = out_dir / f"deployment_vllm_{name}.csv"
            res[f"vllm_{name}"] = pd.read_csv(p) if p.exists() else pd.DataFrame()
    return res


def ratio_text(rat, num: str, den: str, stream: str | None = None, bs: int | None = None, na: str = "n/a") -> str:
    """'1.23× [1.20, 1.26]': one row of the ratios table (numerator / denominator, 95% interval), or ``na``."""
    if rat is None or rat.empty:
        return na
    r = rat[(rat.numerator == num) & (rat.denominator == den)]
    if stream is not None:
        r = r[r.stream == stream]
    if bs is not None:
        r = r[r.batch_size == bs]
    if r.empty:
        return na
    r = r.iloc[0]
    return f"{r.ratio:.2f}× [{r.ci_low:.2f}, {r.ci_high:.2f}]"


def timing_error(rat) -> dict:
    """What the timings show of their own error, from two controls that need no assumption:
    a merged model and the fully fine-tuned model run the same computation (ratio 1 up to error), and
    an unmerged adapter computes strictly more than its merged model (a ratio whose interval lies below
    1 is error). Returns {"same": max |merged/full - 1|, "below": the lora/merged rows below 1,
    "floor": the larger of the two deviations} (NaN where a control is missing)."""
    import math
    if rat is None or rat.empty:
        return {"same": math.nan, "below": None, "floor": math.nan}
    mf = rat[(rat.numerator == "merged") & (rat.denominator == "full")]
    lm = rat[(rat.numerator == "lora") & (rat.denominator == "merged")]
    below = lm[lm.ci_high < 1]
    same = float((mf.ratio - 1).abs().max()) if len(mf) else math.nan
    errs = [e for e in (same, 1 - float(below.ratio.min()) if len(below) else math.nan) if not math.isnan(e)]
    return {"same": same, "below": below, "floor": max(errs) if errs else math.nan}


def per_task_ratios(rat, num: str, den: str, bs: int, na: str = "n/a") -> str:
    """'RTE 1.10× [..]; MRPC ...': a ratio on each task's own request stream."""
    if rat is None or rat.empty:
        return na
    from .tasks import TASKS
    from .tasks import task_name
    tasks = [t for t in TASKS if t in set(rat.stream)]
    parts = [f"{task_name(t)} {ratio_text(rat, num, den, t, bs, na)}" for t in tasks]
    parts = [p for p in parts if not p.endswith(na)]
    return "; ".join(parts) if parts else na


def arch_results() -> dict[str, dict]:
    """Every architecture-only run in data/arch-*/ (name -> load_results)."""
    out = {}
    for d in sorted((repo_root() / "data").glob("arch-*")):
        r = load_results(d)
        if r is not None:
            out[d.name] = r
    return out


def arch_command(arch: str = "tinyllama-1.1b") -> str:
    return f"python -m loradrift deploy --arch {arch}"
