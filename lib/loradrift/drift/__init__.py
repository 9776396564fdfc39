"""The drift stage (RQ1): representational drift, weight-space change and forgetting.

For every task whose training units are done, and for the base model and each fine-tuned model:

1. **Representations** (`extract`). A fixed, seeded sample of the task's test split (the same
   examples for the base and every fine-tuned model) goes through the model's *backbone*
   (``LlamaModel``) at every depth (embedding, each decoder layer, final norm), pooled each
   configured way (``drift.poolings``; mean pooling leaves out the attention sinks the base model
   shows, `extract`). LoRA models are read merged; a subset is also read unmerged and the two are
   compared. Pooled states are cached per (task, model) (`records`). Whether one coordinate decides
   a pooling at a depth: `diagnostics`.
2. **Measures** (`measures`: one registry, linear, debiased and standardised CKA, Procrustes,
   cosine with its null over different examples; `stats`: bootstrap and permutation through each
   measure's fast path) per depth and pooling, as configured (``drift.measures``), each with a
   bootstrap interval over examples; a permutation null; seed-vs-seed similarities (`tables`).
3. **Weight space** (`weights`). Intruder dimensions (Shuttleworth et al. 2024) of the adapted
   matrices over a sweep of thresholds.
4. **Forgetting** (`forgetting`). Perplexity on a fixed WikiText-2 slice of each fine-tuned backbone
   read through the *base* model's LM head (after Biderman et al. 2024).
5. **Across seeds** (`tables`, `stats`). Drift (1 - similarity) per seed, the compared methods with
   Welch's t, an exact permutation test and Hedges' g: Holm over the pre-registered primary
   endpoints (``drift.primary``), Benjamini-Hochberg over the exploratory rest.

Settings: the profile's ``drift:`` section (`settings`). Currency: `currency` (the key of every
setting that changes a result). The stage: `stage.run_drift`. What the chapter shows: `results`
(loading, tables) and `findings` (numbers and verdicts per task).
"""
from .currency import is_current, task_key
from .results import load_results, replication_table
from .settings import drift_config
from .stage import run_drift, summarise

__all__ = ["drift_config", "is_current", "load_results", "replication_table", "run_drift", "summarise", "task_key"]
