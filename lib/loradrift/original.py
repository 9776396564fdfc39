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
