"""The Setup chapter's speed and precision numbers, checked against the records they come from."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from loradrift import speed

DATA = Path(__file__).resolve().parents[1] / "data"


def test_compare_is_welchs_interval():
    from scipy import stats
    a, b = [0.80, 0.81, 0.83], [0.82, 0.84, 0.83]
    c = speed._compare(a, b)
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert c["diff"] == pytest.approx(np.mean(b) - np.mean(a)) and (c["ci_low"], c["ci_high"]) == (ci.low, ci.high)
    assert c["agree"] is True and c["sd_a"] == pytest.approx(np.std(a, ddof=1))
    assert speed._compare([1.0, 1.0, 1.01], [2.0, 2.01, 2.0])["agree"] is False
    one = speed._compare([0.8], [0.9])
    assert one["agree"] is None and math.isnan(one["ci_low"]) and one["diff"] == pytest.approx(0.1)


def test_bf16_speedup_divides_matching_rows():
    bench = {"throughput": [{"method": "full", "precision": "fp32", "tokens_per_s": 100.0},
                            {"method": "full", "precision": "bf16", "tokens_per_s": 170.0},
                            {"method": "extract", "precision": "fp32", "tokens_per_s": 400.0}]}
    assert speed.bf16_speedup(bench) == {"full": pytest.approx(1.7)}


@pytest.mark.skipif(not (DATA / "cpu-bf16" / "runs").exists(), reason="no committed precision check")
def test_precision_check_reads_each_profiles_units_by_seed(monkeypatch):
    monkeypatch.delenv("LORADRIFT_ROOT", raising=False)
    check = speed.precision_check("cpu-v1", "cpu-bf16")
    assert len(check) == 2 * len(speed.QUANTITIES) and set(check.task) == {"mrpc"}
    recs = {p: {json.loads(f.read_text())["id"]: json.loads(f.read_text()) for f in (DATA / p / "runs").glob("mrpc-*.json")}
            for p in ("cpu-v1", "cpu-bf16")}
    for method in ("full", "lora"):
        row = check[(check.method == method) & (check.quantity == "test metric")].iloc[0]
        f1 = {p: {r["seed"]: r["test"]["f1"] for r in recs[p].values() if r["method"] == method} for p in recs}
        assert row.mean_a == pytest.approx(np.mean(list(f1["cpu-v1"].values())))      # fp32 = the cpu profile
        assert row.mean_b == pytest.approx(np.mean(list(f1["cpu-bf16"].values())))  # bf16 = the check's profile
        assert row.max_paired_diff == pytest.approx(max(abs(f1["cpu-bf16"][s] - f1["cpu-v1"][s]) for s in f1["cpu-v1"]))


@pytest.mark.skipif(not (DATA / "cpu-bf16" / "bench.json").exists(), reason="no committed extraction check")
def test_extraction_check_sets_each_change_against_the_seeds_spread(monkeypatch):
    monkeypatch.delenv("LORADRIFT_ROOT", raising=False)
    bench = speed.bench_result("cpu-bf16")
    out = speed.extraction_check(bench)
    rows = bench["extraction"]["rows"]
    assert out["cells"] == len(rows) and out["max_abs_diff"] == pytest.approx(max(r["diff"] for r in rows))
    w = out["worst"]
    assert w["relative"] == pytest.approx(w["diff"] / abs(w["fp32"]))
    assert out["seed"] == bench["extraction"]["seed"]   # the chapter names the seed the check used
    assert 0 <= out["exceed"] <= out["cells"]
    assert speed.extraction_check(None) == {}


def test_rate_gain_counts_only_units_on_an_idle_machine():
    import pandas as pd
    rates = pd.DataFrame([
        {"method": "full", "precision": "fp32", "tokens_per_wall_s": 100.0, "load": 2.0},
        {"method": "full", "precision": "bf16-autocast", "tokens_per_wall_s": 300.0, "load": 1.8},
        {"method": "full", "precision": "bf16-autocast", "tokens_per_wall_s": 50.0, "load": 6.0},  # shared: left out
        {"method": "lora", "precision": "fp32", "tokens_per_wall_s": 100.0, "load": 2.0}])
    g = speed.rate_gain(rates)
    assert g["full"] == pytest.approx(3.0) and math.isnan(g["lora"])


def test_study_gain_sets_each_task_and_method_against_the_first_runs_idle_units():
    import pandas as pd
    row = lambda prof, task, method, rate, load=1.5: {"profile": prof, "task": task, "method": method,  # noqa: E731
                                                      "tokens_per_wall_s": rate, "load": load}
    rates = pd.DataFrame([
        row("cpu-v1", "sst2", "full", 100.0), row("cpu-v1", "sst2", "full", 120.0),
        row("cpu-v1", "sst2", "full", 10.0, load=4.0),      # shared cores: left out
        row("cpu", "sst2", "full", 330.0), row("cpu", "sst2", "full", 0.5, load=3.0),
        row("cpu-v1", "mrpc", "full", 50.0), row("cpu", "sst2", "lora", 200.0),  # no counterpart: no row
        row("cpu", "mrpc", "full", 200.0), row("cpu-v1", "sst2", "lora", 90.0, load=2.3)])  # 2.3 is above 2.25
    g = speed.study_gain(rates).set_index(["task", "method"])
    assert sorted(g.index) == [("mrpc", "full"), ("sst2", "full")]
    assert g.loc[("sst2", "full"), "ratio"] == pytest.approx(3.0)      # after over before, idle units only
    assert (g.loc[("sst2", "full"), "n_before"], g.loc[("sst2", "full"), "n_after"]) == (2, 1)
    assert g.loc[("mrpc", "full"), "ratio"] == pytest.approx(4.0)      # each task against its own first run
    assert speed.study_gain(rates.iloc[:0]).empty


def _bench(step_fraction=0.2, matmul=0.7, mm_share=0.4, levers=None):
    """A bench result with two tasks, their rates and step profiles (full FT and LoRA), and levers."""
    thr, prof = [], []
    for t in ("sst2", "mrpc"):
        for m in ("full", "lora", "extract"):
            for p, rate in (("fp32", 100.0), ("bf16", 170.0 if t == "sst2" else 150.0)):
                thr.append({"task": t, "method": m, "precision": p, "tokens_per_s": rate,
                            "fraction_of_ceiling": step_fraction / (2 if t == "sst2" else 1)})
            if m != "extract":
                rest = (1 - mm_share) / 4
                prof.append({"task": t, "method": m, "precision": "bf16", "steps": 3,
                             "shares": {"matrix products": mm_share, "attention": rest, "optimizer": rest + 0.05,
                                        "casts and copies": rest - 0.05, "other": rest},
                             "matmul_fraction_of_ceiling": matmul})
    return {"task": "sst2", "tasks": ["sst2", "mrpc"], "ceiling": {"fp32": 230.0, "bf16": 1000.0},
            "throughput": thr, "step_profile": prof, "levers": levers}


def test_speedups_are_per_task():
    b = _bench()
    assert speed.bf16_speedup(b, "sst2") == {"full": pytest.approx(1.7), "lora": pytest.approx(1.7),
                                             "extract": pytest.approx(1.7)}
    assert speed.bf16_speedup(b, "mrpc")["full"] == pytest.approx(1.5)
    assert speed.bf16_speedup(b) == speed.bf16_speedup(b, "sst2")   # the bench's first task
    text = speed.speedup_text(b)
    assert text.startswith("on SST-2 batches full FT 1.70×") and "; on MRPC batches full FT 1.50×" in text
    assert speed.speedup_text(None) == "not measured"


def test_step_paragraph_states_rate_and_share_per_task():
    b = _bench(matmul=0.7, mm_share=0.4)
    text = speed.step_paragraph(b)
    assert "On SST-2 batches a full fine-tuning step in bf16 reached 10% of the ceiling" in text
    assert "On MRPC batches a full fine-tuning step in bf16 reached 20% of the ceiling" in text
    assert "its matrix products ran at 70% of the 1000 GFLOP/s ceiling while they ran and took 40% of the profiled" \
        in text
    assert "the largest of the rest: optimizer 20%, attention 15%, elementwise and other operators 15%" in text
    d = speed.step_breakdown(b)
    assert len(d) == 4 and (d.step_of_ceiling > 0).all()
    # no FLOPs counted, no unprofiled rate: said, not printed as numbers
    for r in b["step_profile"]:
        r["matmul_fraction_of_ceiling"] = None
    b["throughput"] = []
    text = speed.step_paragraph(b)
    assert "has no unprofiled rate" in text and "counted no FLOPs" in text and "nan" not in text
    assert speed.step_paragraph({"throughput": []}) == "The training steps have not been profiled yet."


def test_lever_sentence_reads_for_every_outcome():
    import pandas as pd
    rows = pd.DataFrame([
        {"lever": "eager", "tokens_per_s": 100.0, "vs_eager": 100 / 101, "warmup_s": 3.0},
        {"lever": "pinned", "tokens_per_s": 100.5, "vs_eager": 100.5 / 101, "warmup_s": 3.0},
        {"lever": "eager", "tokens_per_s": 102.0, "vs_eager": 102 / 101, "warmup_s": 3.0},
        {"lever": "compiled", "tokens_per_s": 150.0, "vs_eager": 150 / 101, "warmup_s": 300.0, "graphs": 1}])
    text = speed.lever_sentence(rows)
    assert "Pinning the threads" in text and "no different (within 2.0%" in text
    assert "torch.compile (dynamic shapes) ran at 1.49× the eager rate, after a warm-up pass of 300 s that " \
        "compiled 1 graph: faster" in text
    assert "The 2 eager runs differed by up to 2.0%." in text
    # its warm-up beyond eager's (297 s) is repaid after 297 / (1 - 101/150) s = 15 min of steps
    assert "faster, but its extra 297 s of warm-up is repaid only after 15 min of steps in one process." in text
    assert "against at most 5 min in any unit" in speed.lever_sentence(rows, longest_steps_s=300)
    # judged against the eager runs' own spread: 10% apart, a lever 8% faster is no different
    noisy = rows.assign(tokens_per_s=[100.0, 108.0, 110.0, 90.0], vs_eager=[0.95, 1.08 / 1.05 * 1.0, 1.05, 0.857])
    text = speed.lever_sentence(noisy)
    assert "no different (within 10.0%" in text and "0.86× the eager rate" in text and ": slower" in text
    failed = rows.assign(vs_eager=[1.0, 0.9, 1.0, None], error=[None, None, None, "not finished in 900 s"])
    text = speed.lever_sentence(failed)
    assert "0.90× the eager rate: slower" in text and "gave no rate: not finished in 900 s" in text
    # every probe failed: no rate column at all
    assert speed.lever_sentence(pd.DataFrame([{"lever": "eager", "error": "x"}, {"lever": "pinned", "error": "y"}])) \
        == "No eager run finished, so no lever has a baseline."
    assert speed.lever_sentence(pd.DataFrame()) == "No lever was measured."


def test_lever_lead_and_padding_text():
    import pandas as pd
    rows = pd.DataFrame([{"lever": "eager", "task": "mrpc", "method": "full", "precision": "bf16", "tokens_per_s": 1.0}])
    assert speed.lever_lead(rows) == ("Each standard lever ran in a fresh process on the same MRPC batches, full FT in "
                                      "bf16, warmed on every batch before the timed pass, with an eager run before and "
                                      "after it")
    assert speed.lever_lead(None) == speed.lever_lead(pd.DataFrame()) == "No lever has been measured yet"
    assert speed.pad_text("cpu-v1").count("(largest") == 3


def test_reruns_count_what_forced_re_runs_replaced(tiny_profile):
    from loradrift import findings
    from loradrift.store import data_dir, write_json
    d = data_dir("tiny") / "runs"
    env = lambda load: {"cpu_count": 2, "load_avg": [load, 0.0, 0.0]}  # noqa: E731
    write_json(d / "a.json", {"id": "a", "wall_time_s": 100.0, "environment": env(1.5)})  # never re-run
    write_json(d / "b.json", {"id": "b", "wall_time_s": 120.0, "environment": env(1.6),
                              "previous": {"wall_time_s": 300.0, "load_avg": [4.0, 0, 0], "cpu_count": 8,
                                           "same_weights": True}})   # 4 on 8 cores: not shared
    write_json(d / "c.json", {"id": "c", "wall_time_s": 60.0, "environment": env(3.1),
                              "previous": {"wall_time_s": 90.0, "load_avg": [3.0, 0, 0], "same_weights": False}})
    write_json(d / "e.json", {"id": "e", "wall_time_s": 10.0, "environment": env(1.0),
                              "previous": {"wall_time_s": None, "load_avg": [1.0, 0, 0], "same_weights": None}})
    assert findings.reruns(str(tiny_profile)) == {
        "n": 3, "same_weights": 1, "differ": ["c"], "unknown": ["e"], "timed": 2, "before_s": 390.0,
        "after_s": 180.0, "shared_before": 1, "shared_after": 1}


def test_rerun_text_reads_for_every_outcome():
    r = {"n": 3, "same_weights": 3, "differ": [], "unknown": [], "timed": 3, "before_s": 1200.0, "after_s": 600.0,
         "shared_before": 3, "shared_after": 0}
    bits = "the same weights as the results they replaced, bit for bit (the bytes of the saved tensors)"
    assert speed.rerun_text({"n": 0}) == ""
    text = speed.rerun_text(r)
    assert text.startswith("3 training units were re-run over their earlier results (`train --force`); 3 of them had "
                           "been timed on a shared machine (the 1-minute load above the cores in use), and none of the "
                           "re-runs were. Every re-run saved " + bits + ". Their wall time went from 20 minutes to 10 "
                           "minutes (0.50×); the table above counts the re-runs, not the results they replaced.")
    one = {**r, "n": 1, "same_weights": 1, "timed": 1, "before_s": 30.0, "after_s": 20.0, "shared_before": 0}
    assert speed.rerun_text(one).startswith("1 training unit was re-run over its earlier result (`train --force`); it "
                                            "had not been timed on a shared machine")
    assert "and the re-run was not. The re-run saved the same weights as the result it replaced" in speed.rerun_text(one)
    assert "Its wall time went from 30 s to 20 s (0.67×)" in speed.rerun_text(one)
    assert "The re-run did not save the same weights as the result it replaced, bit for bit (the bytes of the saved " \
        "tensors), and its new result is the one the book uses." in speed.rerun_text({**one, "same_weights": 0, "differ": ["x"]})
    assert "The re-run could not be compared with the weights it replaced: those were not on disk." in \
        speed.rerun_text({**one, "same_weights": 0, "unknown": ["x"]})
    part = speed.rerun_text({**r, "same_weights": 2, "differ": ["sst2-full-s1"]})
    assert "2 of the 3 re-runs saved " + bits + "; `sst2-full-s1` did not, and its new result is the one the book " \
        "uses. Their" in part
    two = speed.rerun_text({**r, "same_weights": 1, "differ": ["a", "b"]})
    assert "`a`, `b` did not, and their new results are the ones the book uses" in two
    mixed = speed.rerun_text({**r, "same_weights": 1, "differ": ["a"], "unknown": ["b"]})
    assert "1 of the 2 re-runs with earlier weights to compare with saved " + bits + "; `a` did not, and its new " \
        "result is the one the book uses; `b` had no earlier weights on disk to compare with." in mixed
    assert "None of the re-runs could be compared with the weights they replaced: those were not on disk." in \
        speed.rerun_text({**r, "same_weights": 0, "unknown": ["a", "b", "c"]})
    assert "Their wall time (the 2 whose earlier time is known) went" in speed.rerun_text({**r, "timed": 2})
    assert "Their wall time was 10 minutes;" in speed.rerun_text({**r, "timed": 0, "before_s": 0.0})
    assert "1 minute to" in speed.rerun_text({**r, "before_s": 70.0, "after_s": 130.0})


def test_runtime_text_sets_the_total_against_the_budget():
    done = {"total_wall_h": 5.5, "complete": True, "stages": []}
    lead, tail = speed.runtime_text(done, 6)
    assert lead == "All stages together took 5.50 hours"
    assert tail.startswith("within the profile's budget of 6 hours (`time_budget_h`); the figure to plan")
    assert speed.runtime_text({**done, "total_wall_h": 6.25}, 6)[1].startswith(
        "0.25 hours over the profile's budget of 6 (`time_budget_h`); ")
    assert speed.runtime_text(done)[1].startswith("the figure to plan a re-run")
    part = {"total_wall_h": 2.0, "complete": False, "projected_left_s": 5400,
            "stages": [{"stage": "train", "units_done": 10, "units_planned": 65}]}
    lead, tail = speed.runtime_text(part, 6)
    assert lead.startswith("The study is not complete: the stages run so far took 2.00 hours")
    assert tail.startswith("with 10 of its 65 training units done; the rest of the training is projected at 1.5 hours")
