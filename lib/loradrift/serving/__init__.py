"""The deployment benchmark (RQ2): what serving a LoRA-adapted classifier costs, measured to a stated
resolution.

Serving *modes* are declared once, in ``modes.MODES`` (base, full, lora, merged, merged-aa, multi,
mixed, mixed-fifo, batched, routed-lora, routed-merged); each says which stream it serves, how it forms
batches (``schedule``), how it is loaded and served, which ratios it enters and what its predictions
must match. A profile's ``deploy.comparisons`` groups them: every mode of a comparison is loaded at
once (each deep-copied, so every mode's weights are allocated the same way) and serves the same
windows of requests in rotated order (``timing``), so every ratio is paired window by window under the
same conditions. An A/A control (``merged-aa``) measures the resolution; a cost model (``costmodel``:
FLOPs, weight bytes, operator calls x a measured dispatch cost) predicts every ratio beside the
measurement; ``findings`` gives the verdicts on the original study's claims 7-9 and the mixed-adapter
serving result. ``batched`` is a Punica-style batched LoRA path (one batched matmul per LoRA module).

Correctness is measured on the same forward passes: the multi-adapter modes must predict exactly what
a single-adapter model predicts (each task's trained ``score`` head lives in ``modules_to_save`` and
must switch with the adapter), ``merged`` is compared with ``lora`` (agreement, max |Δlogit|), and
every mode's accuracy is computed on the labelled requests it served.

Modules: ``modes`` (the table), ``requests``, ``schedule`` (streams, windows, schedulers), ``servers``,
``batched``, ``sources`` (loading trained units, adapter checks), ``timing``, ``costmodel``, ``memory``,
``engine`` (the run), ``analysis`` (the result tables), ``settings`` (a profile's ``deploy:`` section),
``stage`` (the served units, the currency key, ``run_deploy``), ``arch`` (architecture-only runs on
random weights, ``run_arch``; on a GPU the prepared TinyLlama-1.1B run), ``vllm`` (``run_vllm``),
``findings`` (numbers and verdicts for the book) and ``chapter`` (the chapter's tables and prose values).

Results: ``data/<profile>/deployment_*.csv`` and ``deployment_meta.json``; architecture-only runs
write the same files under ``data/arch-<arch>-<cpu|cuda>/``.
"""
from __future__ import annotations

from .analysis import correctness_rows
from .arch import ARCHS, random_classifier, random_lora_model, randomize_adapter, run_arch
from .batched import BatchedServer, batched_model
from .chapter import interval, rq2_answer
from .engine import FILES
from .findings import (CLAIMS, ORIGINAL_DEPLOYMENT, ORIGINAL_OVERHEAD, ORIGINAL_SOURCE, arch_command, arch_results,
                       claim, compare, correctness_summary, has_latency, headline, load_results, mixed_serving,
                       resolution, superseded, superseded_runs, timing_error)
from .memory import MemoryMeter
from .modes import MODES, Mode, register_mode
from .requests import Request
from .schedule import SCHEDULERS, interleaved_stream, task_stream, windows
from .servers import MixedServer, Server, SwitchServer, TextEncoder
from .sources import ModelSource, check_adapter, load_multi_adapter
from .settings import deploy_config, served_method, served_methods
from .stage import (_unit_results, deploy_settings, outdated_units, plan_deploy, results_current, run_deploy,
                    unit_results)
from .timing import paired_ratio, time_point
from .vllm import run_vllm, vllm_available

__all__ = [
    # the stage, its settings and currency
    "run_deploy", "plan_deploy", "deploy_config", "deploy_settings", "served_method", "served_methods",
    "unit_results", "_unit_results", "outdated_units", "results_current", "FILES",
    # architecture-only runs and vLLM
    "run_arch", "ARCHS", "random_classifier", "random_lora_model", "randomize_adapter",
    "run_vllm", "vllm_available",
    # the modes table and the engine's parts
    "MODES", "Mode", "register_mode", "correctness_rows", "Request", "SCHEDULERS", "task_stream",
    "interleaved_stream", "windows", "TextEncoder", "Server", "SwitchServer", "MixedServer", "BatchedServer",
    "batched_model", "ModelSource", "check_adapter", "load_multi_adapter", "MemoryMeter", "time_point",
    "paired_ratio",
    # findings for the book
    "load_results", "superseded", "superseded_runs", "arch_results", "arch_command", "has_latency", "timing_error",
    "resolution",
    "compare", "claim", "CLAIMS", "mixed_serving", "headline", "correctness_summary", "interval", "rq2_answer",
    "ORIGINAL_DEPLOYMENT", "ORIGINAL_OVERHEAD", "ORIGINAL_SOURCE",
]
