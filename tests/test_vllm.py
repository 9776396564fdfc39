"""The vLLM path's engine arguments, rank bound and pooled-output check, against a fake ``vllm``
module (vLLM itself needs CUDA): what the engine is asked for is what vLLM 0.33's API takes."""
from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest

from loradrift import LoraDriftError
from loradrift.serving import vllm as vs
from loradrift.serving.requests import Request


@dataclass
class PoolerConfig:  # vLLM 0.33's fields that the path sets
    seq_pooling_type: str | None = None
    use_activation: bool | None = None


@dataclass
class PoolingParams:
    use_activation: bool | None = None


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` package recording every engine built and every embed call."""
    mod = types.ModuleType("vllm")
    mod.__version__ = "0.0-fake"
    mod.built, mod.calls, mod.reject, mod.vectors = [], [], None, None

    class LLM:
        def __init__(self, **kw):
            mod.built.append(kw)
            if mod.reject:
                raise mod.reject

        def embed(self, prompts, pooling_params=None, lora_request=None, use_tqdm=True):
            mod.calls.append(pooling_params)
            return [types.SimpleNamespace(outputs=types.SimpleNamespace(embedding=list(v)))
                    for v in mod.vectors[:len(prompts)]]

    mod.LLM, mod.PoolingParams = LLM, PoolingParams
    config = types.ModuleType("vllm.config")
    config.PoolerConfig = PoolerConfig
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, i, path: (name, i, path)
    for name, m in {"vllm": mod, "vllm.config": config, "vllm.lora": types.ModuleType("vllm.lora"),
                    "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, m)
    return mod


def test_engine_gets_bf16_explicit_pooling_and_the_adapters_rank(fake_vllm):
    vs.make_engine("/base", 3, 4, "float32", 128, "host", 0.5)
    kw = fake_vllm.built[-1]
    assert kw["dtype"] == "bfloat16"  # the cpu profile's fp32 model is served in bf16
    assert kw["runner"] == "pooling" and kw["convert"] == "embed"
    assert kw["pooler_config"] == PoolerConfig(seq_pooling_type="LAST", use_activation=False)
    assert kw["max_lora_rank"] == 8 and kw["max_loras"] == 3 and kw["enable_lora"]
    vs.make_engine("/base", 3, 64, "bfloat16", 128, "native", 0.5)  # a lora-r64 variant, vLLM's classifier
    kw = fake_vllm.built[-1]
    assert kw["max_lora_rank"] == 64 and kw["convert"] == "classify" and "pooler_config" not in kw
    vs.make_engine("/base", 3, 40, "float32", 128, "host", 0.5)  # a rank vLLM has no slot for: the next one up
    assert fake_vllm.built[-1]["max_lora_rank"] == 64
    assert vs.vllm_dtype("float16") == "float16" and vs.vllm_dtype(None) == "bfloat16"


def test_engine_that_rejects_its_arguments_fails_once_naming_the_versions(fake_vllm):
    fake_vllm.reject = TypeError("unexpected keyword argument 'pooler_config'")
    with pytest.raises(LoraDriftError, match=r"vLLM 0\.0-fake rejected .*pooler_config.*vLLM 0\.33\.0"):
        vs.make_engine("/base", 3, 8, "float32", 128, "host", 0.5)
    assert len(fake_vllm.built) == 1  # no second engine


def test_max_lora_rank_follows_the_trained_adapters(tmp_path):
    for name, cfg in {"r4": {"r": 4}, "r64": {"r": 64}, "pattern": {"r": 8, "rank_pattern": {"v_proj": 40}}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps(cfg))
    ranks = {n: vs.adapter_rank(tmp_path / n) for n in ("r4", "r64", "pattern")}
    assert ranks == {"r4": 4, "r64": 64, "pattern": 40}
    assert [vs.max_lora_rank([r]) for r in ranks.values()] == [8, 64, 64]
    assert vs.max_lora_rank(ranks.values()) == 64
    with pytest.raises(LoraDriftError, match="above vLLM's largest"):
        vs.max_lora_rank([1024])


def test_host_head_refuses_normalised_pooled_outputs(fake_vllm):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(2, 4)) * 3
    heads = {"rte": {"score_weight": rng.normal(size=(2, 4)).astype(np.float32), "score_bias": None}}
    table = vs.adapter_table(["rte"], {"rte": "/adapters/rte"})
    server = vs.VllmServer(vs.make_engine("/base", 1, 4, "float32", 32, "host", 0.5), table, heads, None, 32, "host")
    batch = [Request(uid=f"rte:{i}", task="rte", text=None, ids=[1, 2, 3]) for i in range(2)]
    fake_vllm.vectors = raw
    logits = server(batch).numpy()
    assert np.allclose(logits, raw.astype(np.float32) @ heads["rte"]["score_weight"].T, atol=1e-5)
    assert fake_vllm.calls[-1] == PoolingParams(use_activation=False)  # per request too
    fake_vllm.vectors = raw / np.linalg.norm(raw, axis=1, keepdims=True)  # what vLLM's default pooler returns
    with pytest.raises(LoraDriftError, match="L2-normalised"):
        server(batch)


@pytest.mark.parametrize("dtype", ["float32", "fp32", "bfloat16", None, "float16"])
def test_vllm_never_gets_fp32(fake_vllm, dtype):
    """vLLM's LoRA kernels take half precision only: an fp32 model is served in bf16."""
    vs.make_engine("/base", 2, 8, dtype, 64, "host", 0.5)
    assert fake_vllm.built[-1]["dtype"] == ("float16" if dtype == "float16" else "bfloat16")


def test_vllm_serves_the_interleaved_stream_length_bucketed():
    """The timed vLLM stream: every task's requests, each once per batch size, in batches sorted by length
    across adapters, logits back per request."""
    import torch

    from loradrift.serving.schedule import interleaved_stream
    calls = []

    def server(batch):
        calls.append([(r.task, r.length) for r in batch])
        return torch.tensor([[float(r.length), 0.0] for r in batch])

    pools = {t: [Request(uid=f"{t}:{i}", task=t, ids=[1] * (i + k), length=i + k) for i in range(12)]
             for k, t in enumerate(["rte", "mrpc", "sst2"])}
    cfg = {"batch_sizes": [1, 4], "window": 2, "windows": 3, "warmup": 1, "head": "host"}
    lat, rows, got = vs._time_vllm(server, pools, cfg, lambda *a: None, timer=lambda fn: (fn(), 0.001))
    assert [r["batch_size"] for r in lat] == [1, 4] and all(r["n_requests"] == r["n_batches"] * r["batch_size"]
                                                             for r in lat)
    timed4 = calls[-6:]                        # batch size 4: 3 windows of 2 batches
    assert all(len(b) == 4 for b in timed4) and any(len({t for t, _ in b}) > 1 for b in timed4)
    for w in (timed4[0:2], timed4[2:4], timed4[4:6]):
        lens = [L for b in w for _, L in b]
        assert lens == sorted(lens)
    stream = interleaved_stream(pools, 24)
    assert {r.uid for r in stream} <= set(got) and all(got[r.uid][0] == r.length for r in stream)
