"""Training units on a tiny random Llama: results, the run store, staleness, resume, checks."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from loradrift.config import load_profile
from loradrift.store import data_dir, read_json
from loradrift.train import (baselines, load_runs, model_dir, result_path, sanity_check, train_unit,
                             unit_status)

from conftest import killed_after_checkpoint


def test_unit_writes_result_and_is_skipped_then_stale(tiny_profile, capsys):
    prof = load_profile(str(tiny_profile))
    r = train_unit(prof, "sst2", "lora", 1)
    path = result_path("tiny", "sst2-lora-s1")
    rec = read_json(path)
    for key in ("test", "validation", "curves", "train_runtime_s", "tokens_per_s", "pad_fraction",
                "params", "config", "config_hash", "environment"):
        assert key in rec, key
    assert rec["test"]["n"] == 24 and 0 <= rec["test"]["accuracy"] <= 1
    assert 0 <= rec["pad_fraction"] < 1 and rec["tokens_per_s"] > 0
    assert rec["curves"]["validation"], "validation was evaluated during training"
    # LoRA r=4 on q (32->32) and v (32->16) in 2 layers, plus the 32x2 score head
    assert rec["params"]["trainable"] == 2 * 4 * ((32 + 32) + (32 + 16)) + 64
    assert (model_dir("tiny", "sst2-lora-s1") / "adapter_config.json").exists()
    assert not (data_dir("tiny").parent.parent / "artifacts" / "tiny" / "runs" / "sst2-lora-s1" / "checkpoints").exists()

    # a current result is skipped
    again = train_unit(prof, "sst2", "lora", 1)
    assert again["finished_at"] == r["finished_at"]
    assert "skipped" in capsys.readouterr().out

    # a changed config makes it stale: reported, then re-run
    prof["methods"]["lora"]["learning_rate"] = 1e-3
    assert unit_status(prof, "sst2", "lora", 1) == "stale"
    tiny_profile.write_text(yaml.safe_dump(prof))
    assert [x["status"] for x in load_runs(str(tiny_profile))] == ["stale"]
    train_unit(prof, "sst2", "lora", 1)
    assert unit_status(prof, "sst2", "lora", 1) == "done"
    assert read_json(path)["config"]["training"]["learning_rate"] == 1e-3


def test_full_finetuning_unit_trains_everything(tiny_profile):
    rec = train_unit(str(tiny_profile), "rte", "full", 2)
    assert rec["params"]["trainable"] == rec["params"]["total"]
    assert (model_dir("tiny", "rte-full-s2") / "model.safetensors").exists()


def test_interrupted_unit_resumes(tiny_profile, book_root):
    prof = load_profile(str(tiny_profile))
    prof["training"]["common"].update(evals_per_epoch=1, early_stopping_patience=1000)
    prof["methods"]["full"]["num_train_epochs"] = 12  # long enough to be killed midway
    tiny_profile.write_text(yaml.safe_dump(prof))
    ck = book_root / "artifacts" / "tiny" / "runs" / "rte-full-s3" / "checkpoints"
    args = ["train", "--profile", str(tiny_profile), "--task", "rte", "--method", "full", "--seed", "3"]
    # the first run dies hard (os._exit, like a kill -9) right after its second checkpoint is written
    first = killed_after_checkpoint(args, 2)
    assert first.returncode == 9, first.stderr[-2000:]
    kept = list(ck.glob("checkpoint-*"))  # the latest resume checkpoint, with the best weights so far
    assert len(kept) == 1 and (kept[0] / "best_weights.safetensors").exists()
    assert not result_path("tiny", "rte-full-s3").exists()
    assert unit_status(prof, "rte", "full", 3) == "partial"
    out = subprocess.run([sys.executable, "-m", "loradrift", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from" in out.stdout
    rec = read_json(result_path("tiny", "rte-full-s3"))
    assert rec["resumed_from"] and "checkpoint-" in rec["resumed_from"]
    assert rec["steps"] == 12 * 4  # 32 examples / batch 8 = 4 steps per epoch, all of them done
    # resuming is exact: the same unit trained without interruption gives the same model and record
    whole = train_unit(str(tiny_profile), "rte", "full", 3, force=True)
    assert whole["resumed_from"] is None
    for key in ("test", "validation", "curves", "steps"):
        assert rec[key] == pytest.approx(whole[key]) if key != "curves" else rec[key] == whole[key], key


def test_sanity_check_drives_loss_down(tiny_profile):
    for method in ("full", "lora"):
        s = sanity_check(str(tiny_profile), method)
        assert s["passed"], s["losses"][-5:]
        assert s["losses"][0] > 0.3  # it started from chance, so the check can fail
        # it stops once fit: either every step ran, or the last three losses were all below 0.1
        assert s["steps_run"] == s["steps"] or max(s["losses"][-3:]) < 0.1
        assert s["steps_run"] == len(s["losses"])


def test_baselines(tiny_profile):
    rows = baselines(str(tiny_profile), n_random=200)
    maj = {r["task"]: r for r in rows if r["baseline"] == "majority"}
    rnd = {r["task"]: r for r in rows if r["baseline"] == "random"}
    # tiny MRPC is 2/3 positive: the majority predictor is "1"
    assert maj["mrpc"]["f1"] > 0.7 and abs(maj["mrpc"]["accuracy"] - 16 / 24) < 1e-9
    assert abs(rnd["sst2"]["accuracy"] - 0.5) < 0.05


def test_precision_is_chosen_by_the_profile(monkeypatch):
    from loradrift import trainer as train
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    cfg = lambda p: {"training": {} if p is None else {"precision": p}}  # noqa: E731
    monkeypatch.setattr(train, "cpu_supports_bf16", lambda: True)
    assert [train.precision(cfg(p)) for p in (None, "fp32", "bf16", "auto")] == \
        ["fp32", "fp32", "bf16-autocast", "bf16-autocast"]  # no key: the committed cpu study's fp32
    monkeypatch.setattr(train, "cpu_supports_bf16", lambda: False)
    assert train.precision(cfg("auto")) == "fp32"
    with pytest.raises(train.LoraDriftError, match="no native bf16"):
        train.precision(cfg("bf16"))
    with pytest.raises(train.LoraDriftError, match="use bf16, fp32 or auto"):
        train.precision(cfg("fp16"))


@pytest.mark.skipif(not __import__("loradrift.trainer").trainer.cpu_supports_bf16(), reason="no native bf16 on this CPU")
def test_bf16_autocast_unit_keeps_fp32_weights(tiny_profile):
    prof = load_profile(str(tiny_profile))
    prof["training"]["common"]["precision"] = "bf16"
    rec = train_unit(prof, "sst2", "full", 1)
    assert rec["precision"] == "bf16-autocast" and rec["config"]["training"]["precision"] == "bf16"
    from safetensors import safe_open
    with safe_open(str(model_dir("tiny", "sst2-full-s1") / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}  # master weights stay fp32
