"""The original study's headline figures, typed in from its published result files, and the few
numbers the book derives from them.

Source: the repository benc61116/NLP at commit eef92c5 (``REPO``, ``COMMIT``); each constant names
the file it was typed in from. Only these few numbers are typed in; the files themselves stay
outside this repository (tests/test_original.py checks every number against them where a copy is
at hand). The book's appendix (chapters/original.qmd) describes what the original's code did.
Caveats that matter when comparing: their "test" is the GLUE validation split that also chose the
best epoch; full-FT models were re-evaluated in a different input format (pair encoding,
max_length 128) than they were trained in; SST-2 LoRA used 800 of 872 examples.
"""
from __future__ import annotations

import statistics

REPO = "https://github.com/benc61116/NLP"
COMMIT = "eef92c50a911929d5c4e8caaa3c4eaaed8f1f3be"


def file_url(path: str) -> str:
    """A file of the original repository at the commit this book read."""
    return f"{REPO}/blob/{COMMIT}/{path}"


SOURCE = "benc61116/NLP @ eef92c5, drift_analysis/performance_metrics.csv"

# task -> method -> metric -> per-seed values (seeds 42, 1337, 2024)
PERFORMANCE = {
    "mrpc": {"lora": {"f1": [0.8799, 0.8832, 0.8810], "accuracy": [0.8260, 0.8333, 0.8284]},
             "full": {"f1": [0.8299, 0.8885, 0.8754], "accuracy": [0.7206, 0.8456, 0.8284]}},
    "sst2": {"lora": {"accuracy": [0.95125, 0.9525, 0.9450]},
             "full": {"accuracy": [0.9025, 0.8440, 0.8509]}},
    "rte": {"lora": {"accuracy": [0.7834, 0.7509, 0.8267]},
            "full": {"accuracy": [0.4693, 0.5235, 0.6895]}},
}

# trainable parameters at TinyLlama-1.1B scale: LoRA r=8 on q_proj/v_proj (2048 -> 2048 and, with 4 KV
# heads, 2048 -> 256) over 22 layers plus the 2048x2 score head (the report's "4,096 (0.4%)" counted only the head)
LORA_TRAINABLE = 22 * 8 * ((2048 + 2048) + (2048 + 256)) + 4096
# TinyLlama-1.1B's shape (its config.json): the whole 2-label classifier has CLASSIFIER_PARAMS weights
TINYLLAMA = {"vocab": 32000, "hidden": 2048, "intermediate": 5632, "layers": 22, "kv_dim": 256}


def classifier_params(a: dict = TINYLLAMA, labels: int = 2) -> int:
    """Weights of a Llama sequence classifier: embeddings; per layer q/o (h x h), k/v (h x kv), a SwiGLU
    MLP (3 x h x intermediate) and two norms; the final norm; the bias-free head."""
    h = a["hidden"]
    layer = 2 * h * h + 2 * h * a["kv_dim"] + 3 * h * a["intermediate"] + 2 * h
    return a["vocab"] * h + a["layers"] * layer + h + h * labels


CLASSIFIER_PARAMS = classifier_params()

# What its training applied whatever the tuned values said (config.yaml's training section and
# shared/phase2_config_override.yaml, as its Phase-2 training scripts read them): one weight decay for
# both methods, LoRA's warm-up and dropout from its LoRA config, and 8 gradient-accumulation steps.
APPLIED = {"weight_decay": 0.01, "lora_warmup_ratio": 0.06, "lora_dropout": 0.05, "grad_accumulation": 8}

# ---- drift
# The original study's headline drift numbers, typed in from drift_analysis/drift_analysis_results.json
# (each run's summary_statistics): mean over its 22 layers of 1 - "CKA" (its formula, unmasked mean
# pooling), per seed 42 / 1337 / 2024, and the mean cosine over layers.
DRIFT_SOURCE = "benc61116/NLP @ eef92c5, drift_analysis/drift_analysis_results.json"
DRIFT = {
    ("mrpc", "full"): {"mean_drift": [0.7739, 0.7803, 0.7778], "mean_cosine": [0.9661, 0.9670, 0.9607]},
    ("mrpc", "lora"): {"mean_drift": [0.7671, 0.7668, 0.7613], "mean_cosine": [0.9898, 0.9811, 0.9824]},
    ("sst2", "full"): {"mean_drift": [0.9153, 0.8735, 0.9078], "mean_cosine": [0.6556, 0.8373, 0.8280]},
    ("sst2", "lora"): {"mean_drift": [0.6374, 0.6326, 0.6542], "mean_cosine": [0.9775, 0.9790, 0.9676]},
    ("rte", "full"): {"mean_drift": [0.6031, 0.5968, 0.6050], "mean_cosine": [0.9975, 0.9966, 0.9916]},
    ("rte", "lora"): {"mean_drift": [0.6046, 0.5992, 0.5988], "mean_cosine": [0.9966, 0.9963, 0.9946]},
}
# its RTE full-FT result at layer 0 (the same file's layer_wise_drift, mean over seeds): identical
# representations by cosine, "CKA" far below 1
DRIFT_RTE_LAYER0 = {"cosine": 1.000, "cka": 0.595}

# its "drift reduction" (full FT drift - LoRA drift) / full FT drift in %, seeds paired by position:
# per seed, mean and sd (ddof=0), and the one-sided one-sample t-test's p, typed in from the same
# file's comparison_statistics (rq1_summary_metrics.csv repeats the means and p-values)
DRIFT_REDUCTION = {"mrpc": {"per_seed": [0.8705, 1.7269, 2.1205], "mean": 1.5726, "sd": 0.5218, "p": 0.0254},
                   "sst2": {"per_seed": [30.3651, 27.5743, 27.9397], "mean": 28.6264, "sd": 1.2385, "p": 0.00047},
                   "rte": {"per_seed": [-0.2427, -0.3868, 1.0172], "mean": 0.1292, "sd": 0.6306, "p": 0.3996}}
SEEDS = (42, 1337, 2024)

# its serving benchmark's headline (the numbers: serving.ORIGINAL_DEPLOYMENT, typed in from this file)
DEPLOYMENT_SOURCE = "benc61116/NLP @ eef92c5, deployment/deployment_benchmark_summary.csv"

# its multi-adapter check (deployment/multi_adapter_validation_results.json): seed-42 adapters, 50
# requests per task; accuracy in % (RTE's requests came from the GLUE test split, whose labels are hidden)
ADAPTER_CHECK = {"mrpc": {"n": 50, "mismatches": 0, "max_logit_diff": 0.0, "accuracy": 78.0},
                 "sst2": {"n": 50, "mismatches": 0, "max_logit_diff": 0.0, "accuracy": 100.0},
                 "rte": {"n": 50, "mismatches": 0, "max_logit_diff": 0.0, "accuracy": 0.0}}


def performance_summary():
    """Per task and method: the metric, mean and sd (ddof=1) over the three seeds, as the original reported them."""
    import pandas as pd
    return pd.DataFrame([{"task": task, "method": method, "metric": metric, "mean": statistics.mean(v),
                          "sd": statistics.stdev(v)}
                         for task, by in PERFORMANCE.items() for method, ms in by.items()
                         for metric, v in ms.items() if metric == ("f1" if task == "mrpc" else "accuracy")])


def drift_reduction():
    """Per task: each method's mean drift (over seeds, from ``DRIFT``) and the drift reduction as the
    original reported it (``DRIFT_REDUCTION``)."""
    import pandas as pd
    return pd.DataFrame([{"task": task, "full": statistics.mean(DRIFT[(task, "full")]["mean_drift"]),
                          "lora": statistics.mean(DRIFT[(task, "lora")]["mean_drift"]), **red}
                         for task, red in DRIFT_REDUCTION.items()])


def reduction_from_drift(task: str) -> list[float]:
    """The reduction per seed recomputed from the typed-in mean drifts (a check on both tables)."""
    full, lora = DRIFT[(task, "full")]["mean_drift"], DRIFT[(task, "lora")]["mean_drift"]
    return [100 * (f - lo) / f for f, lo in zip(full, lora)]
