"""loradrift — the small library behind the LoRA Drift book.

Chapters import it; the CLI (`python -m loradrift`) drives it. Modules:

- `config`   profiles (YAML data), paths, atomic writes, environment capture
- `data`     GLUE from a local TSV folder or the hub, one text format per task, splits
- `models`   base model (hub id, local folder or GGUF), classification heads, LoRA
- `train`    one training unit with transformers' Trainer; the run store
- `measures` CKA, debiased CKA, the original study's formula, bootstrap, tests
- `drift`    hidden-state extraction and the drift stage
- `serving`  the deployment benchmark
- `report`   loading results and drawing the book's charts
"""
__version__ = "0.1.0"

TASKS = ("rte", "mrpc", "sst2")
METHODS = ("full", "lora")


class LoraDriftError(RuntimeError):
    """An error a user can fix; the message says how."""
