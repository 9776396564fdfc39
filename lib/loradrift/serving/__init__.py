"""The deployment benchmark (RQ2): what serving a LoRA-adapted classifier costs, measured honestly.

Serving *modes* are declared once, in ``modes.MODES`` (base, full, lora, merged, multi, mixed,
routed-merged); each says which stream it serves, which unit it needs, how it is loaded and served,
which ratios it enters and what its predictions must match.

Every timed call covers what a server does for a batch: tokenise and pad, switch adapter if needed,
forward, synchronise (``torch.cuda.synchronize`` on a GPU) and bring the logits to the host. Clock:
``time.perf_counter``. Requests are real test-split examples in the training format. Per-request
latency is the latency of the batch that carries it; throughput is requests / wall time of the whole
timed stream (measured, not derived). Ratios between modes carry bootstrap intervals over batches
(paired where the two modes served identical batches).

Correctness is measured on the same forward passes: ``multi`` and ``mixed`` must predict exactly
what the single-adapter ``lora`` model predicts (each task's trained ``score`` head lives in
``modules_to_save`` and must switch with the adapter), ``merged`` is compared with ``lora`` (agreement,
max |Δlogit|), and every mode's accuracy is computed on the labelled requests it served.

Modules: ``modes`` (the table), ``requests`` (requests and batching), ``servers`` (encoders, servers),
``sources`` (loading trained units, adapter checks), ``timing``, ``memory``, ``engine`` (groups, the
run, correctness and accuracy rows), ``settings`` (a profile's ``deploy:`` section, the served methods),
``stage`` (the served units, the currency key, ``run_deploy``),
``arch`` (architecture-only runs on random weights, ``run_arch``), ``vllm`` (``run_vllm``),
``findings`` (numbers for the book) and ``chapter`` (the deployment chapter's tables and prose values).

Results: ``data/<profile>/deployment_*.csv`` and ``deployment_meta.json``; architecture-only runs
write the same files under ``data/arch-<arch>-<cpu|cuda>/``.
"""
from __future__ import annotations

from .arch import ARCHS, random_classifier, random_lora_model, randomize_adapter, run_arch
from .chapter import per_task_ratios, ratio_text
from .engine import FILES, correctness_rows
from .findings import (ORIGINAL_DEPLOYMENT, ORIGINAL_OVERHEAD, ORIGINAL_SOURCE, arch_command, arch_results,
                       correctness_summary, has_latency, load_results, timing_error)
from .memory import MemoryMeter
from .modes import MODES, Mode, register_mode
from .requests import Request, mixed_batches, multi_batches, single_batches
from .servers import MixedServer, Server, SwitchServer, TextEncoder
from .sources import ModelSource, check_adapter, load_multi_adapter
from .settings import deploy_config, served_method, served_methods
from .stage import (_unit_results, deploy_settings, outdated_units, plan_deploy, results_current, run_deploy,
                    unit_results)
from .timing import latency_summary, ratio_ci, time_stream
from .vllm import run_vllm, vllm_available

__all__ = [
    # the stage, its settings and currency
    "run_deploy", "plan_deploy", "deploy_config", "deploy_settings", "served_method", "served_methods",
    "unit_results", "_unit_results", "outdated_units", "results_current", "FILES",
    # architecture-only runs and vLLM
    "run_arch", "ARCHS", "random_classifier", "random_lora_model", "randomize_adapter",
    "run_vllm", "vllm_available",
    # the modes table and the engine's parts
    "MODES", "Mode", "register_mode", "correctness_rows",
    "Request", "single_batches", "multi_batches", "mixed_batches", "TextEncoder", "Server", "SwitchServer",
    "MixedServer", "ModelSource", "check_adapter", "load_multi_adapter", "MemoryMeter",
    "time_stream", "latency_summary", "ratio_ci",
    # findings for the book
    "load_results", "arch_results", "arch_command", "has_latency", "timing_error",
    "correctness_summary", "ratio_text", "per_task_ratios", "ORIGINAL_DEPLOYMENT", "ORIGINAL_OVERHEAD",
    "ORIGINAL_SOURCE",
]
