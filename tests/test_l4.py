"""The l4 profile's numerics (fp32 master weights under bf16), its memory plan and its time plan."""
from __future__ import annotations

import torch

from conftest import tiny_profile_dict
from loradrift.models import build_for_training, load_classifier, training_dtype

LR = 1e-5  # full fine-tuning's learning rate in the l4 profile


def _one_adamw_step(model, lr: float = LR) -> float:
    """The fraction of the weights one AdamW step (no weight decay) at ``lr`` changes."""
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    x = torch.randint(3, 20, (4, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=x, labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()
    opt.step()
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
    return changed / sum(b.numel() for b in before)


def test_bf16_stored_weights_round_lr_1e5_updates_away_fp32_masters_keep_them(tiny_model):
    # AdamW's first step moves each weight by ~lr = 1e-5; a weight of the usual size (~0.02) has a bf16 step of
    # 0.02 * 2^-8 ~ 8e-5, so the update (under half a step) rounds away unless the weight is stored in fp32
    bf16 = load_classifier(str(tiny_model), "bfloat16", 2)
    assert _one_adamw_step(bf16) < 0.2
    torch.manual_seed(0)
    fp32 = load_classifier(str(tiny_model), "float32", 2)
    w = fp32.model.layers[0].self_attn.q_proj.weight
    before = w.detach().clone()
    assert _one_adamw_step(fp32) > 0.95
    rel = ((w.detach() - before).abs() / before.abs().clamp_min(1e-12)).median()
    assert rel < 2 ** -9  # the updates fp32 keeps are ones bf16 could not represent
    assert rel > 1e-5


def test_training_a_bf16_profile_keeps_fp32_master_weights(tiny_model, tiny_glue):
    prof = tiny_profile_dict(tiny_model, tiny_glue)
    prof["model"]["dtype"] = "bfloat16"
    assert training_dtype(prof) == torch.float32
    for method in ("full", "lora"):
        model, _ = build_for_training(prof, method, dict(prof["methods"][method], gradient_checkpointing=True), 0)
        assert {p.dtype for p in model.parameters()} == {torch.float32}, method
        assert any(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------------------- the plans
def test_meta_tinyllama_has_the_published_parameter_counts():
    from loradrift import plan
    from loradrift.config import load_profile
    from loradrift.methods import method_settings
    c = plan.counts(plan.meta_classifier())
    lm_head, score = 32000 * 2048, 2048 * 2
    assert c["total"] == 1_100_048_384 - lm_head + score  # TinyLlama-1.1B's causal LM, its head swapped
    lora = plan.counts(plan.prepared(load_profile("l4"), "lora"))
    r = method_settings(load_profile("l4"), "lora")["lora_r"]
    per_layer = r * (2048 + 2048) + r * (2048 + 256)  # q_proj 2048->2048, v_proj 2048->256 (4 kv heads of 64)
    assert lora["trainable"] == 22 * per_layer + score == 1_130_496


def test_activation_formula_matches_what_autograd_keeps():
    from loradrift import plan
    m = plan.measure_activations(batch=1, seq=48)
    for k in ("with_checkpointing", "without_checkpointing"):
        assert abs(m[k]["ratio"] - 1) < 0.02, m


def test_l4_memory_plan_fits_20_gb_per_method_and_needs_checkpointing():
    from loradrift import plan
    from loradrift.config import load_profile
    p = plan.memory_plan(load_profile("l4"))
    for method, row in p["methods"].items():
        assert row["gradient_checkpointing"] and row["peak_gb"] <= 20, (method, row["peak_gb"])
    full = p["methods"]["full"]
    assert full["without_checkpointing"]["peak_gb"] > 24  # why the profile checkpoints
    assert abs(full["with_checkpointing"]["gb"]["optimizer"] - 8 * 1.0345) < 0.01  # 2 fp32 states per weight


def test_l4_time_plan_counts_the_profile_units(tmp_path):
    from loradrift import plan
    from loradrift.config import load_profile
    t = plan.time_plan(load_profile("l4"))
    assert set(t["units"]) == {f"{task}-{m}" for task in ("rte", "mrpc", "sst2") for m in ("full", "lora")}
    assert t["units"]["sst2-full"]["train_examples"] == 67349 - 2000
    assert 0.5 < t["training_hours"] < 24 and t["stages"]["search"]["hours"] > t["training_hours"]
