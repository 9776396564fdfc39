"""The architecture's promises, on the tiny fixtures: a new task, a LoRA rank variant and layered
profiles are data; the staleness key covers the model and the data; and the wiring of training
(which split selects the checkpoint, which checkpoint is kept, which label is which) is right."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from loradrift import LoraDriftError, train
from loradrift.config import config_hash, load_profile, unit_config, units
from loradrift.data import load_glue, study_splits
from loradrift.store import read_json
from loradrift.tasks import TASKS, Task, register_task

from conftest import NEG, POS, tiny_profile_dict


def _write(path, prof: dict):
    path.write_text(yaml.safe_dump({k: v for k, v in prof.items() if not k.startswith("_")}))
    return path


@pytest.fixture
def new_task(tiny_glue):
    """A fourth task in the registry (place 1 of 2): single sentences in SST-2's layout, own folder."""
    import shutil
    folder = tiny_glue / "SST2B"
    if not folder.exists():
        shutil.copytree(tiny_glue / "SST-2", folder)
    register_task(Task("sst2b", "SST2B", "sentence", None, "label", ("negative", "positive"), "f1",
                       ("sentence", None)))
    yield "sst2b"
    TASKS.pop("sst2b")


def test_a_task_is_added_in_two_places(book_root, tiny_model, tiny_glue, new_task):
    # place 2 of 2: the profile's data (the task's sizes) and task list
    prof = tiny_profile_dict(tiny_model, tiny_glue)
    prof["tasks"] = ["sst2b"]
    prof["data"]["tasks"]["sst2b"] = {"train_size": 40, "validation_size": 16}
    path = _write(book_root / "tiny4.yaml", prof)
    prof = load_profile(str(path))
    assert units(prof, methods=["lora"], seeds=[1]) == [("sst2b", "lora", 1)]
    rec = train.train_unit(prof, "sst2b", "lora", 1)
    assert rec["id"] == "sst2b-lora-s1" and rec["validation"]["metric"] == "f1"
    assert rec["test"]["n"] == 24


def test_a_task_without_sizes_is_named(book_root, tiny_model, tiny_glue, new_task):
    prof = tiny_profile_dict(tiny_model, tiny_glue)
    prof["tasks"] = ["sst2b"]
    with pytest.raises(LoraDriftError, match="missing data.tasks.sst2b"):
        load_profile(str(_write(book_root / "tiny4.yaml", prof)))


def test_a_lora_rank_variant_is_a_few_lines_of_yaml(book_root, tiny_model, tiny_glue):
    prof = tiny_profile_dict(tiny_model, tiny_glue)
    prof["methods"]["lora-r2"] = {"extends": "lora", "lora_r": 2}  # the only change
    prof = load_profile(str(_write(book_root / "tiny.yaml", prof)))
    assert prof["methods"]["lora-r2"]["kind"] == "lora" and prof["methods"]["lora-r2"]["lora_alpha"] == 8
    assert ("sst2", "lora-r2", 1) in units(prof)
    cfg = unit_config(prof, "sst2", "lora-r2", 1)
    assert cfg["kind"] == "lora" and cfg["training"]["lora_r"] == 2
    assert "kind" not in unit_config(prof, "sst2", "lora", 1)  # a method named after its kind records none
    rec = train.train_unit(prof, "sst2", "lora-r2", 1)
    assert rec["id"] == "sst2-lora-r2-s1"
    # r=2 on q (32->32) and v (32->16) in 2 layers, plus the 32x2 score head
    assert rec["params"]["trainable"] == 2 * 2 * ((32 + 32) + (32 + 16)) + 64
    adapter = read_json(train.model_dir("tiny", "sst2-lora-r2-s1") / "adapter_config.json")
    assert adapter["r"] == 2


def test_profiles_are_layered_and_checked(tmp_path):
    (tmp_path / "_layer.yaml").write_text(yaml.safe_dump({"seeds": [1, 2], "training": {"common": {"a": 1}}}))
    cpu = load_profile("cpu-v1")
    raw = {k: v for k, v in cpu.items() if not k.startswith("_") and k not in ("seeds",)}
    raw["extends"] = "_layer"
    raw["training"] = {"common": {k: v for k, v in cpu["training"]["common"].items()}}
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(raw))
    prof = load_profile(str(p))
    assert prof["seeds"] == [1, 2] and prof["training"]["common"]["a"] == 1  # from the layer
    assert prof["training"]["common"]["per_device_train_batch_size"] == 16  # the file's own, merged
    del raw["training"]["common"]["per_device_train_batch_size"]
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(LoraDriftError, match=r"mine.yaml.*missing training.common.per_device_train_batch_size"):
        load_profile(str(p))
    p.write_text("model: [unclosed\n")
    with pytest.raises(LoraDriftError, match=r"mine.yaml line \d+: not valid YAML"):
        load_profile(str(p))


def test_shipped_profiles_keep_their_unit_hashes():
    """The layered cpu-v1 profile (the first run, once called cpu) gives the committed units exactly the config they were trained with."""
    from pathlib import Path
    prof = load_profile("cpu-v1")
    runs = Path(__file__).resolve().parents[1] / "data" / "cpu-v1" / "runs"
    recs = [read_json(p) for p in sorted(runs.glob("*.json"))]
    assert len(recs) == 18
    for rec in recs:
        assert config_hash(unit_config(prof, rec["task"], rec["method"], rec["seed"])) == rec["config_hash"], rec["id"]


@pytest.mark.parametrize("change", [
    ("model", "dtype", "bfloat16"), ("model", "name_or_path", "elsewhere"),
    ("data", "max_length", 16), ("data", "split_seed", 7), ("data", "test_size", 8)])
def test_model_and_data_settings_make_a_unit_stale(tiny_profile, change):
    prof = load_profile(str(tiny_profile))
    before = config_hash(unit_config(prof, "rte", "full", 1))
    section, k, v = change
    prof[section][k] = v
    assert config_hash(unit_config(prof, "rte", "full", 1)) != before
    prof = load_profile(str(tiny_profile))
    prof["data"]["tasks"]["rte"]["train_size"] = 24
    assert config_hash(unit_config(prof, "rte", "full", 1)) != before


# ----------------------------------------------------------------------------------- training wiring
@pytest.fixture
def selecting_profile(tiny_profile):
    """Several evaluations with different scores, so that the kept checkpoint is a real choice."""
    prof = load_profile(str(tiny_profile))
    prof["training"]["common"].update(evals_per_epoch=3, early_stopping_patience=100)
    prof["methods"]["lora"].update(num_train_epochs=3, learning_rate=2e-2)
    return _write(tiny_profile, prof)


def test_selection_reads_the_validation_slice_and_keeps_the_best(selecting_profile, monkeypatch):
    sizes = []
    real = train._compute_metrics

    def spy(eval_pred):
        sizes.append(len(eval_pred.label_ids))
        return real(eval_pred)
    monkeypatch.setattr(train, "_compute_metrics", spy)
    prof = load_profile(str(selecting_profile))
    n_val, n_test = 16, 24
    rec = train.train_unit(prof, "sst2", "lora", 1)
    # every evaluation during training (and the final validation score) is on the validation slice;
    # the test split is scored once, at the end
    assert sizes[-1] == n_test and set(sizes[:-1]) == {n_val}, sizes
    assert rec["validation"]["n"] == n_val and rec["test"]["n"] == n_test
    # the kept checkpoint is the best on the validation slice (greater is better for accuracy/F1)
    metric = rec["validation"]["metric"]
    curve = [(p["step"], p[metric]) for p in rec["curves"]["validation"]]
    scores = [s for _, s in curve]
    assert len(set(scores)) > 1, f"the fixture must give different validation scores: {curve}"
    best = max(scores)
    assert rec["validation"]["best"] == pytest.approx(best)
    assert rec["validation"]["best_step"] == min(st for st, s in curve if s == best)
    # and it is the model that was saved and scored: re-scoring the restored weights gives the best
    assert rec["validation"][metric] == pytest.approx(best)


def test_glue_labels_are_read_as_glue_defines_them(tiny_glue):
    """SST-2 1 = positive, MRPC Quality 1 = equivalent, RTE 'entailment' = 0 (the hub's ids)."""
    sst2 = load_glue("sst2", str(tiny_glue))["train"]
    for text, y in zip(sst2["text_a"], sst2["label"]):
        words = set(text.split())
        assert y == (1 if words & set(POS) else 0) and bool(words & set(NEG)) == (y == 0), (text, y)
    mrpc = load_glue("mrpc", str(tiny_glue))["train"]
    for a, b, y in zip(mrpc["text_a"], mrpc["text_b"], mrpc["label"]):
        assert y == int(a == b), (a, b, y)  # the tiny files write the same sentence for paraphrases
    rte = load_glue("rte", str(tiny_glue))["train"]
    for b, y in zip(rte["text_b"], rte["label"]):
        assert y == (0 if "good" in b.split() else 1), (b, y)  # entailment rows repeat 'good'
    assert rte.features["label"].names == ["entailment", "not_entailment"]


def test_splits_use_train_for_training_and_glue_validation_for_test(tiny_profile, tiny_glue):
    prof = load_profile(str(tiny_profile))
    sp = study_splits(prof, "sst2")
    glue = load_glue("sst2", str(tiny_glue))
    assert sorted(sp["test"]["text_a"]) == sorted(glue["validation"]["text_a"])
    assert set(sp["train"]["text_a"]) | set(sp["validation"]["text_a"]) <= set(glue["train"]["text_a"])
    assert np.isclose(np.mean(sp["validation"]["label"]), 0.5, atol=1 / 16)


def test_out_of_date_notes_follow_the_store_keys(monkeypatch):
    """The chapters' notes ask the store: a changed drift or serving setting makes those results out of date."""
    import copy

    from loradrift.findings import outdated
    monkeypatch.delenv("LORADRIFT_ROOT", raising=False)
    prof = load_profile("cpu-v1")
    # the first run's drift predates the sink-free pooling and the new measures (the drift key changed with
    # the settings), its benchmark the paired design (the serving key): both are out of date, its units are not
    assert outdated(prof) == {"train": [], "drift": prof["tasks"], "deploy": ["settings"]}
    changed = copy.deepcopy(prof)
    changed["methods"]["lora"]["lora_r"] = 16   # (the searched values override the learning rate)
    assert sorted(outdated(changed)["train"]) == sorted(f"{t}-lora-s{s}" for t in prof["tasks"] for s in prof["seeds"])
