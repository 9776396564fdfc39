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
run, correctness and accuracy rows), ``stage`` (a profile's settings, currency key, ``run_deploy``),
``arch`` (architecture-only runs on random weights, ``run_arch``), ``vllm`` (``run_vllm``),
``findings`` (numbers for the book) and ``chapter`` (the deployment chapter's tables and prose values).

Results: ``data/<profile>/deployment_*.csv`` and ``deployment_meta.json``; architecture-only runs
write the same files under ``data/arch-<arch>-<cpu|cuda>/``.
"""
from __future__ import annotations

from .arch import (ARCHS, arch_config, random_classifier, random_lora_model, randomize_adapter, realistic_lengths,
                   run_arch)
from .chapter import per_task_ratios, ratio_text
from .engine import (FILES, Bench, accuracy_rows, correctness_rows, mode_batch_sizes, plan_groups)
from .findings import (ORIGINAL_DEPLOYMENT, ORIGINAL_OVERHEAD, ORIGINAL_SOURCE, arch_command, arch_results,
                       has_latency, load_results, task_ratios, timing_error)
from .memory import MemoryMeter, tensor_bytes
from .modes import MODES, Mode, get_mode, register_mode
from .requests import Request, mixed_batches, multi_batches, real_requests, single_batches
from .servers import IdsEncoder, MixedServer, RoutedServer, Server, SwitchServer, TextEncoder
from .sources import ModelSource, TrainedSource, check_adapter, load_multi_adapter
from .stage import (_unit_results, deploy_config, deploy_settings, outdated_units, plan_deploy, run_deploy,
                    served_method, unit_results)
from .timing import latency_summary, ratio_ci, ratio_rows, time_stream
from .vllm import run_vllm, vllm_available
