"""loradrift — the small library behind the LoRA Drift book.

Chapters import it; the CLI (`python -m loradrift`) drives it. Modules:

- `config`   profiles (layered YAML data, checked when loaded), unit configs, environment capture
- `store`    where every result lives, the atomic writer, "is this result current?"
- `tasks`    the task registry (GLUE folder, columns, labels, metric, text format)
- `methods`  the method kinds (full fine-tuning, LoRA): prepare, save, load
- `stages`   the study's stages in order (CLI, `all` and the chapters use this one list)
- `data`     GLUE from a local TSV folder or the hub, splits
- `models`   base model (hub id, local folder or GGUF), classification heads
- `train`    one training unit with transformers' Trainer; the run store
- `drift`    the drift stage (a package): extraction, the measures registry (CKA, debiased CKA, the
             original study's formula), bootstrap and tests, weights, forgetting, findings
- `figures`  the chapters' charts and display tables
- `serving`  the deployment benchmark
- `report`   loading results and drawing the book's charts
"""
__version__ = "0.1.0"


class LoraDriftError(RuntimeError):
    """An error a user can fix; the message says how."""
