"""loradrift — the small library behind the LoRA Drift book.

Chapters import it; the CLI (`python -m loradrift`) drives it. Modules:

- `config`   profiles (layered YAML data, checked when loaded), unit configs, environment capture
- `store`    where every result lives, the atomic writer, "is this result current?"
- `tasks`    the task registry (GLUE folder, columns, labels, metric, text format)
- `methods`  the method kinds (full fine-tuning, LoRA): prepare, save, load
- `stages`   the study's stages in order (CLI, `all` and the chapters use this one list)
- `data`     GLUE from a local TSV folder or the hub, splits
- `models`   base model (hub id, local folder or GGUF), classification heads
- `train`    one training unit with transformers' Trainer; the run records, sanity check, baselines
- `trainer`  what the study adds to the Trainer: token counts, step time, precision, best weights
- `tracking` wandb (offline by default): a unit's run (group, resume, artifact), search trials as runs
- `search`   the Optuna search per task x method, applied to the profile as a YAML round trip
- `bench`    matrix-multiply ceilings and the study's training and extraction rates against them
- `plan`     the l4 profile's memory and time plans for TinyLlama-1.1B on one L4 (meta-device shapes)
- `drift`    the drift stage (a package): extraction, the measures registry (CKA, debiased CKA, the
             original study's formula), bootstrap and tests, weights, forgetting, findings
- `serving`  the deployment benchmark (a package): one modes table, timing, memory, vLLM, findings
- `findings` numbers the chapters show (runs, setup, run time, headline); `search_findings` likewise
- `figures`  the chapters' charts and display tables (formatting happens here)
- `report`   display in HTML and PDF (notes, tables, charts), results on demand (`ensure`)
- `original` the original study's published numbers, typed in with their source
"""
__version__ = "0.1.0"


class LoraDriftError(RuntimeError):
    """An error a user can fix; the message says how."""
