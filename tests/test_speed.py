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
