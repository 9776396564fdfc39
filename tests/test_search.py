"""Hyperparameter search on the tiny fixtures: resume, seeding, pruning, test isolation, apply."""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time

import pytest
import yaml

from loradrift import search
from loradrift.config import load_profile, unit_config
from loradrift.store import read_json
from loradrift.train import unit_status

SPACE = {
    "full": {"learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
             "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
             "weight_decay": {"type": "float", "low": 0.0, "high": 0.01},
             "num_train_epochs": {"type": "int", "low": 1, "high": 2},
             "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]}},
    "lora": {"learning_rate": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True},
             "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
             "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
             "num_train_epochs": {"type": "int", "low": 2, "high": 3},
             "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]},
             "lora_alpha": {"type": "categorical", "choices": [8, 16, 32]},
             "lora_dropout": {"type": "float", "low": 0.0, "high": 0.3}},
}


@pytest.fixture
def search_profile(tiny_profile):
    prof = yaml.safe_load(tiny_profile.read_text())
    prof["search"] = {"n_trials": 2, "n_startup_trials": 1, "seed": 0, "train_fraction": None,
                      "pruner": {"n_startup_trials": 1, "n_warmup_steps": 1}, "space": SPACE,
                      "heartbeat": {"interval": 1, "grace_period": 1}}
    tiny_profile.write_text(yaml.safe_dump(prof, sort_keys=False))
    return tiny_profile


def test_resume_runs_only_missing_trials_and_pruner_is_fed(search_profile):
    prof = load_profile(str(search_profile))
    r = search.run_search(prof, tasks=["sst2"], methods=["lora"], n_trials=2)[0]
    assert r["n_trials"] == 2 and r["trials"][0]["defaults"]
    first = [(t["number"], t["params"], t["value"]) for t in r["trials"]]
    # a process killed (kill -9) during a third trial leaves it RUNNING in the database; once its
    # heartbeat is older than the grace period, a new call with n_trials=3 keeps the two finished
    # trials, fails the dead one and runs it again with the same parameters (optuna's retry callback)
    dead = _killed_during_a_trial(search_profile, prof)
    time.sleep(2.5)  # grace_period 1 s
    r = search.run_search(load_profile(str(search_profile)), tasks=["sst2"], methods=["lora"], n_trials=3)[0]
    assert [(t["number"], t["params"], t["value"]) for t in r["trials"][:2]] == first
    assert [t["state"] for t in r["trials"]][2] == "FAIL" and r["n_failed"] == 1
    assert r["trials"][2]["params"] == dead
    retry = r["trials"][3]
    assert retry["retry_of"] == 2 and retry["params"] == dead and retry["state"] in ("COMPLETE", "PRUNED")
    r["trials"] = [t for t in r["trials"] if t["state"] != "FAIL"]
    assert len(r["trials"]) == 3
    assert search.run_search(prof, tasks=["sst2"], methods=["lora"], n_trials=3)[0]["n_trials"] == 3  # nothing new
    # the pruner is fed: every trial reported a validation value after each evaluation
    for t in r["trials"]:
        assert t["state"] in ("COMPLETE", "PRUNED")
        assert t["intermediate"], "trial.report was called"
        if t["state"] == "COMPLETE":
            assert t["value"] == max(t["intermediate"].values())
            assert len(t["intermediate"]) >= 2  # 2+ epochs, 1 evaluation each
    # the defaults trial used the profile's untuned values; results, sampler and summary are recorded
    assert r["trials"][0]["params"] == {k: v for k, v in search.default_params(prof, "lora").items()}
    assert r["sampler"]["seed"] == search.sampler_seed(prof, "sst2", "lora") and r["sampler"]["n_startup_trials"] == 1
    assert r["best_value"] == max(t["value"] for t in r["trials"] if t["state"] == "COMPLETE")
    assert r["cpu_s"] > 0 and all(t["duration_s"] > 0 for t in r["trials"])
    assert r["environment"]["versions"]["optuna"]  # the versions a search ran with
    summ = read_json(search.result_path("tiny", "sst2", "lora").parent / "summary.json")
    assert summ["studies"][0]["task"] == "sst2"


def _hang_in_trial(profile_path: str) -> None:
    """A search process whose third trial never ends (run in a forked child, then killed)."""
    search.run_trial = lambda *a, **k: time.sleep(600)
    search.run_search(load_profile(profile_path), tasks=["sst2"], methods=["lora"], n_trials=3)


def _killed_during_a_trial(profile_path, prof) -> dict:
    """Start a search in a child process, kill -9 it while its trial runs; the trial's parameters."""
    from optuna.trial import TrialState
    child = multiprocessing.get_context("fork").Process(target=_hang_in_trial, args=(str(profile_path),))
    child.start()
    study, deadline = search.make_study(prof, "sst2", "lora"), time.time() + 120
    while not (running := [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.params]):
        assert time.time() < deadline and child.is_alive(), "the child search never started its trial"
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    return running[0].params


def test_sampler_is_seeded_and_stable():
    import optuna
    prof = {"name": "x", "search": {"seed": 0, "n_startup_trials": 2, "space": SPACE}}
    assert search.sampler_seed(prof, "rte", "lora") == search.sampler_seed(prof, "rte", "lora")
    assert search.sampler_seed(prof, "rte", "lora") != search.sampler_seed(prof, "rte", "full")

    def suggestions():
        st = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
            seed=search.sampler_seed(prof, "rte", "lora"), n_startup_trials=2))
        out = []
        for i in range(4):  # two random, then TPE
            t = st.ask()
            p = search.suggest(t, SPACE["lora"])
            st.tell(t, p["learning_rate"] * 100)
            out.append(p)
        return out
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert suggestions() == suggestions()


def test_test_split_is_never_used(search_profile, monkeypatch):
    real = search.study_splits
    seen = []

    class NoTest(dict):
        def __getitem__(self, k):
            if k == "test":
                raise AssertionError("the search touched the test split")
            return super().__getitem__(k)

        def items(self):
            raise AssertionError("the search iterated over all splits")

        values = items

    def guarded(prof, task, source=None):
        return NoTest(real(prof, task, source))
    monkeypatch.setattr(search, "study_splits", guarded)
    orig = search.counting_trainer_class

    def spy():
        cls = orig()

        class Spy(cls):
            def evaluate(self, eval_dataset=None, *a, **kw):
                seen.append(len(eval_dataset if eval_dataset is not None else self.eval_dataset))
                return super().evaluate(eval_dataset, *a, **kw)
        return Spy
    monkeypatch.setattr(search, "counting_trainer_class", spy)
    search.run_search(load_profile(str(search_profile)), tasks=["rte"], methods=["full"], n_trials=1)
    assert seen and set(seen) == {16}  # only the 16-example validation slice was evaluated


def test_apply_reaches_training_unchanged_and_makes_runs_stale(search_profile, monkeypatch):
    from loradrift import train
    from loradrift.train import train_unit
    prof = load_profile(str(search_profile))
    train_unit(prof, "sst2", "lora", 1)  # trained with the untuned values
    assert unit_status(prof, "sst2", "lora", 1) == "done"
    search.run_search(prof, tasks=["sst2"], methods=["lora"], n_trials=2)
    # make the best trial one with non-default values, so that applying must change something
    res = read_json(search.result_path("tiny", "sst2", "lora"))
    tuned = {"learning_rate": 0.0012345678901234567, "num_train_epochs": 3, "warmup_ratio": 0.123456789,
             "weight_decay": 0.0456, "per_device_train_batch_size": 16, "lora_alpha": 32, "lora_dropout": 0.2109876}
    res["best_params"] = tuned
    search.write_json(search.result_path("tiny", "sst2", "lora"), res)
    text_before = search_profile.read_text()
    search.apply_search(str(search_profile))
    prof2 = load_profile(str(search_profile))
    assert prof2["training"]["per_task"] == {"sst2": {"lora": tuned}}
    assert unit_config(prof2, "sst2", "lora", 1)["training"] | tuned == unit_config(prof2, "sst2", "lora", 1)["training"]
    assert unit_status(prof2, "sst2", "lora", 1) == "stale"
    assert unit_status(prof2, "sst2", "full", 1) == "missing"
    # only the per_task block was added: everything else in the file is as it was
    assert all(ln in search_profile.read_text() for ln in text_before.splitlines())
    # applying again replaces the block instead of adding a second one
    search.apply_search(str(search_profile))
    lines = search_profile.read_text().splitlines()
    assert sum(ln.strip().startswith("per_task:") for ln in lines) == 1
    assert sum("# per_task: tuned values" in ln for ln in lines) == 1

    captured = {}
    real_args = train.training_arguments

    def capture(*a, **kw):
        captured["args"] = real_args(*a, **kw)
        return captured["args"]
    monkeypatch.setattr(train, "training_arguments", capture)
    rec = train_unit(prof2, "sst2", "lora", 1)
    args = captured["args"]
    assert args.learning_rate == tuned["learning_rate"]
    assert args.num_train_epochs == tuned["num_train_epochs"]
    assert args.weight_decay == tuned["weight_decay"]
    assert args.per_device_train_batch_size == tuned["per_device_train_batch_size"]
    n = rec["n_train"]
    assert args.warmup_steps == math.ceil(tuned["warmup_ratio"] * math.ceil(n / 16) * 3)
    assert rec["config"]["training"] | tuned == rec["config"]["training"]
    adapter = json.loads((train.model_dir("tiny", "sst2-lora-s1") / "adapter_config.json").read_text())
    assert adapter["lora_alpha"] == tuned["lora_alpha"] and adapter["lora_dropout"] == tuned["lora_dropout"]
    assert adapter["r"] == prof2["methods"]["lora"]["lora_r"]
    assert unit_status(prof2, "sst2", "lora", 1) == "done"


def test_missing_search_section_is_explained(tiny_profile):
    with pytest.raises(Exception, match="search"):
        search.run_search(load_profile(str(tiny_profile)), tasks=["rte"], methods=["full"])


def test_apply_writes_floats_that_the_profile_loader_reads_as_floats():
    """ruamel writes 1e-05, which PyYAML (YAML 1.1) reads as a string: the writer must not."""
    import io

    import yaml
    from ruamel.yaml import YAML
    rt = YAML()
    rt.representer.add_representer(float, search._yaml11_float)
    values = {"lr": 1e-05, "wd": 0.01, "big": 3e20, "tiny": 2.5e-07, "plain": 2.0}
    buf = io.StringIO()
    rt.dump(values, buf)
    back = yaml.safe_load(buf.getvalue())
    assert back == values and all(isinstance(v, float) for v in back.values()), buf.getvalue()
