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
