"""The study design as data (study groups, learning-curve variants, per-seed training subsets) and the
design's checks (does a task learn, the original's claims 5 and 6, drift at matched accuracy)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import tiny_profile_dict
from loradrift import LoraDriftError, design
from loradrift.config import drift_units, load_profile, unit_config, units


def _grouped(tiny_model, tiny_glue, tmp_path, **study):
    d = tiny_profile_dict(tiny_model, tiny_glue, seeds=[1, 2, 3, 4])
    d["data"]["train_subset"] = "seed"
    d["methods"]["lora-r2"] = {"extends": "lora", "lora_r": 2}
    d["study"] = study or {
        "primary": {"tasks": ["sst2"], "methods": ["full", "lora"], "seeds": 4},
        "rank": {"tasks": ["sst2"], "methods": ["lora-r2", "lora"], "seeds": 2},
        "curve": {"tasks": ["sst2", "rte"], "methods": ["full"], "seeds": 1, "train_sizes": [8, 40], "drift": False}}
    p = tmp_path / "grouped.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return load_profile(str(p))


def test_units_follow_the_groups_in_order_each_once(tiny_model, tiny_glue, tmp_path):
    prof = _grouped(tiny_model, tiny_glue, tmp_path)
    u = units(prof)
    assert u[:8] == [("sst2", m, s) for s in (1, 2, 3, 4) for m in ("full", "lora")]   # the primary group first
    assert u[8:10] == [("sst2", "lora-r2", 1), ("sst2", "lora-r2", 2)]                # rank reuses lora's seeds 1-2
    # the curve: sst2's own size (40) is its plain unit, already trained; rte's sizes are both variants
    assert u[10:] == [("sst2", "full-n8", 1), ("rte", "full-n8", 1), ("rte", "full-n40", 1)]
    assert len(u) == len(set(u))
    assert unit_config(prof, "rte", "full-n8", 1)["data"]["sizes"]["train_size"] == 8
    assert "train_size" not in unit_config(prof, "rte", "full-n8", 1)["training"]
    assert units(prof, methods=["lora-r2"]) == [("sst2", "lora-r2", 1), ("sst2", "lora-r2", 2)]
    with pytest.raises(LoraDriftError, match="no unit of profile"):
        units(prof, tasks=["mrpc"])


def test_drift_reads_only_the_groups_with_drift(tiny_model, tiny_glue, tmp_path):
    prof = _grouped(tiny_model, tiny_glue, tmp_path)
    sst2 = drift_units(prof, "sst2")
    assert [(m, s) for _, m, s in sst2] == [("full", s) for s in (1, 2, 3, 4)] + [("lora", s) for s in (1, 2, 3, 4)] \
        + [("lora-r2", 1), ("lora-r2", 2)]        # method by method (profile order), no learning-curve variant
    assert drift_units(prof, "rte") == []


@pytest.mark.parametrize("group, message", [
    ({"tasks": ["cola"]}, "task 'cola' is not in the profile's tasks"),
    ({"methods": ["ia3"]}, "method 'ia3' is not one of the profile's methods"),
    ({"seeds": 9}, "seeds is 9: a count between 1 and the 4 seeds"),
    ({"drifts": True}, "unknown key 'drifts'"),
])
def test_a_bad_group_is_named_when_the_profile_loads(tiny_model, tiny_glue, tmp_path, group, message):
    with pytest.raises(LoraDriftError, match=message):
        _grouped(tiny_model, tiny_glue, tmp_path, bad=group)


def test_a_seed_draws_its_own_nested_training_subset(tiny_model, tiny_glue, tmp_path):
    from loradrift.data import study_splits
    prof = _grouped(tiny_model, tiny_glue, tmp_path)
    split = lambda m, s: study_splits(prof, "rte", unit=unit_config(prof, "rte", m, s))  # noqa: E731
    a, b, small = split("full", 1), split("full", 2), split("full-n8", 1)
    assert len(a["train"]) == 32 and len(small["train"]) == 8
    assert set(small["train"]["idx"]) < set(a["train"]["idx"])          # nested: the curve adds data
    assert set(a["train"]["idx"]) != set(b["train"]["idx"])             # seeds differ in their subset
    assert a["validation"]["idx"] == b["validation"]["idx"]              # ... not in their validation slice
    assert not set(a["train"]["idx"]) & set(a["validation"]["idx"])
    assert a["test"]["idx"] == b["test"]["idx"]


def _runs(scores: dict, metric="accuracy", **extra):
    rows = []
    for (task, method), vals in scores.items():
        for s, v in enumerate(vals):
            rows.append({"task": task, "method": method, "seed": s, "metric": metric, "test_score": v,
                         **{k: (val[(task, method)][s] if isinstance(val, dict) else val) for k, val in extra.items()}})
    return pd.DataFrame(rows)


BASE = pd.DataFrame([{"task": t, "baseline": b, "accuracy": a, "f1": f}
                     for t in ("rte", "mrpc", "sst2") for b, a, f in (("majority", 0.53, 0.0), ("random", 0.5, 0.5))])


def test_a_task_learns_only_when_both_methods_clear_the_baseline_with_their_interval(tiny_profile):
    runs = _runs({("sst2", "full"): [0.80, 0.82, 0.81], ("sst2", "lora"): [0.78, 0.79, 0.80],
                  ("rte", "full"): [0.50, 0.60, 0.56], ("rte", "lora"): [0.58, 0.59, 0.60]})
    v = design.learning_verdicts(tiny_profile, runs, BASE).set_index(["task", "method"])
    assert v.loc[("sst2", "full"), "learned"] and v.loc[("sst2", "lora"), "learned"]
    assert v.loc[("sst2", "full"), "baseline"] == 0.53 and v.loc[("sst2", "full"), "baseline_name"] == "majority"
    assert not v.loc[("rte", "full"), "learned"]                   # mean 0.553 > 0.53, but the interval holds it
    assert v.loc[("rte", "lora"), "learned"]
    assert v.loc[("sst2", "full"), "in_claims"] and not v.loc[("rte", "lora"), "in_claims"]
    one = design.learning_verdicts(tiny_profile, _runs({("sst2", "full"): [0.9], ("sst2", "lora"): [0.9]}), BASE)
    assert not one.learned.any()                                   # one seed decides nothing


def test_claim_5_reads_the_sign_of_full_minus_lora(tiny_profile):
    runs = _runs({("sst2", "full"): [0.80, 0.81, 0.82], ("sst2", "lora"): [0.85, 0.86, 0.87],
                  ("rte", "full"): [0.60, 0.61, 0.62], ("rte", "lora"): [0.55, 0.56, 0.57],
                  ("mrpc", "full"): [0.70, 0.75, 0.72], ("mrpc", "lora"): [0.71, 0.74, 0.73]})
    c = design.claim_5(tiny_profile, runs).set_index("task")
    assert c.loc["sst2", "direction"] == "negative" and c.loc["sst2", "diff"] == pytest.approx(-0.05)
    assert c.loc["rte", "direction"] == "positive" and c.loc["mrpc", "direction"] == "unresolved"
    assert c.loc["sst2", "original_diff"] == pytest.approx(0.8658 - 0.94958, abs=1e-3)   # the original: LoRA ahead
    assert c.loc["sst2", "low"] < -0.05 < c.loc["sst2", "high"] < 0


def test_claim_6_counts_one_class_models_and_the_format_difference(tiny_profile):
    k = ("rte", "full")
    runs = _runs({k: [0.5, 0.6, 0.62], ("rte", "lora"): [0.6, 0.6, 0.6]},
                 top_class_share={k: [0.99, 0.6, 0.7], ("rte", "lora"): [0.6, 0.96, 0.6]},
                 orig_score={k: [0.45, 0.5, 0.55], ("rte", "lora"): [0.6, 0.6, 0.6]},
                 orig_top_class_share={k: [1.0, 0.97, 0.7], ("rte", "lora"): [0.6, 0.6, 0.6]})
    c = design.claim_6(tiny_profile, runs).set_index("method")
    assert c.loc["full", "collapsed"] == 1 and c.loc["lora", "collapsed"] == 1
    assert c.loc["full", "collapsed_original_format"] == 2
    assert c.loc["full", "format_diff"] == pytest.approx(np.mean([-0.05, -0.1, -0.07]))
    assert c.loc["lora", "format_diff"] == 0


def test_matched_drift_recovers_a_known_offset_and_declines_without_overlap():
    rng = np.random.default_rng(1)
    acc_f, acc_l = rng.uniform(0.70, 0.90, 12), rng.uniform(0.75, 0.92, 12)
    pts = pd.DataFrame({"kind": ["full"] * 12 + ["lora"] * 12, "accuracy": np.r_[acc_f, acc_l],
                        "drift": np.r_[0.5 + (acc_f - 0.8), 0.3 + (acc_l - 0.8)] + rng.normal(0, 0.005, 24)})
    m = design.matched_drift(pts, n_boot=300)
    assert m["decided"] and m["diff"] == pytest.approx(0.2, abs=0.02) and m["low"] < 0.2 < m["high"]
    assert 0.75 <= m["at"] <= 0.9 and m["low"] > 0
    lo, hi = m["overlap"]
    inside = pts[(pts.accuracy >= lo) & (pts.accuracy <= hi)]
    assert m["mean_lora"] == pytest.approx(inside[inside.kind == "lora"].drift.mean())   # the unfitted view
    assert m["acc_full"] == pytest.approx(inside[inside.kind == "full"].accuracy.mean())
    flipped = pts.assign(kind=pts.kind.map({"full": "lora", "lora": "full"}))
    assert design.matched_drift(flipped, n_boot=300)["diff"] == pytest.approx(-m["diff"], abs=1e-9)
    apart = pts.assign(accuracy=np.r_[acc_f - 0.5, acc_l])
    assert not design.matched_drift(apart)["decided"] and math.isnan(design.matched_drift(apart)["diff"])


def test_unit_points_take_the_endpoint_depth_and_join_accuracy(tiny_model, tiny_glue, tmp_path):
    prof = _grouped(tiny_model, tiny_glue, tmp_path)
    lay = pd.DataFrame([{"task": "sst2", "model": f"sst2-{m}-s1", "pooling": "last", "measure": "cka",
                         "depth_name": d, "value": v}
                        for m, by in (("full", {"final_norm": 0.6, "layer_2": 0.9}), ("lora", {"final_norm": 0.8, "layer_2": 0.95}))
                        for d, v in by.items()])
    runs = pd.DataFrame([{"id": f"sst2-{m}-s1", "task": "sst2", "method": m, "kind": m, "seed": 1, "learning_rate": lr,
                          "lora_r": r, "test_accuracy": a, "test_score": a} for m, lr, r, a in
                         (("full", 1e-3, math.nan, 0.8), ("lora", 5e-3, 4, 0.7))])
    res = {"layers": lay, "task_json": {"sst2": {"forgetting": {"models": [{"model": "sst2-full-s1", "delta_nll": 0.3}]}}}}
    pts = design.unit_points(prof, res, runs, "sst2", {"pooling": "last", "measure": "cka", "depth": "final_norm"}).set_index("method")
    assert pts.loc["full", "drift"] == pytest.approx(0.4) and pts.loc["lora", "drift"] == pytest.approx(0.2)
    assert pts.loc["full", "accuracy"] == 0.8 and pts.loc["full", "forgetting"] == 0.3 and math.isnan(pts.loc["lora", "forgetting"])


def test_frontier_chart_draws_the_fits_only_when_decided():
    from loradrift import study_figures as sfig
    rng = np.random.default_rng(0)
    acc = rng.uniform(0.7, 0.9, 16)
    pts = pd.DataFrame({"id": [f"u{i}" for i in range(16)], "method": ["full"] * 8 + ["lora"] * 8,
                        "kind": ["full"] * 8 + ["lora"] * 8, "learning_rate": [1e-4] * 16, "accuracy": acc,
                        "drift": acc * 0.5})
    fr = design.matched_drift(pts, n_boot=50)
    assert len(sfig.frontier_chart(pts, ["full", "lora"], fr).to_dict()["layer"]) == 3
    assert len(sfig.frontier_chart(pts, ["full", "lora"], design.matched_drift(None)).to_dict()["layer"]) == 1


# ---- the original's RQ1 claims 1-4 on synthetic drift results
E1 = {"task": "sst2", "pooling": "last", "measure": "debiased_cka", "depth": "final_norm"}
E2 = {"task": "sst2", "pooling": "masked", "measure": "debiased_cka", "depth": "final_norm"}


def _test_row(e, diff, p, family="primary", status="ok"):
    adj = "holm" if family == "primary" else "bh"
    return {**e, "family": family, "status": status, "diff": diff, "hedges_g": diff * 10, "n_a": 10, "n_b": 10,
            "min_attainable_p": 1e-5,
            f"welch_p_{adj}": p, f"perm_p_{adj}": p}


def _res(tests, pairs=(), layers=(), tasks=("sst2", "mrpc")):
    return {"tasks": list(tasks), "compare": ["full", "lora"], "config": {"primary": [E1, E2]},
            "tests": pd.DataFrame(list(tests)), "pairs": pd.DataFrame(list(pairs)), "layers": pd.DataFrame(list(layers))}


def _verdicts(in_claims=("sst2", "mrpc")):
    return pd.DataFrame([{"task": t, "method": m, "in_claims": t in in_claims} for t in ("sst2", "mrpc")
                         for m in ("full", "lora")])


@pytest.mark.parametrize("diffs_ps, verdict", [
    ([(0.1, 0.01), (0.05, 0.2)], "supported"),        # one endpoint: full FT drifts more, significant
    ([(-0.1, 0.01), (0.05, 0.2)], "reversed"),
    ([(0.1, 0.01), (-0.1, 0.01)], "mixed"),
    ([(0.1, 0.06), (0.05, 0.2)], "not established"),  # p just above 5 % after Holm
])
def test_claim_1_reads_the_primary_endpoints_sign_and_adjusted_p(diffs_ps, verdict):
    res = _res([_test_row(e, d, p) for e, (d, p) in zip((E1, E2), diffs_ps)])
    c = design.drift_claims(res, _verdicts(), {"drift": {"low": 0.01, "high": 0.03}})
    assert c[1]["verdict"] == verdict
    assert c[1]["matched_direction"] == "positive"


def test_claim_1_is_undecided_without_tests():
    assert design.drift_claims(_res([]), _verdicts(), {})[1]["verdict"] == "undecided"


def test_claim_2_calls_tasks_different_only_when_they_differ_significantly():
    mrpc = {**E1, "task": "mrpc"}

    def claim2(mrpc_diff, mrpc_p, min_p=1e-5, in_claims=("sst2", "mrpc")):
        res = _res([_test_row(E1, 0.1, 0.01), {**_test_row(mrpc, mrpc_diff, mrpc_p, family="exploratory"),
                                               "min_attainable_p": min_p}])
        return design.drift_claims(res, _verdicts(in_claims), {})[2]
    assert claim2(0.2, 0.001)["verdict"] == "consistent"
    c = claim2(-0.2, 0.001)
    assert c["verdict"] == "task-dependent" and c["signs"] == {"sst2": "more", "mrpc": "less"}
    # significant beside not significant is no difference between tasks: undecided, and why
    assert (claim2(0.2, 0.5)["verdict"], claim2(0.2, 0.5)["reason"]) == ("undecided", "none")
    c = claim2(0.2, 0.5, min_p=0.1)   # 3 vs 3 seeds: that test could never reach 5 %
    assert (c["verdict"], c["reason"], c["underpowered"]) == ("undecided", "seeds", ["mrpc"])
    # a task outside the drift claims (it did not learn) is not compared
    assert claim2(-0.2, 0.001, in_claims=("sst2",))["reason"] == "few_tasks"


def _pair(task, kind, value):
    return {"task": task, "kind": kind, "measure": "debiased_cka", "depth_name": "final_norm", "depth": 31, "value": value}


def test_claim_3_is_judged_on_the_learned_tasks_only():
    pairs = [_pair("sst2", "across", 0.5), _pair("sst2", "within_full", 0.8), _pair("sst2", "within_lora", 0.9),
             _pair("mrpc", "across", 0.5), _pair("mrpc", "within_full", 0.8), _pair("mrpc", "within_lora", 0.9)]
    res = _res([], pairs=pairs)
    assert design.drift_claims(res, _verdicts(), {})[3]["verdict"] == "supported"   # across further apart on both
    pairs[0]["value"] = 0.95                                                          # sst2: across closer than within
    assert design.drift_claims(_res([], pairs=pairs), _verdicts(), {})[3]["verdict"] == "mixed"
    assert design.drift_claims(_res([], pairs=pairs), _verdicts(in_claims=("mrpc",)), {})[3]["verdict"] == "supported"


def test_claim_4_reads_the_unmatched_cosine_on_the_original_pooling():
    def layers(unmatched):
        return [{"task": "sst2", "method": m, "pooling": p, "measure": "cosine", "depth_name": d, "value": 0.98,
                 "unmatched": unmatched} for m in ("full", "lora") for d in ("layer_0", "layer_1", "final_norm")
                for p in ("original", "masked")]
    c = design.drift_claims(_res([], layers=layers(0.95), tasks=["sst2"]), _verdicts(), {})[4]
    assert c["verdict"] == "uninformative" and c["per_task"]["sst2"]["unmatched"] == pytest.approx(0.95)
    assert design.drift_claims(_res([], layers=layers(0.5), tasks=["sst2"]), _verdicts(), {})[4]["verdict"] == "informative"


@pytest.mark.parametrize("verdict, k, words", [
    ("supported", 1, "LoRA does on 1 of the 3 pre-registered endpoints"), ("supported", 3, "on all 3 pre-registered"),
    ("reversed", 2, "LoRA moves the representations further"), ("mixed", 2, "depends on the endpoint"),
    ("not established", 0, "none of the 3 pre-registered endpoints tested separates"),
    ("undecided", 0, "no test on a task whose models learned")])
def test_the_rq1_answer_reads_for_every_verdict(verdict, k, words):
    from loradrift import study_figures
    ok = {"status": "ok"}
    c1 = {"verdict": verdict, "significant": k, "n": 3, "endpoints": [({}, ok), ({}, ok), ({}, ok)]}
    assert words in study_figures.rq1_answer(c1, "SST-2")
    one = study_figures.rq1_answer({**c1, "n": 1, "significant": min(k, 1), "endpoints": [({}, ok)]}, "SST-2")
    assert "the one pre-registered endpoint," in one or verdict not in ("supported", "reversed")
    untested = study_figures.rq1_answer({**c1, "endpoints": [({}, ok), ({}, None), ({}, ok)]}, "SST-2")
    assert "none of the 2 pre-registered endpoints tested (of 3)" in untested or verdict != "not established"


@pytest.mark.parametrize("low, high, words", [(0.01, 0.05, "at matched learning LoRA drifts less"),
                                              (-0.05, -0.01, "at matched learning full fine-tuning drifts less"),
                                              (-0.01, 0.02, "not distinguishable")])
def test_the_matched_sentence_follows_the_interval_sign(low, high, words):
    from loradrift import study_figures
    m = {"decided": True, "at": 0.85, "full": 0.3, "lora": 0.2, "diff": (low + high) / 2, "low": low, "high": high,
         "n_full": 6, "n_lora": 5, "overlap": (0.8, 0.9), "acc_full": 0.82, "acc_lora": 0.85, "mean_full": 0.8,
         "mean_lora": 0.3}
    text = study_figures.matched_sentence(m, "drift", "drifts less")
    assert "average drift 0.800 (full FT, accuracy 0.820) and 0.300 (LoRA, accuracy 0.850: more accurate on average)" in text
    assert words in text and "+0.030" in text if low > 0 else words in text
    assert "too few" in study_figures.matched_sentence({**m, "decided": False, "n_full": 2}, "drift", "x").lower()
    assert "do not overlap" in study_figures.matched_sentence(design.matched_drift(pd.DataFrame(
        {"kind": ["full", "lora"], "accuracy": [0.9, 0.6], "drift": [0.1, 0.2]})), "drift", "x")


@pytest.mark.parametrize("values, word", [([1, 2, 3], "rises"), ([3, 2, 1], "falls"), ([1, 3, 2], "mixed"),
                                          ([1, 1, 2], "mixed"), ([5], "single")])
def test_trend_names_how_a_quantity_moves(values, word):
    assert design.trend(values) == word


def test_a_sweep_compares_its_methods_at_its_own_seeds(tiny_model, tiny_glue, tmp_path):
    """The rank group trains lora-r2 and lora at seeds 1-2; lora's primary seeds 3-4 stay out of the sweep."""
    prof = _grouped(tiny_model, tiny_glue, tmp_path)
    pts = pd.DataFrame([{"method": m, "seed": s, "kind": "lora", "accuracy": 0.5, "drift": 0.1}
                        for m, seeds in (("lora", (1, 2, 3, 4)), ("lora-r2", (1, 2)), ("full", (1, 2, 3, 4)))
                        for s in seeds])
    got = design.group_points(prof, pts, "rank")
    assert sorted(zip(got.method, got.seed)) == [("lora", 1), ("lora", 2), ("lora-r2", 1), ("lora-r2", 2)]
    assert design.group_points(prof, pts, "no-such-group").empty


def test_matched_drift_declines_when_a_kind_has_one_accuracy():
    """Collapsed models share one accuracy: no line can be fitted through them, so no comparison (and no crash)."""
    pts = pd.DataFrame({"kind": ["full"] * 4 + ["lora"] * 5, "accuracy": [0.6, 0.7, 0.8, 0.9] + [0.5, 0.7, 0.7, 0.7, 0.95],
                        "drift": [0.1, 0.2, 0.3, 0.4, 0.1, 0.1, 0.2, 0.2, 0.3]})
    m = design.matched_drift(pts, n_boot=50)
    assert not m["decided"] and m["n_lora"] == 3 and m["overlap"] == (0.6, 0.9)


def test_claim_1_reads_only_the_endpoints_of_tasks_that_learned():
    res = _res([_test_row(E1, 0.1, 0.01), _test_row(E2, 0.1, 0.01)])
    assert design.drift_claims(res, _verdicts(in_claims=("mrpc",)), {})[1]["verdict"] == "undecided"


@pytest.mark.parametrize("verdict, reason, words", [
    ("consistent", None, "Every task in the claims goes the same way"), ("task-dependent", None, "opposite ways"),
    ("undecided", "few_tasks", "Fewer than two tasks"), ("undecided", "seeds", "MRPC cannot reach 5 %"),
    ("undecided", "none", "no task differs significantly")])
def test_claim_2_reads_for_every_outcome_and_names_the_tasks_left_out(verdict, reason, words):
    from loradrift import study_figures
    c2 = {"verdict": verdict, "reason": reason, "signs": {"sst2": "more", "mrpc": "none"}, "underpowered": ["mrpc"]}
    text = study_figures.claim2_sentence(c2, ["sst2", "mrpc", "rte"])
    assert words in text and text.endswith("RTE is not compared (not in the claims, or no drift yet).")
    text = study_figures.claim2_sentence({**c2, "signs": {"sst2": "more"}}, ["sst2", "mrpc", "rte"], ["sst2", "rte"])
    assert text.endswith(" MRPC is not compared: a labelled control (not both methods beat the trivial baseline with "
                         "their interval). RTE is not compared: without drift results yet.")
    text = study_figures.claim2_sentence({**c2, "signs": {"sst2": "more"}}, ["sst2", "mrpc", "rte"], ["sst2"])
    assert text.endswith(" MRPC and RTE are not compared: labelled controls (not both methods beat the trivial "
                         "baseline with their interval).")


def test_the_sweep_sentence_orders_rates_and_reads_accuracy_per_rate():
    from loradrift import study_figures
    pts = pd.DataFrame({"kind": ["full"] * 4 + ["lora"] * 2, "learning_rate": [3e-4, 1e-5, 1e-5, 3e-5, 1e-3, 1e-4],
                        "accuracy": [0.80, 0.70, 0.72, 0.86, 0.85, 0.60]})
    text = study_figures.sweep_sentence(pts)
    assert "full FT at 1e-05, 3e-05 and 3e-04 (mean test accuracy 0.710 → 0.860 → 0.800)" in text
    assert "LoRA at 1e-04 and 1e-03 (mean test accuracy 0.600 → 0.850)" in text
    assert study_figures.sweep_sentence(None) == ""


def test_the_sink_sentences_read_with_and_without_sinks_found():
    from loradrift import study_figures
    base = {"examples": 10, "first_only": 9, "elsewhere": 1, "none": 0, "min_sink_ratio": 111.2, "max_other_ratio": 14.3}
    res = {"task_json": {"sst2": {"sinks": {"base": base}}}, "diagnostics": pd.DataFrame()}
    s = study_figures.sink_sentences(res, {"sink_ratio": 20}, "sst2")
    assert "exceeds 20 times" in s["rule"] and "at least 111 times" in s["found"] and "above 14.3 times" in s["found"]
    s = study_figures.sink_sentences({**res, "task_json": {"sst2": {"sinks": {"base": {**base, "min_sink_ratio": None,
                                                                                       "none": 10}}}}}, {}, "sst2")
    assert s["found"].endswith("none in 10.") and "before that rule" in s["rule"]


def test_exploratory_sentences_count_each_direction_and_the_depth_summaries():
    from loradrift import study_figures
    X = pd.DataFrame({"depth": ["final_norm", "final_norm", "decoder_mean", "decoder_mean"],
                      "diff": [0.2, -0.1, -0.14, 0.03], "welch_p_bh": [0.001, 0.01, 0.09, 0.6],
                      "perm_p_bh": [0.002, 0.02, 0.07, 0.7]})
    s = study_figures.exploratory_sentences(X)
    assert s["counts"] == "In 1 of them both tests give q below 5 % with full fine-tuning drifting more, in 1 with LoRA drifting more."
    assert "none of the 2 tests give both q below 5 % (2 of the 2 at the final norm)" in s["depth"]
    assert "from -0.140 to +0.0300" in s["depth"]
    assert study_figures.exploratory_sentences(X.iloc[:0]) == {"counts": "", "depth": ""}


def test_the_flag_sentence_names_depth_ranges_and_models_per_method():
    from loradrift import study_figures
    rows = [("m1", "full", "masked", d, 0.9) for d in (3, 4, 5, 12)] + [("m2", "lora", "masked", 12, 0.7),
                                                                         ("m3", "lora", "last", 31, 0.6),
                                                                         ("m4", "lora-r64", "last", 20, 0.9),
                                                                         ("m1", "full", "last", 20, 0.2)]
    D = pd.DataFrame([{"model": m, "method": me, "pooling": p, "depth": d, "top_share": s,
                       "depth_name": "final_norm" if d == 31 else f"layer_{d}"} for m, me, p, d, s in rows])
    text = study_figures.flag_sentence(D, 0.5, ["full", "lora"])
    assert "the sink-free mean is flagged at depths 3–5, 12 in some model (1 full FT model and 1 LoRA model," in text
    assert "the last token is flagged at the final norm in some model (1 LoRA model, at one depth or more)" in text
    assert "lora-r64" not in text
    assert "no model of full FT and LoRA is flagged" in study_figures.flag_sentence(D.assign(top_share=0.1), 0.5, ["full", "lora"])
    two = pd.concat([D.assign(task="sst2"), D.assign(task="rte", model=D.model + "-rte")])
    text = study_figures.flag_sentence(two, 0.5, ["full", "lora"])
    assert "(SST-2: 1 full FT model and 1 LoRA model; RTE: 1 full FT model and 1 LoRA model, at one depth or more)" in text


def test_claim_4_words_state_the_threshold_the_verdict_uses():
    from loradrift import study_figures
    assert f"above {design.COSINE_UNINFORMATIVE:g}" in study_figures.VERDICT_WORDS[4]["uninformative"]


def test_learning_curve_sentences_read_the_last_step_against_the_slice_noise():
    from loradrift import study_figures as sf
    prof = {"tasks": ["sst2", "mrpc", "rte"], "data": {"tasks": {"mrpc": {"validation_size": 400},
                                                               "rte": {"validation_size": 300}}}}
    rows = [("mrpc", "full", [0.70, 0.74, 0.80, 0.81]), ("mrpc", "lora", [0.70, 0.72, 0.74, 0.82]),
            ("rte", "full", [0.60, 0.55, 0.66, 0.56])]
    lc = pd.DataFrame([{"task": t, "method": m, "train_size": n, "seed": 0, "val_score": v, "test_score": v}
                       for t, m, vs in rows for n, v in zip([250, 500, 1000, 2000], vs)]
                      + [{"task": "rte", "method": "lora", "train_size": 500, "seed": 0, "val_score": 0.5,
                          "test_score": 0.5}]).sample(frac=1, random_state=0)   # order must not matter
    text = sf.learning_curve_sentences(lc, prof)
    mrpc, rte = text.split(" On RTE")
    assert mrpc.startswith("On MRPC, validation F1 (400-example validation slice)") and "SST-2" not in text
    full, lora = mrpc.split("; LoRA")
    assert "0.700 at 250 examples to 0.810 at 2,000" in full and "+0.010" in full and full.endswith("flat within noise")
    assert "+0.080" in lora and "still rising" in lora
    two_se = 2 * math.sqrt(0.56 * 0.44 / 300)
    assert f"-0.100 against twice the slice's binomial standard error, {two_se:.3f}: falling" in rte
    assert "LoRA has one size so far (500 examples: 0.500)" in rte and rte.startswith(", validation accuracy")
    assert "seed-0 units scored" not in text   # without controls, no test-versus-baseline sentence
    # a task outside the claims: its test metric at the largest size against its baseline, per method
    text = sf.learning_curve_sentences(lc, prof, {"mrpc": 0.805, "rte": 0.58})
    mrpc, rte = text.split(" On RTE")
    assert "At 2,000 training examples MRPC's seed-0 units scored 0.810 (full FT, +0.005) and 0.820 (LoRA, +0.015) " \
        "on the test split against the baseline's 0.805: both are above it, by one seed" in mrpc
    # RTE's largest size has full FT only (LoRA stopped at 500): one method, and below the baseline
    assert "RTE's seed-0 unit scored 0.560 (full FT, -0.020) on the test split against the baseline's 0.580: none is " \
        "above it" in rte
    assert "it is above it" in sf.learning_curve_sentences(lc, prof, {"rte": 0.55})
    one = sf.learning_curve_sentences(lc, prof, {"mrpc": 0.815})
    assert "only LoRA is above it" in one and "RTE's seed-0" not in one


def test_the_controls_sentence_reads_the_tasks_outside_the_claims():
    from loradrift import study_figures
    study = pd.DataFrame([{"task": t, "method": m, "drift": d, "perm_p": p}
                          for t, m, d, p in (("sst2", "full", 0.85, 1e-5), ("sst2", "lora", 0.44, 1e-5),
                                             ("mrpc", "full", 0.62, 0.1), ("mrpc", "lora", 0.28, 0.1),
                                             ("rte", "full", 0.31, float("nan")), ("rte", "lora", 0.15, float("nan")))])
    text = study_figures.controls_sentence(study, ["sst2"])
    assert "SST-2" not in text and "MRPC, full FT 0.62 and LoRA 0.28 (exact permutation p = 0.1); RTE, full FT 0.31 " \
        "and LoRA 0.15." in text
    assert study_figures.controls_sentence(study, ["sst2", "mrpc", "rte"]) == ""
    assert study_figures.controls_sentence(study.assign(drift=float("nan")), ["sst2"]) == ""


def test_the_learning_curve_chart_draws_each_task_in_its_own_panel():
    """Every layer takes the facet's rows (a layer with data of its own is drawn whole in every panel) and
    validation is the solid line, as the caption says."""
    from loradrift import study_figures
    lc = pd.DataFrame([{"task": t, "method": m, "train_size": n, "seed": 0, "val_score": 0.7, "test_score": 0.6}
                       for t in ("sst2", "rte") for m in ("full", "lora") for n in (250, 500)])
    base = pd.DataFrame([{"task": t, "baseline": "majority", "accuracy": 0.5, "f1": 0.6} for t in ("sst2", "rte")])
    spec = study_figures.learning_curve_chart(lc, base).to_dict()
    assert "facet" in spec and all("data" not in layer for layer in spec["spec"]["layer"])
    dash = spec["spec"]["layer"][0]["encoding"]["strokeDash"]["scale"]
    assert dash["domain"][0] == "validation" and dash["range"][0] == [1, 0]
    D = pd.DataFrame([{"task": t, "pooling": "masked", "depth": d, "depth_name": f"layer_{d}", "base_share": 0.5,
                       "base_corr": 0.1} for t in ("sst2", "rte") for d in (0, 1)])
    spec = study_figures.dominance_chart(D, 0.5).to_dict()
    assert "facet" in spec and all("data" not in layer for layer in spec["spec"]["layer"])


def test_learning_curve_scope_names_the_methods_it_leaves_out():
    from loradrift import study_figures as sf
    prof = {"name": "p", "tasks": ["rte"], "seeds": [0], "methods": {"full": {"kind": "full"}, "lora": {"kind": "lora"}},
            "drift": {"compare": ["full", "lora"]},
            "study": {"main": {"methods": ["full", "lora"]},
                      "curve": {"methods": ["lora"], "seeds": 1, "train_sizes": [100, 200]}}}
    assert sf.learning_curve_scope(prof).startswith("The curve is drawn for LoRA only, not for full FT: it is there to "
                                                    "choose training sizes, which one method does within")
    prof["study"]["curve"]["methods"] = ["full", "lora"]
    assert sf.learning_curve_scope(prof) == ""
    del prof["study"]["curve"]
    assert sf.learning_curve_scope(prof) == ""
