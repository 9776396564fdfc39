"""wandb tracking on the tiny fixtures (offline, a temporary WANDB_DIR), read back with wandb's own
reader of its run files (`wandb leet inspect --json`): group, job type, tags, config, artifact,
validation keys, a killed unit's run continued, search trials as runs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loradrift.config import config_hash, load_profile, unit_config
from loradrift.store import read_json
from loradrift.train import result_path

from conftest import killed_after_checkpoint

WANDB = shutil.which("wandb", path=str(Path(sys.executable).parent))  # None without the wandb extra


@pytest.fixture
def wandb_on(book_root, monkeypatch, tmp_path):
    """Tracking switched on (the conftest switches it off), offline, into a temporary folder."""
    d = tmp_path / "wandb-dir"
    d.mkdir()
    for k, v in {"LORADRIFT_WANDB": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(d),
                 "WANDB_PROJECT": "lora-drift-tests-tiny", "WANDB_SILENT": "true",
                 # the .wandb file is written every 15 s by default: a killed tiny run would leave nothing
                 "WANDB__TRANSACTION_LOG_FLUSH_INTERVAL": "0.2"}.items():
        monkeypatch.setenv(k, v)
    return d / "wandb"


def records(run_dir: Path) -> list[dict]:
    """Every record of an offline run, as wandb's own inspector prints them."""
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def one(recs: list[dict], kind: str) -> dict:
    return next(r[kind] for r in recs if r["type"] == kind)


def history_keys(recs: list[dict]) -> set[str]:
    return {k for r in recs if r["type"] == "history" for k in r["history"]["item"]}


def global_steps(recs: list[dict]) -> list[int]:
    return [r["history"]["item"]["train/global_step"] for r in recs
            if r["type"] == "history" and "train/global_step" in r["history"]["item"]]


@pytest.mark.skipif(WANDB is None, reason="the wandb command is not installed beside this Python")
def test_killed_unit_continues_its_wandb_run(tiny_profile, book_root, wandb_on):
    prof = load_profile(str(tiny_profile))
    prof["training"]["common"].update(evals_per_epoch=1, early_stopping_patience=1000)
    prof["methods"]["lora"]["num_train_epochs"] = 6  # 4 steps an epoch; a checkpoint every 4 evaluations
    tiny_profile.write_text(yaml.safe_dump(prof))
    args = ["train", "--profile", str(tiny_profile), "--task", "rte", "--method", "lora", "--seed", "1"]
    first = killed_after_checkpoint(args, 1)  # after its first resume checkpoint: no wandb.finish()
    assert first.returncode == 9, first.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "loradrift", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from" in out.stdout

    rec = read_json(result_path("tiny", "rte-lora-s1"))
    cfg = unit_config(prof, "rte", "lora", 1)
    run_id = f"tiny-rte-lora-s1-{config_hash(cfg)[:8]}"
    w = rec["wandb"]
    assert w["id"] == run_id and w["group"] == "rte-lora" and w["job_type"] == "train" and w["mode"] == "offline"
    # the sync command is printed once, for every folder of the run
    assert out.stdout.count("wandb sync") == 1 and f"offline-run-*-{run_id}" in out.stdout
    folders = sorted(wandb_on.glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 2, "one folder per start, both the same run id"
    assert Path(w["dir"]).name == folders[1].name

    killed, resumed = records(folders[0]), records(folders[1])
    for recs in (killed, resumed):
        run = one(recs, "run")
        assert run["run_id"] == run_id and run["run_group"] == "rte-lora" and run["job_type"] == "train"
        assert run["resume"] is True and "tiny" in run["tags"] and "lora" in run["tags"]
        assert run["config"]["update"]["config_hash"] == rec["config_hash"]
        assert run["config"]["update"]["unit"]["training"]["lora_r"] == 4
    # the resumed run continues: its steps follow the killed one's (checkpoint at step 16 of 24)
    assert max(global_steps(killed)) >= 16 and min(global_steps(resumed)) > 16
    assert max(global_steps(resumed)) == 24 == rec["steps"]
    # validation scores where a wandb user looks for them; evaluations during training under eval/
    keys = history_keys(resumed)
    assert {"validation/accuracy", "validation/f1", "test/accuracy", "eval/accuracy"} <= keys
    assert not any(k.startswith("train/validation") for k in keys)
    # the adapter folder is the run's artifact (by reference to the files, nothing copied)
    art = one(resumed, "artifact")
    assert art["name"] == "rte-lora-s1-adapter" == w["artifact"] and art["type"] == "model"
    files = {c["path"]: c for c in art["manifest"]["contents"]}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(files)
    assert Path(files["adapter_model.safetensors"]["local_path"]).parent.name == "rte-lora-s1"
    assert json.loads(art["metadata"])["config_hash"] == rec["config_hash"]


@pytest.mark.skipif(WANDB is None, reason="the wandb command is not installed beside this Python")
def test_search_trials_are_runs_in_the_search_group(tiny_profile, wandb_on):
    from loradrift import search
    prof = yaml.safe_load(tiny_profile.read_text())
    prof["search"] = {"n_trials": 2, "n_startup_trials": 1, "seed": 0, "train_fraction": None,
                      "space": {"lora": {"learning_rate": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True}}}}
    tiny_profile.write_text(yaml.safe_dump(prof))
    r = search.run_search(load_profile(str(tiny_profile)), tasks=["rte"], methods=["lora"])[0]
    folders = sorted(wandb_on.glob("offline-run-*"))
    assert len(folders) == 2 == r["n_trials"]
    for f, trial in zip(folders, r["trials"]):
        recs = records(f)
        run = one(recs, "run")
        assert run["run_group"] == "rte-lora-search" and run["job_type"] == "search"
        assert run["run_id"].endswith(f"-t{trial['number']}") and "search" in run["tags"]
        conf = run["config"]["update"]
        assert conf["params"] == trial["params"] and conf["defaults"] == trial["defaults"]
        assert "validation/f1_best" not in history_keys(recs)  # rte's metric is accuracy
        assert "validation/accuracy_best" in history_keys(recs)


def test_without_wandb_nothing_is_tracked(tiny_profile, wandb_on, monkeypatch):
    """wandb is an optional extra: without it a unit trains untracked (and records wandb: None)."""
    from loradrift import tracking
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    prof = load_profile(str(tiny_profile))
    assert not tracking.enabled(prof) and tracking.wandb_settings(prof) == []
    with tracking.unit_run(prof, unit_config(prof, "rte", "lora", 1)) as run:
        assert run is None and tracking.trainer_callbacks() == []
    assert tracking.log_unit(None, prof, {}, Path("."), {}) is None
    assert tracking.search_callback(prof, "rte", "lora", "accuracy") is None
    monkeypatch.setattr(tracking.importlib.util, "find_spec", real)
    assert tracking.enabled(prof)
    monkeypatch.setenv("LORADRIFT_WANDB", "0")
    assert not tracking.enabled(prof)
