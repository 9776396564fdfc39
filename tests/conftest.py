"""Shared fixtures: a tiny random Llama with a word-level tokenizer, tiny GLUE-format TSVs, and a
profile that points at both. Nothing is downloaded; every file is written by the tests."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import yaml

SHARED_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"

POS = ["good", "great", "fine", "nice", "happy", "bright"]
NEG = ["bad", "awful", "poor", "sad", "dull", "grim"]
FILL = ["the", "a", "movie", "story", "was", "very", "quite", "plot", "and", "it", "is", "man", "car",
        "city", "rain", "red", "blue", "said", "he", "she", "they", "today", "old", "new"]
SPECIAL = ["<unk>", "<s>", "</s>", "[SEP]"]


def _sentence(rng, word):
    words = [rng.choice(FILL) for _ in range(rng.randint(2, 9))]
    words.insert(rng.randint(0, len(words)), word)
    return " ".join(words)


def write_tiny_glue(root: Path, n_train: int = 64, n_dev: int = 24, seed: int = 0) -> Path:
    """GLUE-layout TSVs whose label is decided by one word (so a model can learn them)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        (root / "SST-2").mkdir(exist_ok=True)
        with open(root / "SST-2" / f"{split}.tsv", "w") as f:
            f.write("sentence\tlabel\n")
            for i in range(n):
                y = i % 2
                f.write(f"{_sentence(rng, rng.choice(POS if y else NEG))} \t{y}\n")
        (root / "MRPC").mkdir(exist_ok=True)
        with open(root / "MRPC" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
            for i in range(n):
                y = int(i % 3 != 0)
                a = _sentence(rng, rng.choice(POS))
                b = a if y else _sentence(rng, rng.choice(NEG))
                f.write(f"{y}\t{1000 + i}\t{2000 + i}\t{a}\t{b}\n")
        (root / "RTE").mkdir(exist_ok=True)
        with open(root / "RTE" / f"{split}.tsv", "w") as f:
            f.write("index\tsentence1\tsentence2\tlabel\n")
            for i in range(n):
                y = i % 2
                lab = "entailment" if y == 0 else "not_entailment"
                f.write(f"{i}\t{_sentence(rng, 'good')}\t{_sentence(rng, 'good' if y == 0 else 'bad')}\t{lab}\n")
    return root


def make_tiny_llama(out: Path, layers: int = 2, hidden: int = 32) -> Path:
    """A randomly initialised Llama (the study's architecture, tiny) with a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + POS + NEG + FILL)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", pad_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_profile_dict(model: Path, glue: Path, **over) -> dict:
    prof = {
        "name": "tiny", "description": "tests: tiny random Llama on tiny GLUE-format files",
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"source": str(glue), "max_length": 32, "split_seed": 0,
                 "tasks": {"rte": {"train_size": 32, "validation_size": 16},
                           "mrpc": {"train_size": None, "validation_size": 16},
                           "sst2": {"train_size": 40, "validation_size": 16}},
                 "test_size": None},
        "tasks": ["rte", "mrpc", "sst2"], "seeds": [1, 2, 3],
        "methods": {
            "full": {"kind": "full", "learning_rate": 1e-3, "num_train_epochs": 2, "warmup_ratio": 0.0,
                     "weight_decay": 0.0},
            "lora": {"kind": "lora", "learning_rate": 5e-3, "num_train_epochs": 2, "warmup_ratio": 0.0,
                     "weight_decay": 0.0, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                     "target_modules": ["q_proj", "v_proj"]}},
        "training": {
            "common": {"per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
                       "gradient_accumulation_steps": 1, "lr_scheduler_type": "linear", "max_grad_norm": 1.0,
                       "evals_per_epoch": 1, "early_stopping_patience": 2}},
        "sanity": {"n_examples": 10, "steps": 60, "learning_rate": {"full": 3e-3, "lora": 2e-2}},
        "wandb": {"project": "lora-drift-tests", "mode": "disabled"},
    }
    for k, v in over.items():
        prof[k] = v
    return prof


def killed_after_checkpoint(args: list[str], n: int = 1):
    """Run the CLI with ``args`` in a child process that dies hard (os._exit(9), like kill -9: no
    cleanup, no wandb.finish) right after writing its ``n``-th resume checkpoint."""
    import subprocess
    import sys
    crash = (
        "import os, sys\n"
        "from transformers import Trainer\n"
        "save = Trainer._save_checkpoint\n"
        "n = [0]\n"
        "def dying_save(self, *a, **k):\n"
        "    save(self, *a, **k)\n"
        "    n[0] += 1\n"
        f"    if n[0] == {n}:\n"
        "        os._exit(9)\n"
        "Trainer._save_checkpoint = dying_save\n"
        "from loradrift.cli import main\n"
        f"sys.exit(main({args!r}))\n")
    return subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory) -> Path:
    return write_tiny_glue(tmp_path_factory.mktemp("glue"))


@pytest.fixture
def book_root(tmp_path, monkeypatch) -> Path:
    """An empty book root: data/ and artifacts/ of the test go here, not into the repository."""
    (tmp_path / "_quarto.yml").write_text("project: {type: book}\n")
    monkeypatch.setenv("LORADRIFT_ROOT", str(tmp_path))
    monkeypatch.delenv("LORADRIFT_ARTIFACTS", raising=False)
    monkeypatch.delenv("LORADRIFT_MODEL", raising=False)
    monkeypatch.delenv("LORADRIFT_GLUE_DIR", raising=False)
    monkeypatch.setenv("LORADRIFT_WANDB", "0")
    return tmp_path


@pytest.fixture
def tiny_profile(book_root, tiny_model, tiny_glue) -> Path:
    """Path of a YAML profile named 'tiny' (load it with loradrift.config.load_profile(path))."""
    path = book_root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_profile_dict(tiny_model, tiny_glue)))
    return path


# ---------------------------------------------------------------------------------- progress
# `pytest -q` prints a dot per test; a test (with its fixtures) that takes SLOW_S seconds or more also
# gets a line as it finishes, so a run of several minutes shows where it is.
SLOW_S = 10.0
_progress = {"done": 0, "total": 0, "took": {}}


def pytest_collection_finish(session):
    _progress["total"] = len(session.items)


def pytest_runtest_logreport(report):
    took = _progress["took"]
    took[report.nodeid] = took.get(report.nodeid, 0.0) + report.duration
    if report.when != "teardown":
        return
    _progress["done"] += 1
    seconds = took.pop(report.nodeid)
    tr = _config.pluginmanager.get_plugin("terminalreporter") if _config else None
    if tr is not None and seconds >= SLOW_S and _config.get_verbosity() <= 0:
        start = "\n" if getattr(getattr(tr, "_tw", None), "width_of_current_line", 1) else ""  # after the dots
        tr.write(f"{start}[{_progress['done']}/{_progress['total']}] {seconds:5.0f} s  {report.nodeid}\n")


_config = None


def pytest_configure(config):
    global _config
    _config = config
