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
    # every listed task is timed, and each trained method's step is profiled on each task's batches
    prof["bench"].update(tasks=["rte", "sst2"], profile_steps=1)
    out = bench.run_bench(prof)
    assert out["tasks"] == ["rte", "sst2"] and out["task"] == "rte"
    assert {(r["task"], r["method"]) for r in out["throughput"]} == \
        {(t, m) for t in ("rte", "sst2") for m in ("full", "lora", "extract")}
    assert {(r["task"], r["method"], r["steps"]) for r in out["step_profile"]} == \
        {(t, m, 1) for t in ("rte", "sst2") for m in ("full", "lora")}
    assert out["levers"] is None


def test_operator_groups():
    assert bench.op_group("aten::mm") == bench.op_group("aten::addmm") == "matrix products"
    assert bench.op_group("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    assert bench.op_group("aten::_fused_adamw_") == bench.op_group("Optimizer.step#AdamW.step") == "optimizer"
    assert bench.op_group("aten::_to_copy") == bench.op_group("aten::copy_") == "casts and copies"
    # near names are not matrix products: mm is matched whole, not as a prefix
    assert bench.op_group("aten::mm_backward_like") == bench.op_group("aten::mul") == "other"
    assert bench.op_group("autograd::engine::evaluate_function: MmBackward0") == "other"


def test_step_profile_shares_and_the_matrix_products_rate(tiny_model):
    import torch
    model = load_classifier(str(tiny_model), "float32", 2)
    ids = torch.full((4, 12), 5)
    data = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 0, 1])}] * 3
    r = bench.step_profile(model, data, "full", "fp32", ceiling=1.0)
    assert r["steps"] == 2 and set(r["shares"]) == {"matrix products", "attention", "optimizer",
                                                      "casts and copies", "other", "unattributed"}
    assert sum(r["shares"].values()) == pytest.approx(1.0)   # of the profiled steps' wall time
    assert 0 < r["operators_s"] <= r["profiled_s"]
    assert r["shares"]["matrix products"] > 0 and r["shares"]["optimizer"] > 0
    # the matrix products' FLOPs the profiler counts are the hand count: every linear layer (the score head
    # too: it scores every position) in the forward pass, the activations' gradients and the weights' gradients
    n, _ = bench.linear_weights(model)
    assert r["matmul_flops"] == 2 * 3 * (2 * n * 4 * 12)
    assert r["matmul_fraction_of_ceiling"] == pytest.approx(r["matmul_gflops"])  # against a ceiling of 1 GFLOP/s


def test_levers_run_in_fresh_processes_side_by_side(tiny_profile):
    prof = load_profile(str(tiny_profile))
    assert bench.LEVER_ORDER == ("eager", "pinned", "eager", "compiled", "eager")  # eager around every lever
    rows = bench.levers(prof, "sst2", "full", "fp32", n_batches=2, threads=1, budget_s=300,
                        which=("eager", "pinned", "eager"))
    assert [r["lever"] for r in rows] == ["eager", "pinned", "eager"]
    assert all(r["tokens_per_s"] > 0 and r["batches"] == 2 for r in rows)
    assert rows[1]["env"] == {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"} and rows[0]["env"] == {}
    eager = (rows[0]["tokens_per_s"] + rows[2]["tokens_per_s"]) / 2
    assert rows[1]["vs_eager"] == pytest.approx(rows[1]["tokens_per_s"] / eager)
    # a probe past its budget is recorded as such, not waited for
    late = bench.levers(prof, "sst2", "full", "fp32", n_batches=2, threads=1, budget_s=0.5, which=("compiled",))
    assert late[0]["error"] == "not finished in 0.5 s"
    assert late[0]["vs_eager"] is None and late[0]["process_s"] < 30


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
