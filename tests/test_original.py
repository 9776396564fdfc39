"""The original study's numbers this book types in (loradrift.original, the search's and the serving
benchmark's typed-in optima and headline) against the original's own result files, where a copy is at
hand (../shared/reference/original-study beside the repository, or LORADRIFT_ORIGINAL_DIR)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from loradrift import original, search, serving

ROOT = Path(__file__).resolve().parents[1]
REF = Path(os.environ.get("LORADRIFT_ORIGINAL_DIR", ROOT.parent / "shared" / "reference" / "original-study"))
files = pytest.mark.skipif(not (REF / "drift_analysis").is_dir(), reason="no copy of the original's result files")
METHOD = {"full": "full_finetune", "lora": "lora"}


@files
def test_performance_is_the_original_per_seed_metrics():
    rows = list(csv.DictReader((REF / "drift_analysis" / "performance_metrics.csv").open()))
    for task, by in original.PERFORMANCE.items():
        for method, metrics in by.items():
            for metric, values in metrics.items():
                got = {int(r["seed"]): float(r[f"eval_{metric}"]) for r in rows
                       if r["task"] == task and r["method"] == METHOD[method]}
                assert values == pytest.approx([got[s] for s in original.SEEDS], abs=6e-5), (task, method, metric)


@files
def test_drift_is_the_original_per_run_summary_and_its_reductions():
    res = json.loads((REF / "drift_analysis" / "drift_analysis_results.json").read_text())["task_results"]
    for (task, method), v in original.DRIFT.items():
        runs = {r["seed"]: r["summary_statistics"] for r in res[task]["all_results"][METHOD[method]]}
        assert v["mean_drift"] == pytest.approx([runs[s]["mean_drift"] for s in original.SEEDS], abs=6e-5)
        assert v["mean_cosine"] == pytest.approx([runs[s]["mean_cosine"] for s in original.SEEDS], abs=6e-5)
    for task, r in res.items():
        stats, typed = r["comparison_statistics"], original.DRIFT_REDUCTION[task]
        assert typed["per_seed"] == pytest.approx(stats["drift_reductions_by_seed"], abs=6e-5)
        assert (typed["mean"], typed["sd"]) == pytest.approx(
            (stats["mean_drift_reduction_percent"], stats["std_drift_reduction_percent"]), abs=6e-5)
        assert typed["p"] == pytest.approx(stats["significance_test"]["p_value"], rel=0.01)
        # the same reductions follow from the typed-in drifts (4 decimals)
        assert original.reduction_from_drift(task) == pytest.approx(typed["per_seed"], abs=0.02)
    layer0 = [run["layer_wise_drift"]["layer_0"] for run in res["rte"]["all_results"]["full_finetune"]]
    assert original.DRIFT_RTE_LAYER0["cka"] == pytest.approx(sum(x["cka"] for x in layer0) / 3, abs=5e-4)
    assert original.DRIFT_RTE_LAYER0["cosine"] == pytest.approx(sum(x["cosine_similarity"] for x in layer0) / 3, abs=5e-4)


@files
def test_the_search_optima_are_the_original_yaml_files():
    for (task, method), values in search.ORIGINAL_OPTIMA.items():
        best = yaml.safe_load((REF / "analysis" / f"{task}_{METHOD[method]}_optimal.yaml").read_text())["best_hyperparameters"]
        for key, v in values.items():
            assert v == pytest.approx(best[key], rel=5e-4), (task, method, key)


@files
def test_the_serving_headline_is_the_original_benchmark():
    rows = list(csv.DictReader((REF / "deployment" / "deployment_benchmark_summary.csv").open()))
    for o in serving.ORIGINAL_DEPLOYMENT:
        lat = [float(r["mean_latency_ms"]) for r in rows if r["config_type"] == o["original_name"]]
        assert len(lat) == o["configs"] and sum(lat) / len(lat) == pytest.approx(o["latency_ms"], abs=0.006)
    checks = {r["task"]: r for r in json.loads((REF / "deployment" / "multi_adapter_validation_results.json").read_text())}
    for task, c in original.ADAPTER_CHECK.items():
        r = checks[task]
        assert (c["n"], c["mismatches"], c["max_logit_diff"], c["accuracy"]) == (
            r["num_samples"], r["prediction_mismatches"], r["max_logit_difference"], r["single_adapter_accuracy"])


def test_the_parameter_counts_are_tinyllamas():
    """Counted, not typed: the classifier's weights at TinyLlama-1.1B's shape, and LoRA r=8 on q/v plus the head."""
    torch, transformers = pytest.importorskip("torch"), pytest.importorskip("transformers")
    a = original.TINYLLAMA
    cfg = transformers.LlamaConfig(vocab_size=a["vocab"], hidden_size=a["hidden"], intermediate_size=a["intermediate"],
                                   num_hidden_layers=a["layers"], num_attention_heads=32,
                                   num_key_value_heads=32 * a["kv_dim"] // a["hidden"], num_labels=2)
    with torch.device("meta"):
        model = transformers.LlamaForSequenceClassification(cfg)
    assert sum(p.numel() for p in model.parameters()) == original.CLASSIFIER_PARAMS
    q, v = model.model.layers[0].self_attn.q_proj, model.model.layers[0].self_attn.v_proj
    lora = sum(8 * (m.in_features + m.out_features) for m in (q, v)) * a["layers"]
    assert lora + model.score.weight.numel() == original.LORA_TRAINABLE
