"""What chapters call: the active profile, results on demand, and display that works in HTML and PDF.

A chapter's cells only *load and plot* when results exist, so rendering takes seconds. When a
result is missing, ``ensure`` computes it (``quarto render --execute`` on a GPU reruns the study)
unless ``LORADRIFT_COMPUTE=never`` (the chapter test, CI), in which case the chapter says what is
missing and which command computes it.
"""
from __future__ import annotations

import base64
import os

from .config import active_profile, data_dir, load_profile

STAGES = {  # stage -> (module, function, one-line description)
    "setup": ("loradrift.cli", "cmd_setup", "data statistics, baselines, sanity check"),
    "train": ("loradrift.train", "train_all", "training units"),
    "drift": ("loradrift.drift", "run_drift", "representational drift"),
    "deploy": ("loradrift.serving", "run_deploy", "serving benchmark"),
    "search": ("loradrift.search", "run_search", "hyperparameter search"),
}


def profile() -> str:
    """The profile this render is for: QUARTO_PROFILE's first known entry, else ``cpu``."""
    return active_profile()


def compute_mode() -> str:
    mode = os.environ.get("LORADRIFT_COMPUTE", "missing")
    if mode not in ("missing", "never"):
        raise ValueError(f"LORADRIFT_COMPUTE={mode!r}: use 'missing' (default) or 'never'")
    return mode


def ensure(stage: str, tasks=None) -> bool:
    """Compute a stage's missing results (unless LORADRIFT_COMPUTE=never); True if its results exist."""
    import importlib
    import types
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: one of {list(STAGES)}")
    prof = load_profile(profile())
    if compute_mode() != "never":
        mod, fn, _ = STAGES[stage]
        f = getattr(importlib.import_module(mod), fn)
        if stage == "setup":
            f(prof, types.SimpleNamespace(glue_dir=None))
        else:
            f(prof, tasks=tasks)
    return has_results(stage, prof["name"])


def has_results(stage: str, prof_name: str) -> bool:
    d = data_dir(prof_name)
    pattern = {"setup": "data_stats.json", "train": "runs/*.json", "drift": "drift*",
               "deploy": "deployment*", "search": "search*"}[stage]
    return any(d.glob(pattern))


def command(stage: str) -> str:
    return f"python -m loradrift {stage} --profile {profile()}"


def missing_note(stage: str, what: str | None = None):
    note(f"**Not computed yet** for the `{profile()}` profile: {what or STAGES[stage][2]}. "
         f"Run `{command(stage)}` (or render with `quarto render --execute`) to compute it.")


# ---------------------------------------------------------------------------- display
def _display(bundle: dict):
    from IPython.display import display
    display(bundle, raw=True)


def note(text: str):
    """A markdown paragraph (a callout-like note in both HTML and PDF)."""
    _display({"text/markdown": text, "text/plain": text})


def table(df, digits: int = 3, index: bool = False):
    """A pandas DataFrame as a markdown table: the same readable table in HTML and PDF."""
    md = df.to_markdown(index=index, floatfmt=f".{digits}f")
    _display({"text/markdown": md, "text/plain": df.to_string(index=index)})


def show(chart, scale: float = 2.0):
    """An altair chart: interactive (vega-embed) in HTML, a PNG in PDF and plain outputs.

    Quarto picks the richest output its format can show: HTML takes ``text/html``, LaTeX/PDF
    takes ``image/png``.
    """
    import vl_convert as vlc
    spec = chart.to_dict()
    png = vlc.vegalite_to_png(spec, scale=scale)
    html = chart.to_html(fullhtml=False) if hasattr(chart, "to_html") else None
    bundle = {"image/png": base64.b64encode(png).decode(), "text/plain": f"<{type(chart).__name__}>"}
    if html:
        bundle["text/html"] = html
    _display(bundle)


def fmt(x, digits: int = 3) -> str:
    """A number for prose: fixed digits, or 'n/a' for missing values."""
    if x is None:
        return "n/a"
    try:
        import math
        if isinstance(x, float) and math.isnan(x):
            return "n/a"
    except TypeError:
        pass
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def pm(mean, sd, digits: int = 3) -> str:
    return f"{fmt(mean, digits)} ± {fmt(sd, digits)}"


def pct(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


# ---------------------------------------------------------------------------- study tables
def runs_frame(prof_name: str | None = None):
    """One row per training unit: test and validation metrics, cost, status."""
    import pandas as pd

    from .data import task_metric
    from .train import load_runs
    rows = []
    for r in load_runs(prof_name or profile()):
        rows.append({"id": r["id"], "task": r["task"], "method": r["method"], "seed": r["seed"],
                     "status": r["status"], "metric": task_metric(r["task"]),
                     "test_score": r["test"][task_metric(r["task"])],
                     "test_accuracy": r["test"]["accuracy"], "test_f1": r["test"]["f1"],
                     "val_score": r["validation"][task_metric(r["task"])],
                     "train_s": r["train_runtime_s"], "wall_s": r["wall_time_s"],
                     "tokens_per_s": r.get("tokens_per_s"), "pad_fraction": r.get("pad_fraction"),
                     "trainable": r["params"]["trainable"], "total": r["params"]["total"],
                     "steps": r["steps"], "early_stopped": r["early_stopped"]})
    return pd.DataFrame(rows)


def summary_frame(runs):
    """Mean ± sd (ddof=1) of the test metric over seeds, per task and method."""
    if runs.empty:
        return runs
    g = runs.groupby(["task", "method"])
    out = g.agg(metric=("metric", "first"), n_seeds=("seed", "nunique"), mean=("test_score", "mean"),
                sd=("test_score", "std"), accuracy=("test_accuracy", "mean"), f1=("test_f1", "mean"),
                train_s=("train_s", "mean"), tokens_per_s=("tokens_per_s", "mean"),
                pad_fraction=("pad_fraction", "mean"), trainable=("trainable", "first"),
                total=("total", "first")).reset_index()
    return out
