"""Training units on a tiny random Llama: results, the run store, staleness, resume, checks."""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
import subprocess
import sys
import time

import pytest
import yaml

from loradrift import LoraDriftError
from loradrift.config import load_profile
from loradrift.store import data_dir, read_json, write_json
from loradrift.train import (MARKER, baselines, load_runs, model_dir, result_path, sanity_check, train_unit,
                             unit_status, work_dir)

# fields of a unit's result that measure time (or the machine's load) and so differ between two runs
TIMES = ("wall_time_s", "train_runtime_s", "train_step_s", "tokens_per_s", "finished_at", "environment")


def same_but_times(a: dict, b: dict, also=()) -> list[str]:
    """The fields in which two results of one unit differ, times (and ``also``) aside."""
    return sorted(k for k in set(a) | set(b) if k not in TIMES + tuple(also) and a.get(k) != b.get(k))

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
    # the checkpoint records the unit's wall time so far; the resumed unit's wall time carries it on (set to a
    # day here, so that a resumed unit counting only its own process cannot pass)
    state_file = kept[0] / "trainer_state.json"
    state = json.loads(state_file.read_text())
    counters = state["stateful_callbacks"]["UnitCounters"]["attributes"]
    assert 0 < counters["wall_seconds"] < 600
    counters["wall_seconds"] = 86400.0
    state_file.write_text(json.dumps(state))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "loradrift", *args], capture_output=True, text=True, timeout=600)
    second = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from" in out.stdout
    rec = read_json(result_path("tiny", "rte-full-s3"))
    assert rec["resumed_from"] and "checkpoint-" in rec["resumed_from"]
    assert rec["steps"] == 12 * 4  # 32 examples / batch 8 = 4 steps per epoch, all of them done
    assert 86400 < rec["wall_time_s"] < 86400 + second
    # resuming is exact: the same unit trained without interruption gives the same model and record, counts
    # (tokens, training loss) and the model's fingerprint included
    whole = train_unit(str(tiny_profile), "rte", "full", 3, force=True)
    assert whole["resumed_from"] is None
    assert same_but_times(rec, whole, also=["resumed_from", "previous"]) == []
    assert rec["train_tokens_real"] > 0 and rec["train_loss"] > 0
    # the forced re-run records what it replaced, and that it saved the same weights bit for bit
    assert "previous" not in rec and rec["weights_fingerprint"]
    assert whole["previous"] == {"finished_at": rec["finished_at"], "wall_time_s": rec["wall_time_s"],
                                 "load_avg": rec["environment"]["load_avg"], "cpu_count": rec["environment"]["cpu_count"],
                                 "weights_fingerprint": rec["weights_fingerprint"], "same_weights": True}
    # a replaced result whose weights differ is reported as not reproduced; one without weights to compare
    # with (an older result, and its model folder gone) as unknown
    write_json(result_path("tiny", "rte-full-s3"), {**whole, "weights_fingerprint": "other-weights"})
    again = train_unit(str(tiny_profile), "rte", "full", 3, force=True)
    assert again["previous"]["weights_fingerprint"] == "other-weights" and again["previous"]["same_weights"] is False
    assert again["weights_fingerprint"] == whole["weights_fingerprint"]
    # a result from before weights fingerprints: the earlier weights are hashed from its model folder
    older = lambda r: write_json(result_path("tiny", "rte-full-s3"), {k: v for k, v in r.items()  # noqa: E731
                                                                       if k != "weights_fingerprint"})
    older(again)
    third = train_unit(str(tiny_profile), "rte", "full", 3, force=True)
    assert third["previous"]["weights_fingerprint"] == whole["weights_fingerprint"]
    assert third["previous"]["same_weights"] is True
    # ... only when the folder's marker names the result's model: weights nobody vouches for are not compared
    older(third)
    (model_dir("tiny", "rte-full-s3") / MARKER).unlink()
    fourth = train_unit(str(tiny_profile), "rte", "full", 3, force=True)
    assert fourth["previous"]["weights_fingerprint"] is None and fourth["previous"]["same_weights"] is None


def test_a_unit_resumed_mid_epoch_draws_the_epochs_data_order_again(tiny_profile, book_root):
    """Killed mid-epoch, a unit resumes on the data order its epoch drew (the Trainer's skip would otherwise draw
    a new shuffle from the fresh process's RNG), dropout included: killed first at an epoch's end and then
    mid-epoch, it ends with the same weights, curves and training loss as the unit trained in one go."""
    prof = load_profile(str(tiny_profile))
    prof["training"]["common"].update(evals_per_epoch=2, early_stopping_patience=1000)
    prof.setdefault("run", {})["checkpoint_every_evals"] = 1
    prof["methods"]["lora"].update(num_train_epochs=4, lora_dropout=0.1)
    tiny_profile.write_text(yaml.safe_dump(prof))
    ck = book_root / "artifacts" / "tiny" / "runs" / "rte-lora-s1" / "checkpoints"
    args = ["train", "--profile", str(tiny_profile), "--task", "rte", "--method", "lora", "--seed", "1"]
    # 4 steps an epoch, a checkpoint at every evaluation (every 2 steps): killed after step 4 (the first epoch's
    # end), then, resumed, after step 6 (mid-epoch: the second epoch's order must be the one drawn at its start)
    last = lambda: max(int(c.name.split("-")[1]) for c in ck.glob("checkpoint-*"))  # noqa: E731
    assert killed_after_checkpoint(args, 2).returncode == 9 and last() == 4
    assert killed_after_checkpoint(args, 1).returncode == 9 and last() == 6
    out = subprocess.run([sys.executable, "-m", "loradrift", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "resuming from" in out.stdout, out.stderr[-2000:]
    rec = read_json(result_path("tiny", "rte-lora-s1"))
    assert rec["resumed_from"].endswith("checkpoint-6") and rec["steps"] == 16
    whole = train_unit(str(tiny_profile), "rte", "lora", 1, force=True)
    assert whole["resumed_from"] is None and whole["previous"]["same_weights"] is True
    assert same_but_times(rec, whole, also=["resumed_from", "previous"]) == []


def test_a_checkpoint_without_a_carried_wall_time_is_resumed_and_says_so(tiny_profile, book_root):
    """A checkpoint written before checkpoints carried the unit's wall time still resumes exactly; one line says
    the result counts the resuming process's wall time only."""
    prof = load_profile(str(tiny_profile))
    prof["training"]["common"].update(evals_per_epoch=1, early_stopping_patience=1000)
    prof["methods"]["lora"]["num_train_epochs"] = 10
    tiny_profile.write_text(yaml.safe_dump(prof))
    args = ["train", "--profile", str(tiny_profile), "--task", "rte", "--method", "lora", "--seed", "1"]
    assert killed_after_checkpoint(args, 1).returncode == 9
    (ck,) = (book_root / "artifacts" / "tiny" / "runs" / "rte-lora-s1" / "checkpoints").glob("checkpoint-*")
    state = json.loads((ck / "trainer_state.json").read_text())
    del state["stateful_callbacks"]["UnitCounters"]["attributes"]["wall_seconds"]   # as an older loradrift wrote it
    (ck / "trainer_state.json").write_text(json.dumps(state))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "loradrift", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "was written before checkpoints carried the unit's wall time" in out.stdout
    rec = read_json(result_path("tiny", "rte-lora-s1"))
    assert rec["resumed_from"] and rec["steps"] == 10 * 4 and rec["wall_time_s"] < time.perf_counter() - t0


class Killed(BaseException):
    """A process killed at this point (nothing catches it, as nothing outlives a kill -9)."""


@contextlib.contextmanager
def killed_at(monkeypatch, target: str, call: int, when: str = "before"):
    """Kill the unit at the ``call``-th call of ``target`` (module.attr or module.Class.attr), before or after it."""
    import importlib
    mod, _, attr = target.rpartition(".")
    try:
        owner = importlib.import_module(mod)
    except ImportError:
        m, _, cls = mod.rpartition(".")
        owner = getattr(importlib.import_module(m), cls)
    real, n = getattr(owner, attr), [0]

    def dying(*a, **k):
        n[0] += 1
        if n[0] == call and when == "before":
            raise Killed(target)
        out = real(*a, **k)
        if n[0] == call:
            raise Killed(target)
        return out
    with monkeypatch.context() as m:
        m.setattr(owner, attr, dying)
        yield


# (phase, what dies, at which call, before or after it, status left: the old pair, or the new pair staged)
PHASES = [
    ("training, before any checkpoint", "transformers.Trainer.training_step", 3, "before", "stale"),
    ("right after a checkpoint", "transformers.Trainer._save_checkpoint", 2, "after", "stale"),
    ("writing a checkpoint", "transformers.Trainer._save_rng_state", 2, "before", "stale"),
    ("finishing training", "transformers.Trainer._finalize_training", 1, "before", "stale"),
    ("testing the trained model", "loradrift.train._score", 1, "before", "stale"),
    ("saving the model", "loradrift.train.folder_fingerprint", 1, "before", "stale"),
    ("putting the model in place", "loradrift.train.replace_dir", 1, "before", "staged"),
    ("between the model and its result", "loradrift.train.replace_dir", 1, "after", "staged"),
]


def test_a_kill_at_any_phase_leaves_a_pair_and_resumes_exactly(tiny_profile, monkeypatch, capsys):
    """Killed at any phase, a unit leaves its old model and result (or the new pair, staged), and the next run
    gives the result of an uninterrupted run in every field but times."""
    prof = load_profile(str(tiny_profile))
    prof["training"]["common"].update(evals_per_epoch=1, early_stopping_patience=4)
    prof["methods"]["full"]["num_train_epochs"] = 8   # up to 32 steps, an evaluation every 4
    prof["run"] = {"checkpoint_every_evals": 1}        # a checkpoint at every evaluation but the last
    rid, dest = "rte-full-s1", model_dir("tiny", "rte-full-s1")
    whole = train_unit(prof, "rte", "full", 1)
    # it stops early, after its best evaluation at step 4: the kill after the second checkpoint (step 8) leaves
    # one evaluation without improvement on the patience counter, which the resumed unit must carry on from
    assert whole["early_stopped"] and whole["validation"]["best_step"] == 4 and whole["steps"] == 20
    old = {**whole, "config_hash": "old", "model_fingerprint": "old-model", "test": {"accuracy": -1}}
    for phase, target, call, when, left in PHASES:
        shutil.rmtree(dest)
        write_json(dest / MARKER, {"fingerprint": "old-model"})     # the old pair
        write_json(result_path("tiny", rid), old)
        with pytest.raises(Killed), killed_at(monkeypatch, target, call, when):
            train_unit(prof, "rte", "full", 1)
        assert unit_status(prof, "rte", "full", 1) == left, phase
        if left == "stale":   # the old pair, untouched
            assert read_json(result_path("tiny", rid)) == old and read_json(dest / MARKER)["fingerprint"] == "old-model"
        capsys.readouterr()
        rec = train_unit(prof, "rte", "full", 1)
        out = capsys.readouterr().out
        assert same_but_times(rec, whole, also=["resumed_from"]) == [], phase
        assert read_json(dest / MARKER)["fingerprint"] == rec["model_fingerprint"] == whole["model_fingerprint"]
        assert unit_status(prof, "rte", "full", 1) == "done" and not work_dir("tiny", rid).exists(), phase
        if left == "staged":
            assert "finished an interrupted commit" in out and "resuming" not in out, phase
        if target.endswith("_save_rng_state"):
            assert "discarded checkpoint" in out and "checkpoint-8 " in out and "trainer_state.json" in out
            assert rec["resumed_from"].endswith("checkpoint-4")


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
    prof["model"]["dtype"] = "bfloat16"  # the l4 profile's: the inference dtype; training keeps fp32 masters
    rec = train_unit(prof, "sst2", "full", 1)
    assert rec["precision"] == "bf16-autocast" and rec["config"]["training"]["precision"] == "bf16"
    assert rec["weights_dtype"] == "float32"
    from safetensors import safe_open
    with safe_open(str(model_dir("tiny", "sst2-full-s1") / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}  # master weights stay fp32


def test_a_corrupt_checkpoint_is_discarded_with_one_line(tiny_profile, monkeypatch, capsys):
    """A resume checkpoint with a file cut short is discarded (one line says so), and the unit starts again."""
    prof = load_profile(str(tiny_profile))
    prof["training"]["common"].update(evals_per_epoch=1, early_stopping_patience=1000)
    prof["methods"]["full"]["num_train_epochs"] = 3
    prof["run"] = {"checkpoint_every_evals": 1}
    with pytest.raises(Killed), killed_at(monkeypatch, "transformers.Trainer._save_checkpoint", 1, "after"):
        train_unit(prof, "rte", "full", 2)
    ck = work_dir("tiny", "rte-full-s2") / "checkpoints" / "checkpoint-4"
    assert unit_status(prof, "rte", "full", 2) == "partial"
    f = ck / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    capsys.readouterr()
    rec = train_unit(prof, "rte", "full", 2)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "discarded" in ln]
    assert len(lines) == 1 and str(ck) in lines[0] and "model.safetensors: SafetensorError" in lines[0]
    assert lines[0].endswith("no earlier checkpoint: the unit starts again")
    assert rec["resumed_from"] is None and rec["steps"] == 12


def test_checkpoint_problems_are_named(tmp_path):
    """What makes a checkpoint unusable, found without loading a model: an unfinished save, a file cut short,
    a state that cannot be parsed or that an older loradrift wrote without the unit's counts."""
    import torch

    from loradrift.trainer import checkpoint_problem
    ck = tmp_path / "checkpoint-4"
    ck.mkdir()
    assert checkpoint_problem(ck) == "trainer_state.json is missing (the checkpoint was not finished)"
    write_json(ck / "trainer_state.json", {"stateful_callbacks": {"UnitCounters": {}}})
    torch.save({"exp_avg": torch.zeros(1000)}, ck / "optimizer.pt")
    assert checkpoint_problem(ck) is None
    cut = (ck / "optimizer.pt").read_bytes()
    (ck / "optimizer.pt").write_bytes(cut[: len(cut) // 2])
    assert checkpoint_problem(ck).startswith("optimizer.pt: BadZipFile")
    (ck / "optimizer.pt").unlink()
    (ck / "trainer_state.json").write_text('{"global_step": ')
    assert checkpoint_problem(ck).startswith("trainer_state.json: JSONDecodeError")
    write_json(ck / "trainer_state.json", {"stateful_callbacks": {}})
    assert "no unit counters" in checkpoint_problem(ck)


def test_an_unwritable_destination_stops_before_training(tiny_profile, book_root):
    """The result's folder cannot be written: one line naming it, before any model loads; nothing replaced."""
    import os
    prof = load_profile(str(tiny_profile))
    runs = data_dir("tiny") / "runs"
    runs.parent.mkdir(parents=True)
    runs.write_text("a file where the results folder should be")
    with pytest.raises(LoraDriftError, match=rf"cannot write to {runs} \(a file, not a folder\).*nothing was trained"):
        train_unit(prof, "sst2", "lora", 1)
    assert not model_dir("tiny", "sst2-lora-s1").exists() and not work_dir("tiny", "sst2-lora-s1").exists()
    if os.geteuid() != 0:   # root writes anywhere: the permission case runs for other users
        runs.unlink()
        runs.mkdir()
        runs.chmod(0o555)
        with pytest.raises(LoraDriftError, match=rf"cannot write to {runs} \(Permission denied\)"):
            train_unit(prof, "sst2", "lora", 1)


def _holding(what: str):
    """Another process holding the lock of ``what`` (of profile tiny) until it is killed."""
    code = ("import time\nfrom loradrift.store import lock\n"
            f"with lock('tiny', {what!r}, 'a test holding it'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_train_of_a_unit_refuses_naming_the_holder(tiny_profile, book_root):
    """Two `train` commands for one unit: the second refuses at once (exit 2, one line naming the first's pid,
    host and start); the lock of a killed holder is free at once (the OS drops it: no stale lock)."""
    import re
    import socket
    import time

    from loradrift.store import lock, lock_path
    args = ["train", "--profile", str(tiny_profile), "--task", "rte", "--method", "full", "--seed", "1"]
    slow = ("import sys, time\nfrom transformers import Trainer\n"
            "Trainer.train = lambda self, *a, **k: time.sleep(600)   # a unit that trains for long\n"
            f"from loradrift.cli import main\nsys.exit(main({args!r}))\n")
    first = subprocess.Popen([sys.executable, "-c", slow], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    holder = lock_path("tiny", "unit-rte-full-s1").with_suffix(".lock.holder")
    t0 = time.time()
    while not holder.exists() and time.time() - t0 < 300 and first.poll() is None:
        time.sleep(0.5)
    try:
        second = subprocess.run([sys.executable, "-m", "loradrift", *args], capture_output=True, text=True, timeout=300)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(
        rf"error: unit-rte-full-s1 is busy: held by pid {first.pid} on {re.escape(socket.gethostname())} since \S+ "
        rf"\(training rte-full-s1\) \(lock {re.escape(str(holder.with_suffix('')))}\); wait for it .*", err[0]), err
    assert "Traceback" not in second.stderr
    assert holder.exists()   # the killed holder's record is left, and blocks nothing
    with lock("tiny", "unit-rte-full-s1"):
        assert holder.exists()


def test_a_stage_and_a_unit_refuse_while_another_process_holds_them(tiny_profile, capsys):
    from loradrift.cli import main
    from loradrift.store import lock
    p = _holding("stage-timing")
    try:
        assert main(["timing", "--profile", str(tiny_profile)]) == 2
        assert f"stage-timing is busy: held by pid {p.pid}" in capsys.readouterr().err
    finally:
        p.kill()
        p.wait()
    assert main(["timing", "--profile", str(tiny_profile)]) == 0   # free once its holder is gone
    with lock("tiny", "stage-timing"):   # the process holding a lock may enter it again (a stage inside `all`)
        assert main(["timing", "--profile", str(tiny_profile)]) == 0
    p = _holding("unit-sst2-lora-s1")
    try:
        with pytest.raises(LoraDriftError, match=rf"unit-sst2-lora-s1 is busy: held by pid {p.pid} .*a test holding"):
            train_unit(load_profile(str(tiny_profile)), "sst2", "lora", 1)
    finally:
        p.kill()
        p.wait()


def test_setup_reruns_a_sanity_check_recorded_for_another_task(tiny_profile, monkeypatch):
    """The check fits `sanity.task` (default: the profile's first task); a recorded check of another task is redone."""
    import yaml

    from loradrift import stages, train
    from loradrift.config import load_profile
    from loradrift.store import result_path, write_json
    prof = load_profile(str(tiny_profile))
    assert train.sanity_task(prof) == prof["tasks"][0] == "rte"
    d = yaml.safe_load(tiny_profile.read_text())
    d["sanity"]["task"] = "sst2"
    tiny_profile.write_text(yaml.safe_dump(d))
    prof = load_profile(str(tiny_profile))
    calls = []
    monkeypatch.setattr(train, "sanity_check", lambda p, m, **kw: calls.append(m) or
                        {"method": m, "task": train.sanity_task(p), "final_loss": 0.01, "passed": True})
    write_json(result_path(prof["name"], "sanity"), {"full": {"task": "sst2", "final_loss": 0.02, "passed": True},
                                                     "lora": {"task": "rte", "final_loss": 0.02, "passed": True}})
    stages.run_setup(prof)
    assert calls == ["lora"]   # full's check is of sst2 already; lora's was of rte


def _evaluations(monkeypatch):
    """Count the Trainer's evaluation passes (during training and after) by the step they ran at."""
    import transformers
    real, calls = transformers.Trainer.evaluate, []

    def counting(self, *a, **k):
        calls.append((self.state.global_step, k.get("metric_key_prefix", "eval")))
        return real(self, *a, **k)
    monkeypatch.setattr(transformers.Trainer, "evaluate", counting)
    return calls


def _off_schedule(tiny_profile, **training):
    """10 steps with an evaluation every 4 (32 examples, batch 8, 2.5 epochs): training ends off schedule."""
    prof = load_profile(str(tiny_profile))
    prof["training"]["common"].update(evals_per_epoch=1, early_stopping_patience=1000, **training)
    prof["methods"]["full"]["num_train_epochs"] = 2.5
    return prof


@pytest.mark.parametrize("at_end, steps", [(None, [4, 8, 10]), (True, [4, 8, 10]), (False, [4, 8])])
def test_eval_at_end_decides_the_extra_final_evaluation(tiny_profile, monkeypatch, at_end, steps):
    extra = {} if at_end is None else {"eval_at_end": at_end}
    calls = _evaluations(monkeypatch)
    rec = train_unit(_off_schedule(tiny_profile, **extra), "rte", "full", 0, force=True)
    assert rec["steps"] == 10
    assert [s for s, prefix in calls if prefix == "eval"] == steps
    assert [c["step"] for c in rec["curves"]["validation"]] == steps
    # the validation record is the kept weights' own evaluation, not a second pass over the slice
    assert [prefix for _, prefix in calls if prefix != "eval"] == []
    assert ("eval_at_end" in rec["config"]["training"]) == (at_end is not None)


def test_recorded_validation_is_a_reevaluation_of_the_kept_weights(tiny_profile, monkeypatch):
    from loradrift import train as tr
    kept = {}
    real_score = tr._score

    def scoring(prof, cfg, trainer, enc, last):
        kept["again"] = trainer.evaluate(enc["validation"], metric_key_prefix="validation")
        return real_score(prof, cfg, trainer, enc, last)
    monkeypatch.setattr(tr, "_score", scoring)
    rec = train_unit(_off_schedule(tiny_profile), "rte", "full", 0, force=True)
    v, again = rec["validation"], kept["again"]
    assert v["best_step"] in (4, 8, 10) and v[v["metric"]] == v["best"]
    assert (v["accuracy"], v["f1"]) == (again["validation_accuracy"], again["validation_f1"])
    assert v["loss"] == pytest.approx(again["validation_loss"], rel=1e-6)


def test_no_resume_checkpoint_within_the_last_evaluation_interval(tiny_profile, monkeypatch):
    import transformers
    from loradrift.trainer import counting_trainer_class
    cls = counting_trainer_class()
    real, seen = cls._save_checkpoint, []

    def recording(self, *a, **k):   # the checkpoints on disk after each save the Trainer asks for
        out = real(self, *a, **k)
        seen.append((self.state.global_step, sorted(p.name for p in Path(self.args.output_dir).glob("checkpoint-*"))))
        return out
    monkeypatch.setattr(cls, "_save_checkpoint", recording)
    monkeypatch.setattr("loradrift.train.counting_trainer_class", lambda: cls)
    prof = _off_schedule(tiny_profile)
    prof["methods"]["full"]["num_train_epochs"] = 3.5       # 14 steps: saves due at 4, 8 and 12
    prof["run"] = {"checkpoint_every_evals": 1}
    rec = train_unit(prof, "rte", "full", 0, force=True)
    assert rec["steps"] == 14
    # 12 is 2 steps from the end, less than one evaluation interval (4): the checkpoint of step 8 stays
    # saves asked at 4, 8, 12 and at the end (14, refused: training stops there); none is written for 12
    assert [step for step, _ in seen] == [4, 8, 12, 14]
    assert "checkpoint-8" in seen[1][1] and seen[2][1] == seen[1][1] == seen[3][1]
    assert transformers.Trainer._save_checkpoint is not recording


def test_eval_at_end_false_keeps_an_evaluation_that_falls_on_the_last_step(tiny_profile, monkeypatch):
    calls = _evaluations(monkeypatch)
    prof = _off_schedule(tiny_profile, eval_at_end=False)
    prof["methods"]["full"]["num_train_epochs"] = 3          # 12 steps: the last one is scheduled
    rec = train_unit(prof, "rte", "full", 0, force=True)
    assert [s for s, prefix in calls if prefix == "eval"] == [4, 8, 12] and rec["steps"] == 12


@pytest.mark.parametrize("epochs, every_evals, kept", [
    (3, 1, ["checkpoint-8"]),       # 12 steps: at 8 exactly one interval (4) is left, so it is written
    (3.25, 2, ["checkpoint-8"]),    # 13 steps, a save every 8: 5 left, more than an evaluation interval
    (2.75, 2, [])])                 # 11 steps: 3 left at 8, less than an interval: not written
def test_the_last_checkpoint_rule_counts_evaluation_intervals(tiny_profile, monkeypatch, epochs, every_evals, kept):
    from loradrift.trainer import counting_trainer_class
    cls = counting_trainer_class()
    real, seen = cls._save_checkpoint, {}

    def recording(self, *a, **k):
        out = real(self, *a, **k)
        seen[self.state.global_step] = sorted(p.name for p in Path(self.args.output_dir).glob("checkpoint-*"))
        return out
    monkeypatch.setattr(cls, "_save_checkpoint", recording)
    monkeypatch.setattr("loradrift.train.counting_trainer_class", lambda: cls)
    prof = _off_schedule(tiny_profile)
    prof["methods"]["full"]["num_train_epochs"] = epochs
    prof["run"] = {"checkpoint_every_evals": every_evals}
    train_unit(prof, "rte", "full", 0, force=True)
    assert [c for c in seen.get(8, []) if c == "checkpoint-8"] == kept


def test_best_validation_reads_the_best_steps_evaluation():
    from types import SimpleNamespace as NS

    from loradrift.train import _best_validation
    ev = lambda step, acc: {"step": step, "eval_loss": 1 - acc, "eval_accuracy": acc, "eval_f1": acc / 2}  # noqa: E731
    history = [{"step": 2, "loss": 0.7}, ev(4, 0.6), {"step": 8, "loss": 0.5}, ev(8, 0.5), ev(12, 0.55)]
    t = NS(best=NS(step=4), state=NS(log_history=history))
    assert _best_validation(t) == {"validation_accuracy": 0.6, "validation_f1": 0.3, "validation_loss": 0.4}
    t.best.step = 8   # the training-loss row at the same step is not an evaluation
    assert _best_validation(t)["validation_accuracy"] == 0.5
    t.best.step = 6
    assert _best_validation(t) is None


def test_adapter_config_is_written_in_one_order(tmp_path):
    """peft writes target modules in the process's hash order; the unit's commit sorts them (so the same adapter
    saves the same files) and leaves a full model's folder alone."""
    from loradrift.train import _canonical_adapter_config
    (tmp_path / "adapter_config.json").write_text(json.dumps({"target_modules": ["v_proj", "q_proj", "o_proj"], "r": 8}))
    _canonical_adapter_config(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == {"r": 8, "target_modules": ["o_proj", "q_proj", "v_proj"]}
    full = tmp_path / "full"
    full.mkdir()
    _canonical_adapter_config(full)
    assert list(full.iterdir()) == []
