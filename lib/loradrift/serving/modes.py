"""The serving modes: one table (``MODES``) says, for every mode, everything the benchmark needs.

A mode is one way of serving requests, from one loaded object. Its entry names:

- ``label``     what is served, in words (the chapter's table of modes);
- ``stream``    ``task`` (one task's stream: a model of that task) or ``interleaved`` (the stream of every
                task: a model serving every task);
- ``schedule``  how it forms batches from a window of requests (``schedule.SCHEDULERS``: fifo, task,
                mixed); modes with the same scheduler on the same window serve identical batches;
- ``needs``     the method kind (``loradrift.methods``) whose trained units it serves; None: the base model;
- ``load``      what is loaded, a method of the model source (``sources.ModelSource``);
- ``server``    the server class that turns a batch into logits (``servers``, ``batched``);
- ``unmerged``  whether a LoRA branch runs beside the base weights (the cost model counts its FLOPs);
- ``over``      the modes its time is divided by, where both are in one comparison (the reported ratios);
- ``check``     (reference modes, ``identical`` | ``agreement``): what its predictions must match (the
                first reference that served the same requests at the same batch size).

Every mode of a comparison (``settings``: ``deploy.comparisons``) is loaded on its own, all at once,
and serves every timed window in rotated order (``timing``). A new mode is one ``register_mode``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry
from .batched import BatchedServer
from .servers import MixedServer, RoutedServer, Server, SwitchServer


@dataclass(frozen=True)
class Mode:
    name: str
    label: str
    stream: str                          # task | interleaved
    schedule: str                        # a scheduler of schedule.SCHEDULERS
    needs: str | None                    # method kind served, None for the base model
    load: str                            # a ModelSource method
    server: type = Server
    unmerged: bool = False               # a LoRA branch beside the base weights
    over: tuple[str, ...] = ()           # denominators of the reported ratios
    check: tuple[tuple[str, ...], str] | None = None  # (reference modes, "identical" | "agreement")


MODES: Registry = Registry("serving mode", "loradrift/serving/modes.py")
register_mode = MODES.register
get_mode = MODES.lookup

_SINGLE = ("routed-lora", "lora")   # the single-adapter references of the multi-adapter modes

register_mode(Mode("base", "base model, untrained head (cost reference)", "task", "fifo", None, "base"))
register_mode(Mode("full", "full fine-tuned model", "task", "fifo", "full", "full", over=("base",)))
register_mode(Mode("lora", "LoRA unmerged (peft)", "task", "fifo", "lora", "adapter", unmerged=True,
                   over=("merged", "full", "base")))
register_mode(Mode("merged", "LoRA merged (merge_and_unload)", "task", "fifo", "lora", "merged",
                   over=("full", "base"), check=(("lora",), "agreement")))
register_mode(Mode("merged-aa", "LoRA merged, a second copy loaded the same way (A/A control)", "task", "fifo",
                   "lora", "merged", over=("merged",), check=(("merged",), "identical")))
register_mode(Mode("multi", "all adapters on one base, set_adapter per task-homogeneous batch", "interleaved",
                   "task", "lora", "resident", SwitchServer, True, over=("routed-lora", "routed-merged"),
                   check=(_SINGLE, "identical")))
register_mode(Mode("mixed", "all adapters on one base, length-bucketed mixed-adapter batches (peft adapter_names=)",
                   "interleaved", "mixed", "lora", "resident", MixedServer, True,
                   over=("routed-merged", "multi", "routed-lora"), check=(_SINGLE, "identical")))
register_mode(Mode("mixed-fifo", "as mixed, batches cut in arrival order (no length bucketing)", "interleaved",
                   "fifo", "lora", "resident", MixedServer, True, over=("mixed", "routed-merged"),
                   check=(_SINGLE, "identical")))
register_mode(Mode("batched", "all adapters stacked, mixed-adapter batches, one batched matmul per LoRA module",
                   "interleaved", "mixed", "lora", "batched", BatchedServer, True,
                   over=("mixed", "routed-merged"), check=(("mixed",) + _SINGLE, "identical")))
register_mode(Mode("routed-lora", "one unmerged adapter model per task, batches routed", "interleaved", "task",
                   "lora", "routed_adapters", RoutedServer, True, over=("routed-merged",)))
register_mode(Mode("routed-merged", "one merged model per task, batches routed", "interleaved", "task", "lora",
                   "routed", RoutedServer, check=(_SINGLE, "agreement")))


def ordered(names) -> list[str]:
    """Mode names in the table's order (unknown names raise LoraDriftError)."""
    for n in names:
        get_mode(n)
    return [m for m in MODES if m in set(names)]


def ratio_pairs(modes) -> list[tuple[str, str]]:
    """Every (numerator, denominator) reported among ``modes``, in the table's order."""
    have = set(modes)
    return [(m, d) for m in ordered(modes) for d in MODES[m].over if d in have]


def same_batches(num: str, den: str) -> bool:
    """Do the two modes form identical batches from a window (so their per-batch times pair too)?"""
    return get_mode(num).schedule == get_mode(den).schedule


def needed_kinds(modes) -> list[str]:
    """The method kinds whose units the modes serve."""
    return sorted({get_mode(m).needs for m in modes} - {None})
