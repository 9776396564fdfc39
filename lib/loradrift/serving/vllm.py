"""vLLM multi-LoRA serving of the study's adapters (CUDA only; vLLM is imported only when used).

Written against vLLM 0.33.0 (``VLLM_VERSION``, the version the ``vllm`` extra pins; it pins its own
torch and transformers, so it lives in its own virtualenv): ``vllm.LLM`` with ``enable_lora=True``,
``max_loras``, ``max_lora_rank``; ``vllm.lora.request.LoRARequest(name, id, path)``; a pooling model
via ``runner="pooling", convert="embed"`` and ``pooler_config=PoolerConfig(seq_pooling_type="LAST",
use_activation=False)`` (vLLM 0.33 names the embedding normalisation ``use_activation``; ``normalize``
was removed). It has **not been run** for this book: vLLM needs CUDA and the book's default build is
CPU-only. vLLM computes in bf16 (fp16 for an fp16 model), never fp32: its LoRA kernels take half
precision only.

The known weak spot is the classification head. Our adapters are PEFT SEQ_CLS adapters: LoRA A/B on
q_proj/v_proj *plus* a fully trained ``score`` head saved as ``modules_to_save``. Released vLLM
versions long rejected non-empty ``modules_to_save`` for classification adapters (vllm-project/vllm
issues #12075, #12829, #19623); upstream support for a per-adapter ``score`` head was merged in
2026 (PR #53555), and in which release it ships, and how well, is not verified here. So the path
used by default does not depend on it:

1. each adapter is *split*: a vLLM copy holding only the LoRA A/B tensors (``modules_to_save``
   cleared), and its score head kept aside as a (2 x hidden) matrix;
2. vLLM serves the base model as an *embedding* model with LAST-token pooling and no normalisation,
   applying each request's LoRA to the backbone (multi-LoRA batches: one LoRARequest per prompt);
3. the request's own score head is applied on the host: logits = h @ W_task^T.

Since the Llama classifier pools the last real token and ``score`` is a bias-free linear map, this
computes exactly the PEFT model's logits (up to kernel numerics), which ``run_vllm`` checks against
the unmerged PEFT model. ``head="native"`` (LLM.classify with the full adapter) is offered for vLLM
versions that do support ``modules_to_save`` heads; there the prediction check decides.

The pure parts (adapter splitting, request building, output parsing, host-side head) are tested
without vLLM.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from .. import LoraDriftError

VLLM_VERSION = "0.33.0"  # the API this module is written against (pyproject's vllm extra pins it)
TARGET = (f"vLLM {VLLM_VERSION}: runner='pooling', convert='embed'|'classify', "
          "PoolerConfig(seq_pooling_type='LAST', use_activation=False)")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for max_lora_rank

def vllm_available() -> tuple[bool, str]:
    """(usable, why): vLLM importable and a CUDA device present."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return False, f"vLLM not installed ({type(e).__name__}); it needs CUDA: pip install vllm on a GPU machine"
    import torch
    if not torch.cuda.is_available():
        return False, f"vLLM {vllm.__version__} installed but no CUDA device"
    return True, f"vLLM {vllm.__version__} on {torch.cuda.get_device_name(0)}"


# ---------------------------------------------------------------------------- pure parts
def _is_lora_key(k: str) -> bool:
    return ".lora_A." in k or ".lora_B." in k or k.endswith((".lora_A.weight", ".lora_B.weight"))


def _is_score_key(k: str) -> bool:
    return ".score." in k or k.endswith("score.weight") or k.endswith("score.bias")


def split_adapter(adapter_dir: Path, out_dir: Path) -> dict:
    """Write a vLLM-loadable copy of a PEFT SEQ_CLS adapter (LoRA A/B only) to ``out_dir`` and return
    {"path", "score_weight" (n_labels x hidden, float32), "score_bias" (or None), "lora_keys"}."""
    from safetensors.numpy import save_file

    from ..store import replace_dir
    from .sources import check_adapter
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    check_adapter(adapter_dir)
    tensors = _load_tensors(adapter_dir / "adapter_model.safetensors")
    lora = {k: v for k, v in tensors.items() if _is_lora_key(k)}
    w = [v for k, v in tensors.items() if _is_score_key(k) and k.endswith("weight")]
    b = [v for k, v in tensors.items() if _is_score_key(k) and k.endswith("bias")]
    if len(w) != 1:
        raise LoraDriftError(f"adapter {adapter_dir}: expected one score head weight, found {len(w)}")
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    cfg["modules_to_save"] = None
    cfg["task_type"] = "CAUSAL_LM"  # vLLM reads the backbone LoRA only
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in lora.items()}, str(tmp / "adapter_model.safetensors"))
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=1))
    replace_dir(tmp, out_dir)
    return {"path": out_dir, "score_weight": np.asarray(w[0], dtype=np.float32),
            "score_bias": np.asarray(b[0], dtype=np.float32) if b else None, "lora_keys": sorted(lora)}


def _load_tensors(path: Path) -> dict:
    """safetensors -> numpy (bf16 tensors go through torch, which numpy cannot read directly)."""
    from safetensors import safe_open
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k).float().numpy()
    return out


def adapter_table(tasks: list[str], paths: dict[str, Path]) -> dict[str, tuple[str, int, str]]:
    """task -> (LoRARequest name, integer id >= 1, path): vLLM needs a distinct positive id per adapter."""
    return {t: (t, i + 1, str(paths[t])) for i, t in enumerate(tasks)}


def build_requests(requests, adapters: dict[str, tuple[str, int, str]], tokenizer=None,
                   max_length: int | None = None) -> list[dict]:
    """One vLLM prompt per request: token ids (identical to our tokenisation, truncated at max_length) or
    the text, with the adapter spec of the request's task."""
    out = []
    for r in requests:
        if r.task not in adapters:
            raise LoraDriftError(f"no adapter for task {r.task!r}; have {sorted(adapters)}")
        if r.ids is not None:
            prompt = {"prompt_token_ids": list(r.ids[:max_length] if max_length else r.ids)}
        elif tokenizer is not None:
            ids = tokenizer(r.text, truncation=max_length is not None, max_length=max_length)["input_ids"]
            prompt = {"prompt_token_ids": list(ids)}
        else:
            prompt = {"prompt": r.text}
        out.append({"uid": r.uid, "task": r.task, "prompt": prompt, "lora": adapters[r.task]})
    return out


def parse_embed_outputs(outputs) -> np.ndarray:
    """Pooled vectors from vLLM's ``LLM.embed`` results (``.outputs.embedding``; ``.outputs.data`` for
    ``encode``), as an (n, hidden) float32 array."""
    rows = []
    for o in outputs:
        inner = getattr(o, "outputs", o)
        vec = getattr(inner, "embedding", None)
        if vec is None:
            vec = getattr(inner, "data", None)
        if vec is None:
            raise LoraDriftError(f"unexpected vLLM output {type(o).__name__}: no .outputs.embedding/.data")
        rows.append(np.asarray(vec.cpu() if hasattr(vec, "cpu") else vec, dtype=np.float32).reshape(-1))
    return np.stack(rows)


def parse_classify_outputs(outputs) -> np.ndarray:
    """Class probabilities from ``LLM.classify`` (``.outputs.probs``), as (n, n_labels); log-probabilities
    are returned so that argmax and differences behave like logits up to a per-row constant."""
    rows = [np.asarray(getattr(getattr(o, "outputs", o), "probs"), dtype=np.float64) for o in outputs]
    return np.log(np.clip(np.stack(rows), 1e-30, None)).astype(np.float32)


def head_logits(hidden: np.ndarray, tasks: list[str], heads: dict[str, dict]) -> np.ndarray:
    """Apply each request's own trained score head to its pooled vector."""
    hidden = np.asarray(hidden, dtype=np.float32)
    out = np.empty((len(tasks), next(iter(heads.values()))["score_weight"].shape[0]), dtype=np.float32)
    for i, t in enumerate(tasks):
        w, b = heads[t]["score_weight"], heads[t].get("score_bias")
        out[i] = hidden[i] @ w.T + (b if b is not None else 0.0)
    return out


def adapter_rank(adapter_dir: Path) -> int:
    """The largest LoRA rank of a PEFT adapter (``r`` and any per-module ``rank_pattern``)."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return max([int(cfg["r"]), *(int(r) for r in (cfg.get("rank_pattern") or {}).values())])


def max_lora_rank(ranks) -> int:
    """vLLM's ``max_lora_rank`` for adapters of these ranks: the smallest value it accepts that holds them."""
    top = max(int(r) for r in ranks)
    fits = [r for r in LORA_RANKS if r >= top]
    if not fits:
        raise LoraDriftError(f"LoRA rank {top} is above vLLM's largest max_lora_rank ({LORA_RANKS[-1]})")
    return fits[0]


def vllm_dtype(model_dtype: str | None) -> str:
    """vLLM's dtype: the model's half precision, bf16 for an fp32 model (vLLM's LoRA kernels reject fp32)."""
    return "float16" if model_dtype in ("float16", "fp16", "half") else "bfloat16"


def check_not_normalised(hidden: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """The pooled vectors must be raw hidden states for the host-side score head: a batch whose rows all
    have unit L2 norm means vLLM normalised them (its embedding pooler's default)."""
    norms = np.linalg.norm(np.asarray(hidden, dtype=np.float64), axis=1)
    if len(norms) and np.all(np.abs(norms - 1.0) < tol):
        raise LoraDriftError("vLLM returned L2-normalised embeddings (every row has norm 1): the host-side "
                             "score head needs raw last-token hidden states; pooling must run with "
                             "use_activation=False")
    return hidden


# ---------------------------------------------------------------------------- the engine (CUDA)
def engine_arguments(model_path: str, n_adapters: int, rank: int, dtype: str, max_length: int, head: str,
                     gpu_memory_utilization: float) -> dict:
    """The keyword arguments of ``vllm.LLM`` (pooling set explicitly: LAST token, no normalisation)."""
    from vllm.config import PoolerConfig
    if head not in ("host", "native"):
        raise LoraDriftError(f"deploy.vllm.head {head!r}: use host or native")
    kw = dict(model=model_path, enable_lora=True, max_loras=n_adapters, max_lora_rank=max_lora_rank([rank]),
              dtype=vllm_dtype(dtype), max_model_len=max_length, gpu_memory_utilization=gpu_memory_utilization,
              seed=0, runner="pooling", convert="embed" if head == "host" else "classify")
    if head == "host":
        kw["pooler_config"] = PoolerConfig(seq_pooling_type="LAST", use_activation=False)
    return kw


def make_engine(model_path: str, n_adapters: int, rank: int, dtype: str, max_length: int, head: str,
                gpu_memory_utilization: float):
    """One offline ``vllm.LLM`` with multi-LoRA on; an engine that rejects the arguments is an error
    naming the installed vLLM and the version this module is written for (no second attempt)."""
    import vllm
    kw = engine_arguments(model_path, n_adapters, rank, dtype, max_length, head, gpu_memory_utilization)
    try:
        return vllm.LLM(**kw)
    except (TypeError, ValueError) as e:
        raise LoraDriftError(f"vLLM {vllm.__version__} rejected the engine arguments ({type(e).__name__}: {e}); "
                             f"this path is written for vLLM {VLLM_VERSION}: pip install 'loradrift[vllm]' "
                             "in its own virtualenv") from e


def _lora_requests(specs):
    from vllm.lora.request import LoRARequest
    cache = {}
    out = []
    for s in specs:
        name, i, path = s["lora"]
        if i not in cache:
            cache[i] = LoRARequest(name, i, path)
        out.append(cache[i])
    return out


class VllmServer:
    """The benchmark's server interface over a vLLM engine: every request with its task's LoRA; the
    host-side head (``head="host"``) or vLLM's classifier (``"native"``)."""

    switches = 0

    def __init__(self, llm, adapters: dict, heads: dict, tokenizer, max_length: int, head: str):
        self.llm, self.adapters, self.heads, self.tok, self.max_length, self.head = \
            llm, adapters, heads, tokenizer, max_length, head

    def __call__(self, batch):
        import torch
        specs = build_requests(batch, self.adapters, self.tok, self.max_length)
        prompts, lrs = [s["prompt"] for s in specs], _lora_requests(specs)
        if self.head == "host":
            from vllm import PoolingParams
            outs = self.llm.embed(prompts, pooling_params=PoolingParams(use_activation=False), lora_request=lrs,
                                  use_tqdm=False)
            hidden = check_not_normalised(parse_embed_outputs(outs))
            return torch.from_numpy(head_logits(hidden, [s["task"] for s in specs], self.heads))
        return torch.from_numpy(parse_classify_outputs(self.llm.classify(prompts, lora_request=lrs, use_tqdm=False)))


def _time_vllm(server, pools: dict, cfg: dict, log, timer=None) -> tuple[list, list, dict]:
    """The interleaved stream, length-bucketed across adapters (``schedule.mixed``), at every batch size:
    latency rows, batch rows, logits by request (``timer``: CUDA events unless given)."""
    import pandas as pd

    from .schedule import interleaved_stream, mixed, windows
    from .timing import latency_summary, make_timer, serve_window
    timer, lat_rows, rows, got = timer or make_timer("cuda"), [], [], {}
    for bs in cfg["batch_sizes"]:
        wins = windows(interleaved_stream(pools, int(cfg["windows"]) * int(cfg["window"]) * int(bs)), int(bs),
                       int(cfg["window"]))
        for w in wins[:int(cfg["warmup"])]:
            serve_window(server, w, mixed(w, int(bs)), timer)
        for k, w in enumerate(wins):
            plan = mixed(w, int(bs))
            lat, logits = serve_window(server, w, plan, timer)
            done = np.cumsum(lat)
            rows += [{"mode": "vllm-multi", "batch_size": int(bs), "repeat": 0, "window": k, "batch": i,
                      "n": len(b), "tokens_real": sum(w[j].length for j in b),
                      "tokens_padded": sum(w[j].length for j in b), "latency_ms": 1e3 * lat[i],
                      "done_ms": 1e3 * done[i]} for i, b in enumerate(plan)]
            got.update({r.uid: row for r, row in zip(w, logits)})
        B = pd.DataFrame([r for r in rows if r["batch_size"] == int(bs)])
        lat_rows.append({"mode": "vllm-multi", "stream": "interleaved", "batch_size": int(bs),
                         **latency_summary(B), "head": cfg["head"]})
        log(f"  vllm-multi bs={bs}: p50 {lat_rows[-1]['latency_p50_ms']:.2f} ms, "
            f"{lat_rows[-1]['throughput_rps']:.1f} req/s")
    return lat_rows, rows, got


def _check_vllm(prof: dict, unit_dirs: dict, streams: dict, got: dict, encode, head: str) -> list[dict]:
    """vLLM's predictions against the unmerged PEFT model of each task, on the same requests."""
    import torch

    from ..models import load_finetuned
    from .servers import Server
    from .settings import served_method
    corr = []
    for t, path in unit_dirs.items():
        m, _ = load_finetuned(prof, path, served_method(prof, "lora"))
        ref = Server(m.to("cuda").eval(), encode)
        reqs = [r for r in streams[t] if r.uid in got]
        R = np.concatenate([ref(reqs[i:i + 32]).numpy() for i in range(0, len(reqs), 32)])
        V = np.stack([got[r.uid] for r in reqs])
        labels = np.array([r.label for r in reqs])
        corr.append({"mode": "vllm-multi", "reference": "lora", "task": t, "n": len(reqs), "head": head,
                     "prediction_agreement": float((R.argmax(1) == V.argmax(1)).mean()),
                     "max_abs_dlogit": float(np.abs(R - V).max()) if head == "host" else None,
                     "accuracy": float((V.argmax(1) == labels).mean())})
        del m, ref
        torch.cuda.empty_cache()
    return corr


def vllm_config(prof: dict, **overrides) -> dict:
    """The vLLM path's settings: the deploy section's ``vllm``, then keyword overrides."""
    from .settings import deploy_section
    cfg = dict(deploy_section(prof).get("vllm") or {})
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg.setdefault("seed", int(prof["seeds"][0]))
    return cfg


def run_vllm(prof, tasks=None, glue_source=None, log=print, **overrides) -> dict:
    """Time vLLM multi-LoRA on the interleaved stream of every task (length-bucketed mixed-adapter batches)
    and check its predictions against the unmerged PEFT model. Settings: the profile's ``deploy.vllm``
    (batch_sizes, window, windows, warmup, head, gpu_memory_utilization), keyword arguments override. Writes
    ``data/<profile>/deployment_vllm_*.csv`` and ``deployment_vllm_meta.json``. Raises LoraDriftError
    where vLLM cannot run."""
    import pandas as pd
    import torch

    from ..config import environment, load_profile, run_id
    from ..models import base_model_path, load_tokenizer
    from ..store import artifacts_dir, data_dir, write_csv, write_json
    from ..train import model_dir
    from .requests import real_requests
    from .servers import TextEncoder
    from .settings import served_method
    ok, why = vllm_available()
    if not ok:
        raise LoraDriftError(f"the vLLM path cannot run here: {why}")
    import vllm
    prof = load_profile(prof) if isinstance(prof, str) else prof
    cfg, tasks = vllm_config(prof, **overrides), list(tasks or prof["tasks"])
    method, max_len, base = served_method(prof, "lora"), int(prof["data"]["max_length"]), base_model_path(prof)
    tok = load_tokenizer(base)
    units = {t: model_dir(prof["name"], run_id(t, method, cfg["seed"])) for t in tasks}
    heads = {t: split_adapter(units[t], artifacts_dir(prof["name"]) / "vllm" / units[t].name) for t in tasks} \
        if cfg["head"] == "host" else {}
    adapters = adapter_table(tasks, {t: heads[t]["path"] if heads else units[t] for t in tasks})
    rank = max(adapter_rank(units[t]) for t in tasks)  # the trained adapters' own ranks (variants, searched r)
    llm = make_engine(base, len(tasks), rank, prof["model"].get("dtype"), max_len, cfg["head"],
                      float(cfg["gpu_memory_utilization"]))
    n_stream = max(int(cfg["windows"]) * int(cfg["window"]) * int(b) for b in cfg["batch_sizes"])
    encode = TextEncoder(tok, max_len, "cuda")
    streams = {t: real_requests(prof, t, n_stream, glue_source) for t in tasks}
    for reqs in streams.values():   # token counts, for the length-bucketing scheduler
        for r, n in zip(reqs, encode.lengths(reqs)):
            r.length = n
    lat, rows, got = _time_vllm(VllmServer(llm, adapters, heads, tok, max_len, cfg["head"]), streams, cfg, log)
    del llm
    torch.cuda.empty_cache()
    corr = _check_vllm(prof, units, streams, got, encode, cfg["head"])
    out = data_dir(prof["name"])
    for name, frame in (("latency", lat), ("batches", rows), ("correctness", corr)):
        write_csv(out / f"deployment_vllm_{name}.csv", pd.DataFrame(frame))
    write_json(out / "deployment_vllm_meta.json", {"vllm": vllm.__version__, "config": cfg, "tasks": tasks,
                                                   "dtype": vllm_dtype(prof["model"].get("dtype")),
                                                   "max_lora_rank": max_lora_rank([rank]),
                                                   "head": cfg["head"], "seed": cfg["seed"], "target": TARGET,
                                                   "environment": environment(), "finished_at":
                                                   time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return {"latency": lat, "correctness": corr}
