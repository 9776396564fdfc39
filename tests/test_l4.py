"""The l4 profile's numerics (fp32 master weights under bf16), its memory plan and its time plan."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_profile_dict
from test_chapters import ROOT
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


# --------------------------------------------------------------------------- the l4 path end to end, tiny
# The l4 profile's YAML with only what makes it tiny overridden (sizes, epochs, search trials, the serving and
# drift counts) and bf16 guarded for a CPU (precision auto); everything else (bfloat16 model dtype, gradient
# checkpointing, accumulation, cosine schedule, the search space, every deploy mode) is the profile's own.
L4_TINY = {
    "data": {"max_length": 32, "tasks": {"rte": {"train_size": 32, "validation_size": 16},
                                         "mrpc": {"train_size": None, "validation_size": 16},
                                         "sst2": {"train_size": 40, "validation_size": 16}}},
    "seeds": [1, 2],
    # learning rates the tiny random model moves at in a few steps (at 1e-5 every seed stays at the base: the
    # drift tests would compare constants)
    "methods": {"full": {"num_train_epochs": 1, "learning_rate": 1e-3},
                "lora": {"num_train_epochs": 1, "learning_rate": 5e-3, "lora_r": 4}},
    "training": {"common": {"precision": "auto", "per_device_eval_batch_size": 16}},
    "sanity": {"n_examples": 8, "steps": 4},
    "search": {"n_trials": 1, "n_startup_trials": 1, "pruner": {"n_startup_trials": 1, "n_warmup_steps": 1}},
    "bench": {"batches": 2},
    "deploy": {"repeats": 1, "warmup": 1, "bootstrap": 20,
               "comparisons": {"single": {"batch_sizes": [1, 4], "windows": {1: 2, 4: 1}},
                               "adapters": {"batch_sizes": [1, 4], "windows": {1: 1, 4: 1}},
                               "mixed": {"batch_sizes": [1, 4], "windows": {1: 1, 4: 1}}}},
    "drift": {"n_boot": 20, "n_perm": 5, "merge_check_examples": 4, "original_check_examples": 2,
              "original_pad_positions": 3, "ppl_chunks": 2, "ppl_chunk_len": 16, "intruder_k": 4},
}


@pytest.fixture
def l4_book(tmp_path, tiny_model, tiny_glue):
    """A book root and a copy of the library whose profiles/l4.yaml is the real one made tiny (L4_TINY): the
    stages (child processes) and the chapters' kernels import that copy; the repository is not touched."""
    import random
    import shutil

    import yaml

    from loradrift.config import PROFILE_DIR, merge
    lib = tmp_path / "lib"
    shutil.copytree(PROFILE_DIR.parent, lib / "loradrift", ignore=shutil.ignore_patterns("__pycache__"))
    doc = yaml.safe_load((PROFILE_DIR / "l4.yaml").read_text())
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(" ".join(random.Random(0).choice(["good", "bad", "the", "film", "a"]) for _ in range(400)))
    over = merge(L4_TINY, {"data": {"source": str(tiny_glue)}, "drift": {"wikitext": str(wiki)}})
    (lib / "loradrift" / "profiles" / "l4.yaml").write_text(yaml.safe_dump(merge(doc, over)))
    root = tmp_path / "book"
    root.mkdir()
    (root / "_quarto.yml").write_text("project: {type: book}\n")
    env = {"PYTHONPATH": str(lib), "LORADRIFT_ROOT": str(root), "LORADRIFT_MODEL": str(tiny_model),
           "LORADRIFT_WANDB": "0", "QUARTO_PROFILE": "l4", "OMP_NUM_THREADS": "2"}
    return root, env


def _repo_state():
    import subprocess
    return subprocess.run(["git", "status", "--porcelain", "--", "data", "_freeze"], cwd=ROOT,
                          capture_output=True, text=True).stdout


def test_l4_profile_runs_every_stage_and_chapter_end_to_end(l4_book):
    """Every stage of ``loradrift.stages`` (``python -m loradrift all --profile l4``) and every chapter executed
    the way ``quarto render --profile l4`` executes it, on a tiny random Llama saved as safetensors."""
    import json
    import os
    import subprocess
    import sys

    from test_chapters import CHAPTERS, run_chapter
    root, env = l4_book
    before = _repo_state()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("LORADRIFT_", "QUARTO_"))} | env
    res = subprocess.run([sys.executable, "-m", "loradrift", "all", "--profile", "l4"], env=full_env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    d = root / "data" / "l4"
    runs = sorted(p.stem for p in (d / "runs").glob("*.json"))
    assert len(runs) == 3 * 2 * 2, runs
    rec = json.loads((d / "runs" / "rte-full-s1.json").read_text())
    assert rec["weights_dtype"] == "float32" and rec["config"]["training"]["gradient_checkpointing"]
    for f in ("data_stats.json", "bench.json", "search/summary.json", "drift_summary.json", "deployment_meta.json"):
        assert (d / f).exists(), f
    for chapter in CHAPTERS:
        nb = run_chapter(chapter, dict(env, LORADRIFT_COMPUTE="missing"))
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, (chapter.name, errors[0].get("evalue") if errors else None)
    assert _repo_state() == before  # the repository's data/ and _freeze/ are untouched


def test_search_apply_writes_floats_the_profile_loader_reads_as_floats():
    # the l4 search's first trial is the untuned lr 1e-5: ruamel writes 1e-05, which PyYAML reads as a string
    import io

    import yaml
    from ruamel.yaml import YAML

    from loradrift.search import _yaml11_float
    rt = YAML()
    rt.representer.add_representer(float, _yaml11_float)
    values = {"a": 1e-05, "b": 2.5e-06, "c": 0.0003, "d": 1e20, "e": 0.06, "f": -3e-07}
    buf = io.StringIO()
    rt.dump(values, buf)
    assert yaml.safe_load(buf.getvalue()) == values


def test_plan_tables_read_the_committed_l4_plans(monkeypatch):
    from loradrift import plan
    monkeypatch.setenv("LORADRIFT_ROOT", str(ROOT))
    mem, tim = plan.plan_tables("l4")
    assert list(mem["method"]) == ["full", "lora"] and (mem["peak GB"] <= 20).all()
    assert set(tim["stage"]) == {"search", "train", "drift", "deploy"}
    assert plan.plan_tables("no-such-profile") == (None, None)
