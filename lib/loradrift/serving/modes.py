"""The serving modes: one table (``MODES``) says, for every mode, everything the benchmark needs.

A mode is served from one loaded object on one request stream. Its entry names:

- ``label``     what is served, in words (the chapter's table of modes);
- ``batching``  how its requests come: ``task`` (one task's stream, one model per task), ``interleaved``
                (every task's stream, task-homogeneous batches, the task changing every batch) or
                ``mixed`` (the same requests, each batch carrying requests for different tasks);
                two modes with the same batching serve identical batches, so their ratio is paired;
- ``needs``     the method kind (``loradrift.methods``) whose trained unit it serves; None: the base model;
- ``load``      what is loaded, a method of the model source (``sources.ModelSource``: base, full,
                adapter, merged, resident, routed); modes with the same ``load`` on the same stream
                share one loaded object and one memory row (``multi`` and ``mixed``);
- ``server``    the server class that turns a batch into logits (``servers``);
- ``over``      the modes its latency is divided by (the ratios the benchmark reports);
- ``check``     (reference mode, ``identical`` | ``agreement``): what its predictions must match.

A new mode is one ``register_mode(Mode(...))``, here or in a user's code; a new way of loading or
serving adds a method to the model source or a server class.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry
from .servers import MixedServer, RoutedServer, Server, SwitchServer


@dataclass(frozen=True)
class Mode:
    name: str
    label: str
    batching: str                        # task | interleaved | mixed
    needs: str | None                    # method kind served, None for the base model
    load: str                            # a ModelSource method
    server: type = Server
    over: tuple[str, ...] = ()           # denominators of the reported latency ratios
    check: tuple[str, str] | None = None  # (reference mode, "identical" | "agreement")

    @property
    def interleaved(self) -> bool:
        """Serves the interleaved stream of every task (else one task's own stream)."""
        return self.batching != "task"


MODES: Registry = Registry("serving mode", "loradrift/serving/modes.py")
register_mode = MODES.register
get_mode = MODES.lookup


register_mode(Mode("base", "base model, untrained head (cost reference)", "task", None, "base"))
register_mode(Mode("full", "full fine-tuned model", "task", "full", "full", over=("base",)))
register_mode(Mode("lora", "LoRA unmerged (peft)", "task", "lora", "adapter", over=("merged", "full", "base")))
register_mode(Mode("merged", "LoRA merged (merge_and_unload)", "task", "lora", "merged", over=("full", "base"),
                   check=("lora", "agreement")))
register_mode(Mode("multi", "all adapters resident, set_adapter per batch (timed)", "interleaved", "lora",
                   "resident", SwitchServer, over=("routed-merged",), check=("lora", "identical")))
register_mode(Mode("mixed", "all adapters resident, mixed-adapter batches (adapter_names=)", "mixed", "lora",
                   "resident", MixedServer, over=("routed-merged", "multi"), check=("lora", "identical")))
register_mode(Mode("routed-merged", "one merged model per task, all resident, batches routed", "interleaved",
                   "lora", "routed", RoutedServer, check=("merged", "identical")))


def ordered(names) -> list[str]:
    """Mode names in the table's order (unknown names raise LoraDriftError)."""
    for n in names:
        get_mode(n)
    return [m for m in MODES if m in set(names)]


def ratio_pairs() -> list[tuple[str, str]]:
    """Every (numerator, denominator) the benchmark reports, in the table's order."""
    return [(m.name, den) for m in MODES.values() for den in m.over]


def paired(num: str, den: str) -> bool:
    """Did the two modes serve identical batches (so a ratio's bootstrap resamples them together)?"""
    return get_mode(num).batching == get_mode(den).batching


def needed_kinds(modes) -> list[str]:
    """The method kinds whose units the modes serve."""
    return sorted({get_mode(m).needs for m in modes} - {None})
