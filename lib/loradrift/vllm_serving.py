"""vLLM multi-LoRA serving of the study's adapters (CUDA only; vLLM is imported only when used).

Written against vLLM's documented *offline* API (``vllm.LLM`` with ``enable_lora=True``,
``max_loras``, ``max_lora_rank``; ``vllm.lora.request.LoRARequest(name, id, path)``; pooling models
via ``runner="pooling", convert="embed"`` from vLLM 0.10 on, ``task="embed"`` before). It has **not
been run** for this book: vLLM needs CUDA and the book's default build is CPU-only.

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

from . import LoraDriftError

TARGET = "vLLM >= 0.10 (V1 engine, runner/convert API); task='embed' fallback for older versions"


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
    from .serving import check_adapter
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
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
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


# ---------------------------------------------------------------------------- the engine (CUDA)
def make_engine(model_path: str, n_adapters: int, rank: int, dtype: str, max_length: int, head: str = "host",
                gpu_memory_utilization: float = 0.5):
    """An offline ``vllm.LLM`` with multi-LoRA on; pooling as embedding (host head) or classification."""
    from vllm import LLM
    common = dict(model=model_path, enable_lora=True, max_loras=n_adapters, max_lora_rank=max(8, rank),
                  dtype=dtype, max_model_len=max_length, gpu_memory_utilization=gpu_memory_utilization,
                  seed=0)
    try:
        from vllm.config import PoolerConfig
        pooler = PoolerConfig(pooling_type="LAST", normalize=False) if head == "host" else None
    except Exception:
        pooler = None
    convert = "embed" if head == "host" else "classify"
    try:  # vLLM >= 0.10
        kw = dict(runner="pooling", convert=convert)
        if pooler is not None:
            kw["pooler_config"] = pooler
        return LLM(**common, **kw)
    except TypeError:  # older: task= and override_pooler_config=
        kw = dict(task="embed" if head == "host" else "classify")
        if pooler is not None:
            kw["override_pooler_config"] = pooler
        return LLM(**common, **kw)


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


def run_vllm(prof, tasks=None, glue_source=None, batch_sizes=(1, 8, 32), n_requests: int = 500,
             warmup_batches: int = 5, head: str = "host", seed: int | None = None, log=print) -> dict:
    """Time vLLM multi-LoRA on the interleaved (mixed-adapter) stream of every task and check its
    predictions against the unmerged PEFT model. Writes ``data/<profile>/deployment_vllm_*.csv`` and
    ``deployment_vllm_meta.json``. Raises LoraDriftError where vLLM cannot run."""
    import pandas as pd
    import torch

    from .config import environment, load_profile, run_id
    from .store import artifacts_dir, data_dir, write_csv, write_json
    from .models import base_model_path, load_finetuned, load_tokenizer
    from .serving import (TextEncoder, Server, latency_summary, mixed_batches, n_per_point, real_requests,
                          time_stream)
    from .train import model_dir
    ok, why = vllm_available()
    if not ok:
        raise LoraDriftError(f"the vLLM path cannot run here: {why}")
    import vllm
    prof = load_profile(prof) if isinstance(prof, str) else prof
    tasks = list(tasks or prof["tasks"])
    seed = int(seed if seed is not None else prof["seeds"][0])
    max_len = int(prof["data"]["max_length"])
    base = base_model_path(prof)
    tok = load_tokenizer(base)
    heads, paths = {}, {}
    for t in tasks:
        rid = run_id(t, "lora", seed)
        if head == "host":
            heads[t] = split_adapter(model_dir(prof["name"], rid), artifacts_dir(prof["name"]) / "vllm" / rid)
            paths[t] = heads[t]["path"]
        else:
            paths[t] = model_dir(prof["name"], rid)
    adapters = adapter_table(tasks, paths)
    rank = max(int(s["lora_r"]) for s in prof["methods"].values() if "lora_r" in s)  # vLLM's max_lora_rank
    llm = make_engine(base, len(tasks), rank, "bfloat16" if prof["model"].get("dtype") == "bfloat16" else "float32",
                      max_len, head)
    n_stream = max(n_per_point(n_requests, b) for b in batch_sizes)
    streams = {t: real_requests(prof, t, n_stream, glue_source) for t in tasks}

    class VllmServer:
        switches = 0

        def __call__(self, batch):
            specs = build_requests(batch, adapters, tok, max_len)
            prompts = [s["prompt"] for s in specs]
            lrs = _lora_requests(specs)
            if head == "host":
                outs = llm.embed(prompts, lora_request=lrs, use_tqdm=False)
                return torch.from_numpy(head_logits(parse_embed_outputs(outs), [s["task"] for s in specs], heads))
            return torch.from_numpy(parse_classify_outputs(llm.classify(prompts, lora_request=lrs, use_tqdm=False)))

    server = VllmServer()
    lat_rows, batch_rows, got = [], [], {}
    for bs in batch_sizes:
        batches = mixed_batches(streams, int(bs), n_requests)
        res = time_stream(server, batches, warmup_batches)
        lat_rows.append({"mode": "vllm-multi", "stream": "multi", "batch_size": int(bs), "repeat": 0,
                         **latency_summary(res["latency_s"], res["sizes"], res["wall_s"]), "head": head})
        for i, (b, l) in enumerate(zip(batches, res["latency_s"])):
            batch_rows.append({"mode": "vllm-multi", "stream": "multi", "batch_size": int(bs), "repeat": 0,
                               "batch": i, "n": len(b), "latency_ms": float(l) * 1e3})
        for b, out in zip(batches, res["logits"]):
            for r, row in zip(b, out.numpy()):
                got.setdefault(r.uid, row)
        log(f"  vllm-multi bs={bs}: p50 {lat_rows[-1]['latency_p50_ms']:.2f} ms, {lat_rows[-1]['throughput_rps']:.1f} req/s")
    del llm
    torch.cuda.empty_cache()
    # reference: the unmerged PEFT model of each task on the same requests
    corr = []
    enc = TextEncoder(tok, max_len, "cuda")
    for t in tasks:
        m, _ = load_finetuned(prof, model_dir(prof["name"], run_id(t, "lora", seed)), "lora")
        ref = Server(m.to("cuda").eval(), enc)
        reqs = [r for r in streams[t] if r.uid in got]
        R = np.concatenate([ref(reqs[i:i + 32]).numpy() for i in range(0, len(reqs), 32)])
        V = np.stack([got[r.uid] for r in reqs])
        agree = float((R.argmax(1) == V.argmax(1)).mean())
        labels = np.array([r.label for r in reqs])
        corr.append({"mode": "vllm-multi", "reference": "lora", "task": t, "n": len(reqs), "head": head,
                     "prediction_agreement": agree,
                     "max_abs_dlogit": float(np.abs(R - V).max()) if head == "host" else None,
                     "accuracy": float((V.argmax(1) == labels).mean())})
        del m, ref
        torch.cuda.empty_cache()
    out = data_dir(prof["name"])
    write_csv(out / "deployment_vllm_latency.csv", pd.DataFrame(lat_rows))
    write_csv(out / "deployment_vllm_batches.csv", pd.DataFrame(batch_rows))
    write_csv(out / "deployment_vllm_correctness.csv", pd.DataFrame(corr))
    write_json(out / "deployment_vllm_meta.json", {"vllm": vllm.__version__, "head": head, "tasks": tasks,
                                                   "seed": seed, "target": TARGET, "environment": environment(),
                                                   "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return {"latency": lat_rows, "correctness": corr}
