"""The original study's headline figures, typed in from its published result files.

Source: benc61116/NLP at commit eef92c5, ``drift_analysis/performance_metrics.csv`` and
``performance_summary.json`` as summarised in the replication notes (METHODS.md §7.1). Only these
few numbers are typed in; the files themselves stay outside this repository.
Caveats that matter when comparing (METHODS.md §2, §8.3-8.4): their "test" is the GLUE validation
split that also chose the best epoch; full-FT models were re-evaluated in a different input format
(pair encoding, max_length 128) than they were trained in; SST-2 LoRA used 800 of 872 examples.
"""
from __future__ import annotations

SOURCE = "benc61116/NLP @ eef92c5, drift_analysis/performance_metrics.csv (METHODS.md §7.1)"

# task -> method -> metric -> per-seed values (seeds 42, 1337, 2024)
PERFORMANCE = {
    "mrpc": {"lora": {"f1": [0.8799, 0.8832, 0.8810], "accuracy": [0.8260, 0.8333, 0.8284]},
             "full": {"f1": [0.8299, 0.8885, 0.8754], "accuracy": [0.7206, 0.8456, 0.8284]}},
    "sst2": {"lora": {"accuracy": [0.95125, 0.9525, 0.9450]},
             "full": {"accuracy": [0.9025, 0.8440, 0.8509]}},
    "rte": {"lora": {"accuracy": [0.7834, 0.7509, 0.8267]},
            "full": {"accuracy": [0.4693, 0.5235, 0.6895]}},
}

# trainable parameters at TinyLlama-1.1B scale: LoRA r=8 on q_proj/v_proj over 22 layers plus the
# 2048x2 score head (computed in METHODS.md §2; the report's "4,096 (0.4%)" counted only the head)
LORA_TRAINABLE = 22 * 8 * ((2048 + 2048) + (2048 + 256)) + 4096

# ---- drift
# The original study's headline drift numbers, typed in from METHODS.md section 7.2 (computed there
# from drift_analysis/drift_analysis_results.json of benc61116/NLP at eef92c5): mean over its 22
# layers of 1 - "CKA" (its formula, unmasked mean pooling), per seed 42 / 1337 / 2024, and the mean
# cosine over layers.
DRIFT_SOURCE = ("benc61116/NLP @ eef92c5, drift_analysis/drift_analysis_results.json "
                "(as summarised in METHODS.md, section 7.2)")
DRIFT = {
    ("mrpc", "full"): {"mean_drift": [0.7739, 0.7803, 0.7778], "mean_cosine": [0.9661, 0.9670, 0.9607]},
    ("mrpc", "lora"): {"mean_drift": [0.7671, 0.7668, 0.7613], "mean_cosine": [0.9898, 0.9811, 0.9824]},
    ("sst2", "full"): {"mean_drift": [0.9153, 0.8735, 0.9078], "mean_cosine": [0.6556, 0.8373, 0.8280]},
    ("sst2", "lora"): {"mean_drift": [0.6374, 0.6326, 0.6542], "mean_cosine": [0.9775, 0.9790, 0.9676]},
    ("rte", "full"): {"mean_drift": [0.6031, 0.5968, 0.6050], "mean_cosine": [0.9975, 0.9966, 0.9916]},
    ("rte", "lora"): {"mean_drift": [0.6046, 0.5992, 0.5988], "mean_cosine": [0.9966, 0.9963, 0.9946]},
}
# its RTE full-FT result at layer 0 (METHODS.md section 5): identical representations by cosine, "CKA" far below 1
DRIFT_RTE_LAYER0 = {"cosine": 1.000, "cka": 0.595}
