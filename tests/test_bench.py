"""The benchmark: FLOP counts against a hand count on the tiny model, and a run on the tiny profile."""
from __future__ import annotations

import pytest

from loradrift import bench
from loradrift.config import load_profile
from loradrift.methods import kind_of
from loradrift.models import load_classifier, load_tokenizer


def test_flop_counts_match_a_hand_count(tiny_model):
    model = load_classifier(str(tiny_model), "float32", 2)
    # per layer: q 32x32, k 32x16, v 32x16, o 32x32 (4 heads of 8, 2 kv heads), gate/up 32x64, down 64x32
    per_layer = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 32 * 64 + 32 * 64 + 64 * 32
    n = 2 * per_layer + 32 * 2  # two layers and the 2-label score head; the embedding is a lookup
    assert bench.linear_weights(model) == (n, n)
    attention = 4 * 2 * 32 * (9 + 1) / 2  # 2 layers, d = 32, a 9-token sequence attends to 5 positions on average
    assert bench.flops_per_token(model, 9, "extract") == 2 * n + attention
    assert bench.flops_per_token(model, 9, "full") == 3 * (2 * n + attention)
    prof = {"methods": {"lora": {"kind": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                 "target_modules": ["q_proj", "v_proj"]}}}
    lora = kind_of(prof, "lora").prepare(model, prof["methods"]["lora"])
    lora_w = 2 * 4 * ((32 + 32) + (32 + 16))  # A and B of q and v in two layers
    total, trainable = bench.linear_weights(lora)
    assert (total, trainable) == (n + lora_w, lora_w + 64)
    assert bench.flops_per_token(lora, 9, "lora") == 2 * (2 * total + attention) + 2 * trainable
    with pytest.raises(ValueError):
        bench.flops_per_token(model, 9, "train")


def test_bench_runs_on_the_tiny_profile_and_is_cached(tiny_profile, capsys):
    prof = load_profile(str(tiny_profile))
    prof["bench"] = {"batches": 2, "reps": 1, "task": "sst2", "measures_depths": 0}
    out = bench.run_bench(prof)
    modes = {(r["method"], r["precision"]) for r in out["throughput"]}
    assert {("full", "fp32"), ("lora", "fp32"), ("extract", "fp32")} <= modes
    for r in out["throughput"]:
        assert r["tokens_per_s"] > 0 and 0 < r["fraction_of_ceiling"] and r["batches"] == 2
    assert {c["dtype"] for c in out["ceilings"]} >= {"fp32"} and out["ceiling"]["fp32"] > 0
    assert out["extraction"] is None and out["drift_measures"] is None  # no trained units; measures off
    assert bench.run_bench(prof)["key"] == out["key"] and "current" in capsys.readouterr().out
    prof["bench"]["batches"] = 3
    assert bench.run_bench(prof)["throughput"][0]["batches"] == 3  # a changed setting re-measures


def test_throughput_counts_flops_per_real_token(tiny_model, monkeypatch):
    """FLOP/s is (real tokens x FLOPs per token) / seconds: a sequence of T tokens costs T times."""
    import torch
    model = load_classifier(str(tiny_model), "float32", 2)
    monkeypatch.setattr(bench, "flops_per_token", lambda m, seq_len, mode: 1000.0)
    ids = torch.tensor([[5, 6, 7, 8, 2, 2], [5, 6, 7, 8, 9, 10]])
    mask = (torch.arange(6) < torch.tensor([[4], [6]])).long()
    data = [{"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])}] * 3
    r = bench.throughput(model, data, "extract", "fp32")
    assert r["tokens"] == 2 * (4 + 6)  # two timed batches of 4 + 6 real tokens (the first is a warm-up)
    assert r["gflops"] * 1e9 * r["seconds"] == pytest.approx(1000.0 * r["tokens"])


def test_extraction_agreement_compares_both_precisions_on_trained_units(tiny_profile):
    from loradrift.train import train_unit
    prof = load_profile(str(tiny_profile))
    train_unit(prof, "sst2", "lora", prof["seeds"][0])
    out = bench.extraction_agreement(prof, "sst2", n=8)
    depths = 2 + 2  # embedding, two layers, final norm
    assert len(out["rows"]) == 1 * 2 * 2 * depths  # one trained unit x poolings x measures x depths
    r = out["rows"][0]
    assert {"fp32", "bf16", "diff"} <= set(r) and r["diff"] == pytest.approx(abs(r["bf16"] - r["fp32"]))
    assert 0 <= out["median_abs_diff"] <= out["max_abs_diff"] < 0.5


def test_the_bench_times_the_compared_methods_not_every_sweep_variant(tiny_profile):
    """A learning-rate or rank variant costs what its method costs: the bench times drift.compare (or bench.methods)."""
    prof = load_profile(str(tiny_profile))
    prof["methods"]["lora-r2"] = {**prof["methods"]["lora"], "lora_r": 2}
    assert bench.bench_methods(prof) == ["full", "lora"]
    prof["bench"] = {"methods": ["lora-r2"]}
    assert bench.bench_methods(prof) == ["lora-r2"]
