"""What chapters call: the active profile, results on demand, and display that works in HTML and PDF.

A chapter's cells only *load and plot* when results exist, so rendering takes seconds. When a
result is missing, ``ensure`` computes it (``quarto render --execute`` on a GPU reruns the study)
unless ``LORADRIFT_COMPUTE=never`` (the chapter test, CI), in which case the chapter says what is
missing and which command computes it.
"""
from __future__ import annotations

import base64
import os

from .config import active_profile, load_profile
from .store import data_dir, read_json

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


def outdated(prof_name: str | None = None) -> dict:
    """Later-stage results made from training units that have since been re-trained (or a stale config):
    {"train": [stale unit ids], "drift": [tasks], "deploy": [method/task]}; empty lists when all current."""
    from . import drift, serving
    from .train import load_runs
    src = prof_name or profile()  # a profile name or a YAML path
    prof = load_profile(src)
    d = data_dir(prof["name"])
    out = {"train": sorted(r["id"] for r in load_runs(src) if r["status"] != "done"),
           "drift": [t for t in prof["tasks"] if (d / f"drift_{t}.json").exists() and not drift.is_current(prof, t)],
           "deploy": []}
    if (d / "deployment_meta.json").exists():
        out["deploy"] = serving.outdated_units(prof, read_json(d / "deployment_meta.json"))
    return out


def outdated_note(stage: str, prof_name: str | None = None) -> None:
    """Show a note when a stage's committed results come from superseded training units (nothing otherwise;
    it returns None so that a chapter's last line displays nothing)."""
    from .tasks import task_name
    od = outdated(prof_name)
    items = od[stage]
    if not items:
        return
    if stage == "train":
        what = (f"{len(items)} training unit(s) ({', '.join(items)}) were made with values the profile no "
                "longer has; they are shown until re-trained")
    elif stage == "drift":
        what = (f"the drift results of {', '.join(map(task_name, items))} were computed from training units "
                "that have since been re-trained")
    else:
        what = f"the benchmark served models ({', '.join(items)}) that have since been re-trained"
    note(f"**Out of date:** {what}. Run `{command(stage)}` to bring them up to date.")


# ---------------------------------------------------------------------------- display
def _display(bundle: dict):
    from IPython.display import display
    display(bundle, raw=True)


def note(text: str):
    """A markdown paragraph (a callout-like note in both HTML and PDF)."""
    _display({"text/markdown": text, "text/plain": text})


def table(df, digits: int = 3, index: bool = False, as_written: bool = False):
    """A pandas DataFrame as a markdown table: the same readable table in HTML and PDF.

    ``as_written`` shows every value as its text (no number formatting: '2e-05' stays '2e-05')."""
    shown = df.astype(object).where(df.notna(), None)   # a missing value reads as '–', not 'nan'
    md = _min_col_widths(shown.to_markdown(index=index, floatfmt=f".{digits}f", missingval="–",
                                           disable_numparse=as_written))
    _display({"text/markdown": md, "text/plain": shown.fillna("–").to_string(index=index)})


def _min_col_widths(md: str, line_chars: int = 72) -> str:
    """Give every column of a pipe table room for its longest unbreakable word.

    When a table is wider than a line, pandoc sizes its columns in proportion to the dashes of the
    separator line, so every column shrinks by the same factor; a short column (``task``: ``mrpc``)
    cannot wrap and its text ran into the next column in PDF. Widen such columns' dashes until,
    after pandoc's scaling, their longest word fits.
    """
    lines = md.split("\n")
    if len(lines) < 3:
        return md
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines[:1] + lines[2:]]
    seps = lines[1].strip().strip("|").split("|")
    if any(len(r) != len(seps) for r in rows):
        return md   # a cell holds a '|': leave the table as it is
    def words(cell):   # a number with its ± or × 10ⁿ reads as one word
        return cell.replace(" ± ", "±").replace(" × ", "×").split() or [""]
    longest = [max(len(w) for r in rows for w in words(r[k])) for k in range(len(seps))]
    dashes = [len(c) for c in seps]
    total = sum(dashes)
    if total > line_chars:
        need = [(w + 2) * total / line_chars for w in longest]   # dashes that keep each word whole
        if sum(need) >= total:   # no share fits every word: split by word length, the fairest squeeze
            dashes = [w + 2 for w in longest]
        else:   # each column its word's share; the rest as before, in proportion to what exceeded it
            spare = [max(d - n, 0) for d, n in zip(dashes, need)]
            left = total - sum(need)
            dashes = [round(n + left * sp / (sum(spare) or 1)) for n, sp in zip(need, spare)]
        dashes = [max(d, 3) for d in dashes]
    out = [(":" if c.startswith(":") else "") + "-" * (d - c.startswith(":") - c.endswith(":"))
           + (":" if c.endswith(":") else "") for c, d in zip(seps, dashes)]
    lines[1] = "|" + "|".join(out) + "|"
    return "\n".join(lines)


_N_CHARTS = [0]


def chart_html(chart, png_b64: str) -> str:
    """vega-embed HTML for one chart, in a div of its own, holding the static PNG until the
    interactive chart replaces it (so a reader without the CDN, or without JavaScript, sees it)."""
    import hashlib
    import json
    _N_CHARTS[0] += 1
    spec = json.dumps(chart.to_dict(), sort_keys=True)
    div = f"vis-{_N_CHARTS[0]}-{hashlib.md5(spec.encode()).hexdigest()[:8]}"  # unique on a page, stable across renders
    html = chart.to_html(fullhtml=False, output_div=div)
    img = f'<img src="data:image/png;base64,{png_b64}" alt="chart (static)" style="max-width:100%">'
    return html.replace(f'<div id="{div}"></div>', f'<div id="{div}">{img}</div>', 1)


def show(chart, scale: float = 2.0):
    """An altair chart: interactive (vega-embed) in HTML, a PNG in PDF and plain outputs.

    Quarto picks the richest output its format can show: HTML takes ``text/html``, LaTeX/PDF
    takes ``image/png``. Each chart gets its own div (altair's default id would make every chart
    on a page draw into the first one).
    """
    import vl_convert as vlc
    spec = chart.to_dict()
    png = base64.b64encode(vlc.vegalite_to_png(spec, scale=scale)).decode()
    bundle = {"image/png": png, "text/plain": f"<{type(chart).__name__}>"}
    if hasattr(chart, "to_html"):
        bundle["text/html"] = chart_html(chart, png)
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


_SUP = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def sig(x, digits: int = 3, na: str = "n/a") -> str:
    """A number with ``digits`` significant figures; small or large ones as m × 10ⁿ (text, never
    re-parsed as a number by a table formatter)."""
    import math
    try:
        x = float(x)
    except (TypeError, ValueError):
        return na
    if math.isnan(x):
        return na
    if x == 0 or 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    m, e = f"{x:.{digits - 1}e}".split("e")
    return f"{m} × 10{str(int(e)).translate(_SUP)}"


def pm(mean, sd, digits: int = 3) -> str:
    return f"{fmt(mean, digits)} ± {fmt(sd, digits)}"


def listing(items) -> str:
    """Items for prose: 'A', 'A and B', 'A, B and C'."""
    items = [str(i) for i in items]
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


def pct(x, digits: int = 1) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.{digits}f}%"


# ---------------------------------------------------------------------------- study tables
def runs_frame(prof_name: str | None = None, subdir: str = "runs"):
    """One row per training unit: test and validation metrics, cost, status (``subdir``: another set
    of units kept beside the study's, e.g. ``runs_untuned``)."""
    import pandas as pd

    from .tasks import task_metric
    from .train import load_runs
    rows = []
    for r in load_runs(prof_name or profile(), subdir):
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


def tuned_vs_untuned(prof_name: str | None = None):
    """Test metric of the units trained with the profile's untuned values (``runs_untuned``, kept from
    the study's first run) against the current units made with the searched values, per task and
    method: means, sds, the difference of means and its Welch 95% interval. ``retrained`` is False
    (and the searched columns NaN) until all of a task x method's units are current with searched values."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    from .config import searched_values
    name = prof_name or profile()
    prof = load_profile(name)
    old, new = runs_frame(name, "runs_untuned"), runs_frame(name)
    cols = ["task", "method", "metric", "n_untuned", "untuned_mean", "untuned_sd", "n_searched", "searched_mean",
            "searched_sd", "diff", "ci_low", "ci_high", "retrained"]
    rows = []
    for (task, method), g_old in ([] if old.empty else old.groupby(["task", "method"], sort=False)):
        tuned = bool(searched_values(prof, task, method))
        g_new = new[(new.task == task) & (new.method == method) & (new.status == "done")] if tuned and not new.empty \
            else new.iloc[0:0]
        a, b = g_old["test_score"].to_numpy(float), g_new["test_score"].to_numpy(float)
        done = tuned and len(b) == len(a) and len(b) >= 2
        ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95) if done else None
        rows.append({"task": task, "method": method, "metric": g_old["metric"].iloc[0],
                     "n_untuned": len(a), "untuned_mean": a.mean(), "untuned_sd": a.std(ddof=1),
                     "n_searched": len(b), "searched_mean": b.mean() if done else np.nan,
                     "searched_sd": b.std(ddof=1) if done else np.nan,
                     "diff": b.mean() - a.mean() if done else np.nan,
                     "ci_low": ci.low if done else np.nan, "ci_high": ci.high if done else np.nan, "retrained": done})
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------- run time
def study_time(prof_name: str | None = None) -> dict:
    """The study's run time, stage by stage, from the times each result recorded when it was computed.

    A stage run in several sittings (or resumed) is the sum of its pieces; results that were skipped
    because they were current cost nothing again. Wall times taken on a shared machine are inflated;
    the per-stage ``loaded`` flag says where the 1-minute load average exceeded the cores in use.
    """
    import glob

    name = prof_name or profile()
    d = data_dir(name)
    stages = []

    def add(stage, wall, cpu=None, n=None, loaded=None, what=""):
        if wall:
            stages.append({"stage": stage, "wall_s": float(wall), "cpu_s": None if cpu is None else float(cpu),
                           "pieces": n, "loaded": loaded, "what": what})

    if (d / "sanity.json").exists():
        s = read_json(d / "sanity.json")
        add("setup", sum(v.get("seconds", 0) for v in s.values()), n=len(s),
            what="sanity check (data statistics and baselines take seconds and are not timed)")
    sp = d / "search" / "summary.json"
    if sp.exists():
        s = read_json(sp)
        add("search", s.get("wall_s"), s.get("cpu_s"), n=len(s.get("studies", [])),
            what="hyperparameter search, all trials")
    runs = [read_json(p) for p in sorted(glob.glob(str(d / "runs" / "*.json")))]
    if runs:
        cores = max((r.get("environment") or {}).get("cpu_count") or 1 for r in runs)
        loads = [((r.get("environment") or {}).get("load_avg") or [0])[0] for r in runs]
        add("train", sum(r["wall_time_s"] for r in runs), n=len(runs), loaded=any(x > cores + 0.5 for x in loads),
            what="training units, with their validation and test evaluations")
    if (d / "drift_timing.json").exists():
        s = read_json(d / "drift_timing.json")
        add("drift", s.get("total_wall_s"), s.get("total_cpu_s"), n=len(s.get("per_task", {})),
            what="hidden states, measures, weight space and perplexity")
    if (d / "deployment_meta.json").exists():
        m = read_json(d / "deployment_meta.json")
        lb = (m.get("loadavg_before") or [0])[0]
        add("deploy", m.get("wall_time_s"), n=1, loaded=lb > ((m.get("environment") or {}).get("cpu_count") or 1) + 0.5,
            what="serving benchmark on the trained models")
    total = sum(s["wall_s"] for s in stages)
    return {"profile": name, "stages": stages, "total_wall_s": total, "total_wall_h": total / 3600,
            "note": "sum of the wall times recorded by each stage's results; model conversion, installs "
                    "and rendering are not included"}


# ---------------------------------------------------------------------------- the preface's headline
def headline(prof_name: str | None = None):
    """Two small tables for the preface, computed from ``data/``: per task, the test metric and the
    drift of each method (with the test of FT vs LoRA drift); and the serving overheads.

    Returns ``(study, serving)`` DataFrames; either is empty when its stage has no results yet.
    """
    import pandas as pd

    from . import drift, serving
    from .tasks import TASKS
    from .tasks import task_name
    name = prof_name or profile()
    runs = runs_frame(name)
    summ = summary_frame(runs)
    res = drift.load_results(name)
    sd, tests = res["seeds"], res["tests"]
    rows = []
    for task in [t for t in TASKS if not summ.empty and t in set(summ["task"])]:
        row = {"task": task_name(task), "metric": summ[summ.task == task]["metric"].iloc[0]}
        st = set(runs[runs.task == task]["status"])
        if st != {"done"}:  # a study re-run in pieces: say which rows still come from superseded units
            row["units"] = "stale" if st == {"stale"} else "partly stale"
        for method, label in (("full", "full FT"), ("lora", "LoRA")):
            s = summ[(summ.task == task) & (summ.method == method)]
            row[f"{label} test"] = pm(s["mean"].iloc[0], s["sd"].iloc[0]) if len(s) else "n/a"
        for method, label in (("full", "full FT"), ("lora", "LoRA")):
            g = sd[(sd.task == task) & (sd.method == method) & (sd.pooling == "masked") & (sd.measure == "cka")] \
                if not sd.empty else sd
            row[f"{label} 1−CKA"] = sig(g["last"].mean(), 2) if len(g) else "n/a"
        t = tests[(tests.task == task) & (tests.pooling == "masked") & (tests.measure == "cka")
                  & (tests.summary == "last")] if not tests.empty else tests
        row["p (FT vs LoRA drift)"] = f"{t['perm_p'].iloc[0]:.2f} (Holm {t['perm_p_holm'].iloc[0]:.2f})" if len(t) else "n/a"
        rows.append(row)
    study = pd.DataFrame(rows)
    if "units" in study:
        study["units"] = study["units"].fillna("current")

    srv = []
    D = serving.load_results(data_dir(name))
    if D is not None and not D["ratios"].empty:
        rat, cfg = D["ratios"], D["meta"]["config"]
        bmin, bmax = min(cfg["batch_sizes"]), max(cfg["batch_sizes"])
        for num, den, what in (("lora", "merged", "unmerged adapter / merged model"),
                               ("merged", "full", "merged / fully fine-tuned model (the same computation: "
                                                  "the timing's resolution)")):
            for bs in (bmin, bmax):
                txt = serving.per_task_ratios(rat, num, den, bs)
                if txt != "n/a":
                    srv.append({"comparison": what, "batch size": str(bs), "ratio [95% CI]": txt})
        mb = rat[rat.stream == "multi"]["batch_size"]
        if len(mb):
            for num, what in (("multi", "one base, adapter switched per batch / a merged model per task"),
                              ("mixed", "one base, mixed-adapter batches / a merged model per task")):
                for bs in (int(mb.min()), int(mb.max())):
                    srv.append({"comparison": what, "batch size": str(bs),
                                "ratio [95% CI]": serving.ratio_text(rat, num, "routed-merged", "multi", bs)})
        lat = D["latency"]
        if not lat.empty:
            for bs in sorted(set(lat[lat["mode"] == "mixed"]["batch_size"]) & set(lat[lat["mode"] == "merged"]["batch_size"])):
                mx = lat[(lat["mode"] == "mixed") & (lat.batch_size == bs)]["throughput_rps"].mean()
                # the same number of requests of each task, each on its own merged model: harmonic mean
                mg = 1 / (1 / lat[(lat["mode"] == "merged") & (lat.batch_size == bs)]["throughput_rps"]).mean()
                srv.append({"comparison": "throughput: mixed-adapter batches / a merged model per task "
                                          "(harmonic mean over tasks)",
                            "batch size": str(int(bs)), "ratio [95% CI]": f"{mx / mg:.2f}× ({mx:.1f} / {mg:.1f} req/s)"})
        st = D["storage"]
        if not st.empty and {"artifact", "bytes"} <= set(st.columns):
            ad = st[st.artifact.str.contains("adapter")]["bytes"]
            fu = st[st.artifact.str.contains("full")]["bytes"]
            if len(ad) and len(fu):
                srv.append({"comparison": "on disk: adapter / fully fine-tuned model", "batch size": "",
                            "ratio [95% CI]": f"{ad.mean() / 1e6:.1f} MB / {fu.mean() / 1e6:.0f} MB"})
    return study, pd.DataFrame(srv)
