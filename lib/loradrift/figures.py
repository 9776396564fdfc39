"""What the chapters show: figure functions (altair charts) and the display tables beside them.

Each function takes findings (numbers, from ``findings``, ``search_findings`` and the stages' own
loaders) and returns an altair chart or a DataFrame ready for ``report.table``; formatting a number
as text happens here, where it is displayed, and nowhere earlier. ``report.show`` / ``report.table``
put them on the page. Sections: general helpers; setup / training / search (and the preface);
drift; deployment.
"""
from __future__ import annotations

from .report import missing, pm, pval, sig, sig_column, signed, signed_sig, written

METHOD_LABELS = {"full": "full FT", "lora": "LoRA"}   # display names; any other method shows as its name


def method_label(method: str) -> str:
    """A method's name for tables and prose: 'full FT', 'LoRA', else the method's own name ('lora-r64')."""
    return METHOD_LABELS.get(method, method)


def as_written(x, digits: int = 4):
    """A setting as a table shows it with ``as_written``: floats to ``digits`` significant figures
    (small ones as m × 10ⁿ), other values as they are, '–' where there is none."""
    return "–" if missing(x) else written(x, digits) if isinstance(x, float) else x


# a training setting's display name (the profile's keys otherwise, '_' as spaces)
PARAM_LABELS = {"per_device_train_batch_size": "batch size", "num_train_epochs": "epochs", "lora_r": "LoRA r",
                "lora_alpha": "LoRA α", "lora_dropout": "LoRA dropout", "warmup_ratio": "warm-up ratio"}


def param_label(key: str) -> str:
    return PARAM_LABELS.get(key, key.replace("_", " "))


def ratio_ci(ratio, lo, hi) -> str:
    """'1.23× [1.20, 1.26]': a ratio with its 95% interval, or 'n/a'."""
    return "n/a" if missing(ratio) else f"{ratio:.2f}× [{lo:.2f}, {hi:.2f}]"


# ---- setup / training / search
def splits_table(stats):
    t = stats[["task", "split", "n", "positive_rate", "tokens_mean", "tokens_p95", "tokens_max", "truncated"]]
    return t.rename(columns={"positive_rate": "label 1", "tokens_mean": "mean tokens", "tokens_p95": "p95 tokens",
                             "tokens_max": "max tokens", "truncated": "share truncated"})


def baselines_table(base):
    """One row per task: accuracy and F1 of each baseline."""
    wide = base.pivot(index="task", columns="baseline", values=["accuracy", "f1"])
    wide.columns = [f"{b} {m}" for m, b in wide.columns]
    return wide.reset_index()


def sanity_chart(sanity: dict):
    """Training loss of the sanity check, per method (log scale)."""
    import altair as alt
    import pandas as pd
    df = pd.DataFrame([{"method": m, "step": i + 1, "loss": loss} for m, s in sanity.items()
                       for i, loss in enumerate(s["losses"])])
    return alt.Chart(df).mark_line(point=True).encode(
        x="step:Q", y=alt.Y("loss:Q", scale=alt.Scale(type="log"), title="training loss"),
        color="method:N", tooltip=["method", "step", "loss"]).properties(width=420, height=220)


def sanity_table(sanity: dict):
    """Each method's final training loss (2 significant figures), whether it passed, and its seconds."""
    import pandas as pd
    return pd.DataFrame([{"method": method_label(m), "final loss": sig(s["final_loss"], 2), "passed (< 0.1)": s["passed"],
                          "seconds": round(s["seconds"])} for m, s in sanity.items()])


def environment_table(env: dict):
    import pandas as pd
    rows = [("CPU", env["cpu"]), ("cores / torch threads", f'{env["cpu_count"]} / {env["torch_threads"]}'),
            ("GPU", env["gpu"] or "none"), ("Python", env["python"]), *env["versions"].items()]
    return pd.DataFrame(rows, columns=["item", "value"])


def runtime_table(study_time: dict):
    """The recorded run time per stage, in minutes (CPU minutes where a stage recorded them)."""
    import pandas as pd
    t = pd.DataFrame(study_time["stages"])
    t["minutes"] = t["wall_s"].map(lambda x: f"{x / 60:.1f}")  # one notation: a 10 s stage beside a 4 h one
    t["CPU minutes"] = t["cpu_s"].map(lambda x: "" if missing(x) else f"{x / 60:.1f}")
    t["shared"] = t["loaded"].map({True: "yes", False: "no"}).fillna("")
    return t[["stage", "minutes", "CPU minutes", "pieces", "shared", "what"]]


def settings_table(settings):
    """``findings.unit_settings`` as written in a profile (3 significant figures)."""
    import pandas as pd
    g = lambda x: written(x, 3)   # noqa: E731
    t = pd.DataFrame([{
        "task": r.task, "method": r.method, "values": "searched" if r.searched else "profile",
        "learning rate": g(r.learning_rate), "epochs": r.epochs, "batch": r.batch, "warm-up": g(r.warmup_ratio),
        "weight decay": g(r.weight_decay),
        "LoRA r / α / dropout": "–" if missing(r.lora_r) else f"{r.lora_r:g} / {r.lora_alpha:g} / {g(r.lora_dropout)}"}
        for r in settings.itertuples()])
    # one notation per column: all m × 10ⁿ where any value needs it
    for col, key in (("learning rate", "learning_rate"), ("warm-up", "warmup_ratio"), ("weight decay", "weight_decay")):
        t[col] = sig_column(settings[key], 3)
    return t


def test_chart(runs, majority: dict):
    """Test metric per seed (points) and mean (bar) per task and method; the majority baseline dashed."""
    import altair as alt

    from .tasks import task_name
    df = runs.assign(majority=runs["task"].map({t: v["score"] for t, v in majority.items()}),
                     task=runs["task"].map(task_name), method=runs["method"].map(method_label))
    bars = alt.Chart().mark_bar(fillOpacity=0.35).encode(
        x=alt.X("method:N", title=None), y=alt.Y("mean(test_score):Q", title="test metric"), color="method:N")
    pts = alt.Chart().mark_point(filled=True, size=60).encode(
        x="method:N", y="test_score:Q", color="method:N",
        tooltip=["id", "test_score", "test_accuracy", "test_f1", "status"])
    rule = alt.Chart().mark_rule(strokeDash=[4, 3], color="gray").encode(y="mean(majority):Q")
    return alt.layer(bars, pts, rule, data=df).properties(width=150, height=220) \
        .facet(column=alt.Column("task:N", title=None))


def test_table(scores):
    """``findings.test_scores``: each seed, mean ± sd, and the original's mean ± sd ('–' where it has none)."""
    import pandas as pd
    return pd.DataFrame([{
        "task": r.task, "method": r.method, "metric": r.metric, "seeds": r.seeds,
        "ours (each seed)": ", ".join(f"{v:.3f}" for v in r.scores), "ours mean ± sd": pm(r.mean, r.sd),
        "original mean ± sd": None if missing(r.original_mean) else pm(r.original_mean, r.original_sd)}
        for r in scores.itertuples()])


def curves_chart(train, val):
    """Training loss (left) and validation-slice metric (right) against steps, one line per seed."""
    import altair as alt
    enc = dict(x="step:Q", color="method:N", detail="seed:N", tooltip=["task", "method", "seed", "step"])

    def panel(df, mark, y):
        return mark(alt.Chart(df)).encode(y=y, **enc).properties(width=200, height=150) \
            .facet(row=alt.Row("task:N", title=None)).resolve_scale(x="independent")
    left = panel(train, lambda c: c.mark_line(strokeOpacity=0.7), alt.Y("loss:Q", title="training loss"))
    right = panel(val, lambda c: c.mark_line(point=True, strokeOpacity=0.7),
                  alt.Y("metric:Q", title="validation metric", scale=alt.Scale(zero=False)))
    return alt.hconcat(left, right)


def cost_table(summ):
    """Trainable parameters (and their share), training seconds, tokens per second, pad share."""
    c = summ[["task", "method", "trainable", "total", "train_s", "tokens_per_s", "pad_fraction"]].copy()
    c["trainable %"] = [f"{sig(100 * a / b, 2)}%" for a, b in zip(c["trainable"], c["total"])]
    c["train_s"], c["tokens_per_s"] = c["train_s"].round().astype(int), c["tokens_per_s"].round().astype(int)
    return c.drop(columns="total").rename(columns={"train_s": "train s", "tokens_per_s": "tokens/s",
                                                   "pad_fraction": "pad share"})


def search_space_table(space: dict):
    """The search space of each method: a range (log where sampled log-uniformly), a set or a value."""
    import pandas as pd
    def rng(spec):
        if spec["type"] == "categorical":
            return "{" + ", ".join(map(str, spec["choices"])) + "}"
        if spec["type"] == "fixed":
            return str(spec["value"])
        return f'[{written(spec["low"])}, {written(spec["high"])}]' + (" log" if spec.get("log") else "")
    params = sorted({k for m in space for k in space[m]})
    return pd.DataFrame([{"parameter": param_label(k), **{m: rng(space[m][k]) if k in space[m] else "–" for m in space}}
                         for k in params])


def search_history_chart(hist):
    """Each trial's validation-slice metric (by state) and the best so far, per task and method."""
    import altair as alt
    pts = alt.Chart().mark_point(filled=True, size=50).encode(
        x=alt.X("trial:Q", title="trial"), y=alt.Y("value:Q", title="validation metric", scale=alt.Scale(zero=False)),
        color=alt.Color("state:N"), tooltip=["task", "method", "trial", "state", "value"])
    line = alt.Chart().mark_line(interpolate="step-after", color="gray").encode(x="trial:Q", y="best so far:Q")
    return alt.layer(line, pts, data=hist).properties(width=180, height=130) \
        .facet(row=alt.Row("task:N", title=None), column=alt.Column("method:N", title=None))


def importances_table(imp):
    """Short headers that can wrap, so the table fits a PDF page."""
    return imp.rename(columns=param_label)


def chosen_table(chosen):
    """``search_findings.chosen`` as written (4 significant figures); show with ``as_written=True``."""
    shown = chosen.assign(**{c: chosen[c].map(as_written) for c in ("untuned", "chosen", "original")})
    return shown.assign(parameter=shown["parameter"].map(param_label)) if "parameter" in shown else shown


def gains_table(gains):
    return gains.assign(applied=gains["applied"].map({True: "yes", False: "no"})) \
        .rename(columns={"original": "original (accuracy)", "cpu_min": "CPU min"})


def tuned_table(tvu):
    """``search_findings.tuned_vs_untuned``: untuned and searched mean ± sd, the difference [95% CI]."""
    import pandas as pd
    return pd.DataFrame([{
        "task": r.task, "method": r.method, "metric": r.metric, "untuned": pm(r.untuned_mean, r.untuned_sd),
        "searched": pm(r.searched_mean, r.searched_sd) if r.retrained else "not re-trained yet",
        "difference [95% CI]": f"{signed(r.diff)} [{signed(r.ci_low)}, {signed(r.ci_high)}]" if r.retrained else "n/a"}
        for r in tvu.itertuples()])


def headline_table(study):
    """``findings.headline_study`` as the preface shows it: one row per task, its drift endpoint (pooling ·
    measure · depth), each method's test metric and drift there, and the permutation test; ``units`` only
    while some units are stale."""
    import pandas as pd

    from .study_figures import test_label
    from .tasks import task_name
    rows = []
    for task, g in study.groupby("task", sort=False):
        e = g.iloc[0]
        row = {"task": task_name(task), "metric": e["metric"], "units": e["units"],
               "drift endpoint": test_label(e.pooling, e.measure, e.depth)}
        row |= {f"{method_label(r.method)} test": "n/a" if missing(r.test_mean) else pm(r.test_mean, r.test_sd)
                for r in g.itertuples()}
        row |= {f"{method_label(r.method)} drift": r.drift for r in g.itertuples()}
        p, holm = e["perm_p"], e["perm_p_holm"]
        rows.append(row | {"p (FT vs LoRA drift)": "n/a" if missing(p) else
                           pval(p) + ("" if missing(holm) else f" (Holm {pval(holm)})")})
    t = pd.DataFrame(rows)
    for c in [c for c in t.columns if c.endswith(" drift")]:   # one notation per column
        t[c] = sig_column(t[c], 2)
    return t.drop(columns="units") if t.empty or (t["units"] == "current").all() else t


SERVING_COMPARISONS = {   # (kind, numerator, denominator) -> what the preface calls it
    ("latency", "lora", "merged"): "unmerged adapter / merged model",
    ("latency", "merged", "full"): "merged / fully fine-tuned model (the same computation: the timing's resolution)",
    ("latency", "merged-aa", "merged"): "A/A control: two copies of one merged model (the timing's resolution)",
    ("latency", "multi", "routed-lora"): "one base, adapter switched per batch / an unmerged adapter model per task",
    ("latency", "multi", "routed-merged"): "one base, adapter switched per batch / a merged model per task",
    ("latency", "mixed", "routed-merged"): "one base, mixed-adapter batches / a merged model per task",
    ("throughput", "mixed", "merged"): "throughput: mixed-adapter batches / a merged model per task "
                                       "(harmonic mean over tasks)",
    ("throughput", "mixed", "routed-merged"): "throughput: length-bucketed mixed-adapter batches / a merged "
                                              "model per task, on the same stream (paired)",
    ("storage", "adapter", "full"): "on disk: adapter / fully fine-tuned model",
}


def headline_serving_table(srv):
    """``findings.headline_serving`` as the preface shows it: one row per comparison and batch size,
    per-task ratios joined in one cell."""
    import pandas as pd

    from .tasks import task_name

    def value(r):
        if r.kind == "throughput":
            return f"{r.ratio:.2f}× ({r.num:.1f} / {r.den:.1f} req/s)"
        if r.kind == "storage":
            return f"{r.num / 2**20:.1f} MiB / {r.den / 2**20:.0f} MiB"
        return (f"{task_name(r.task)} " if isinstance(r.task, str) else "") + ratio_ci(r.ratio, r.ci_low, r.ci_high)
    rows = []
    for r in srv.itertuples():
        what, bs = SERVING_COMPARISONS[(r.kind, r.numerator, r.denominator)], "" if missing(r.batch_size) else str(int(r.batch_size))
        if rows and (rows[-1]["comparison"], rows[-1]["batch size"]) == (what, bs):
            rows[-1]["ratio [95% CI]"] += f"; {value(r)}"
        else:
            rows.append({"comparison": what, "batch size": bs, "ratio [95% CI]": value(r)})
    return pd.DataFrame(rows, columns=["comparison", "batch size", "ratio [95% CI]"])



# ---- speed and precision (setup chapter)
def bench_table(bench: dict):
    """Measured rates against the device's matrix-multiply ceiling, one row per task x method x precision."""
    import pandas as pd

    from .tasks import task_name
    rows = [{"task": task_name(r.get("task", bench.get("task"))),
             "work": "extraction" if r["method"] == "extract" else f"training, {method_label(r['method'])}",
             "precision": r["precision"], "tokens/s": round(r["tokens_per_s"]), "GFLOP/s": round(r["gflops"], 1),
             "ceiling GFLOP/s": round(bench["ceiling"][r["precision"]], 1),
             "of ceiling": f"{100 * r['fraction_of_ceiling']:.0f}%"} for r in bench["throughput"]]
    return pd.DataFrame(rows)


def step_breakdown_table(d):
    """Where a training step's time goes (``speed.step_breakdown``): shares per operator group, then the
    matrix products' own rate and the whole step's, both against the ceiling (short headers: the caption
    names them)."""
    import pandas as pd

    from .speed import GROUPS
    from .tasks import task_name
    pct = lambda x: "–" if missing(x) else f"{100 * x:.0f}%"  # noqa: E731
    short = {"matrix products": "matmuls", "attention": "attention", "optimizer": "optimizer",
             "casts and copies": "casts", "other": "other", "unattributed": "between ops"}
    rows = []
    for r in d.to_dict("records"):
        rows.append({"task": task_name(r["task"]), "method": method_label(r["method"]),
                     **{short[g]: pct(r[g]) for g in GROUPS},
                     "matmul rate": pct(r["matmul_of_ceiling"]), "step rate": pct(r["step_of_ceiling"])})
    return pd.DataFrame(rows)


def levers_table(rows):
    """The levers side by side: rate, against eager, the warm-up pass, the process's whole time."""
    import pandas as pd
    names = {"eager": "eager", "pinned": "threads pinned", "compiled": "torch.compile"}
    num = lambda r, k, f: "–" if missing(getattr(r, k, None)) else f.format(getattr(r, k))  # noqa: E731
    out = pd.DataFrame([{"lever": names.get(r.lever, r.lever), "tokens/s": num(r, "tokens_per_s", "{:.0f}"),
                         "vs eager": num(r, "vs_eager", "{:.2f}×"), "warm-up, s": num(r, "warmup_s", "{:.1f}"),
                         "process, s": num(r, "process_s", "{:.0f}"),
                         "note": r.error if isinstance(getattr(r, "error", None), str) else ""}
                        for r in rows.itertuples()])
    return out if out.note.astype(bool).any() else out.drop(columns="note")

def precision_table(check):
    """fp32 against bf16 units: mean ± sd per side, the difference with its Welch 95% interval."""
    import pandas as pd
    rows = [{"method": method_label(r.method), "quantity": r.quantity,
             "fp32": pm(r.mean_a, r.sd_a, 4), "bf16": pm(r.mean_b, r.sd_b, 4),
             "bf16 − fp32 [95% CI]": "n/a" if missing(r.ci_low) else
             f"{signed(r.diff, 4)} [{signed(r.ci_low, 4)}, {signed(r.ci_high, 4)}]",
             "same seed: largest difference": sig(r.max_paired_diff, 2), "seeds": f"{r.n_a} / {r.n_b}"}
            for r in check.itertuples()]
    return pd.DataFrame(rows)


def rates_table(rates):
    """Training tokens per second of whole-unit wall time, one row per unit."""
    return rates.assign(method=rates.method.map(method_label), tokens_per_wall_s=rates.tokens_per_wall_s.round(1),
                        overhead=[f"{100 * x:.0f}%" for x in rates.overhead], load=rates.load.round(2)).rename(
        columns={"tokens_per_wall_s": "tokens / wall s", "overhead": "outside steps", "load": "load (1 min)"})


# ---- deployment
def _batch_axis(df):
    import altair as alt
    return alt.X("batch_size:Q", title="batch size", scale=alt.Scale(type="log", base=2),
                 axis=alt.Axis(values=sorted(int(b) for b in df["batch_size"].unique()), format="d"))


def _panels(lat):
    """One panel per comparison and stream ('single: SST-2', 'mixed: all tasks')."""
    from .tasks import task_name
    lat = lat.copy()
    lat["panel"] = [f"{c}: {'all tasks' if s == 'interleaved' else task_name(s)}"
                    for c, s in zip(lat["comparison"], lat["stream"])]
    return lat


def latency_chart(lat, title: str | None = None):
    """Per-request latency (median; the bar reaches the 99th percentile) against batch size, one panel
    per comparison and stream."""
    import altair as alt

    from .serving import MODES
    lat = _panels(lat)
    base = alt.Chart(lat).encode(x=_batch_axis(lat), color=alt.Color("mode:N", sort=list(MODES)))
    line = base.mark_line(point=True).encode(
        y=alt.Y("latency_p50_ms:Q", title="latency per request (ms)",
                scale=alt.Scale(type="log", nice=False, domain=[0.8 * float(lat.latency_p50_ms.min()),
                                                               1.25 * float(lat.latency_p99_ms.max())])
                if len(lat) else alt.Scale(type="log")),
        tooltip=["mode", "panel", "batch_size", "n_requests", alt.Tooltip("latency_p50_ms:Q", format=".2f"),
                 alt.Tooltip("latency_p99_ms:Q", format=".2f"), alt.Tooltip("throughput_rps:Q", format=".1f"),
                 alt.Tooltip("pad_fraction:Q", format=".2f")])
    bar = base.mark_rule(strokeOpacity=0.5).encode(y="latency_p50_ms:Q", y2="latency_p99_ms:Q")
    # two panels a row: four side by side were wider than a page
    ch = alt.layer(bar, line).properties(width=200, height=150).facet(
        facet=alt.Facet("panel:N", title=None), columns=2)
    return ch.properties(title=title) if title else ch


def throughput_chart(lat):
    """Throughput (requests per second of service time) against batch size, one panel per comparison."""
    import altair as alt

    from .serving import MODES
    lat = _panels(lat)
    return alt.Chart(lat).mark_line(point=True).encode(
        x=_batch_axis(lat),
        y=alt.Y("throughput_rps:Q", title="requests / s", scale=alt.Scale(type="log")),
        color=alt.Color("mode:N", sort=list(MODES)),
        tooltip=["mode", "panel", "batch_size", alt.Tooltip("throughput_rps:Q", format=".1f"),
                 alt.Tooltip("pad_fraction:Q", format=".2f")]
    ).properties(width=200, height=150).facet(facet=alt.Facet("panel:N", title=None), columns=2)


RATIO_PAIRS = ["merged-aa / merged", "merged / full", "lora / merged", "lora / full", "multi / routed-lora",
               "mixed / routed-lora", "mixed / routed-merged", "batched / mixed", "mixed-fifo / mixed"]


def ratio_chart(rat):
    """Paired time ratios between modes with their 95% intervals and the cost model's prediction (a
    cross), one panel per pair (``RATIO_PAIRS``)."""
    import altair as alt
    r = rat.copy()
    r["pair"] = r["numerator"] + " / " + r["denominator"]
    r["stream"] = r["stream"].replace({"interleaved": "all tasks"})
    r = r[r["pair"].isin(RATIO_PAIRS)]
    base = alt.Chart(r).encode(
        y=alt.Y("stream:N", title=None), color=alt.Color("batch_size:O", title="batch size"),
        yOffset="batch_size:O")
    # a linear axis over the data (and 1): ratios of a few percent vanish on a "nice" log axis of 0.1-10
    lo = min(r.ci_low.min(), r.predicted.min(), 1.0) if len(r) else 0.9
    hi = max(r.ci_high.max(), r.predicted.max(), 1.0) if len(r) else 1.1
    pad = 0.05 * (hi - lo) or 0.01
    x = alt.X("ratio:Q", title="time ratio (paired)", scale=alt.Scale(domain=[lo - pad, hi + pad], zero=False, nice=False))
    pts = base.mark_point(filled=True).encode(
        x=x, tooltip=["pair", "stream", "batch_size", alt.Tooltip("ratio:Q", format=".3f"),
                      alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f"), "n_pairs",
                      alt.Tooltip("predicted:Q", format=".3f")])
    pred = base.mark_point(shape="cross", opacity=0.6).encode(x="predicted:Q")
    bars = base.mark_rule().encode(x="ci_low:Q", x2="ci_high:Q")
    one = alt.Chart().mark_rule(strokeDash=[4, 3], color="gray").encode(x=alt.datum(1.0))
    return alt.layer(one, bars, pred, pts, data=r).properties(width=260, height=80).facet(
        facet=alt.Facet("pair:N", title=None, sort=RATIO_PAIRS), columns=2).resolve_scale(y="independent")


# ---- drift
DRIFT_FLOOR = 1e-7  # drifts below this (e.g. LoRA's untouched embedding layer, exactly 0) are drawn at it


def _task_param(name: str, tasks: list[str]):
    import altair as alt
    return alt.param(name=name, value=tasks[0], bind=alt.binding_select(options=tasks, name="task "))


def drift_layers(res: dict):
    """Drift from the base at every depth, one line per model with its bootstrap band, the null's
    drift dotted; task and pooling chosen in menus; one panel per measure."""
    import altair as alt
    import pandas as pd
    L, N = res["layers"], res["null"]
    shown = ("cka", "debiased_cka", "cosine")   # the panels below (the other measures are in the tables)
    # the compared methods only (a sweep's variants have their own views), and the panels' measures
    d = L[L.method.isin(res["compare"]) & (L.pooling.isin(["masked", "last"])) & L.measure.isin(shown)].copy()
    d["curve"] = d.method + " s" + d.seed.astype(int).astype(str)
    d["drift"], d["drift_lo"], d["drift_hi"] = [(1 - d[c]).clip(lower=DRIFT_FLOOR) for c in ("value", "hi", "lo")]
    d = d[["task", "pooling", "measure", "depth", "depth_name", "method", "curve", "value", "lo", "hi",
           "drift", "drift_lo", "drift_hi"]]
    nl = N.groupby(["task", "measure", "depth"], as_index=False).null_q95.max()
    nl["drift"] = (1 - nl.null_q95).clip(lower=DRIFT_FLOOR)
    nl = pd.concat([nl.assign(pooling="masked"), nl.assign(pooling="last")])  # drawn for masked pooling; shown on both
    task_p = _task_param("task", res["tasks"])
    pool_p = alt.param(name="pooling", value="masked", bind=alt.binding_select(options=["masked", "last"], name="pooling "))
    sel = (alt.datum.task == task_p) & (alt.datum.pooling == pool_p)
    x = alt.X("depth:Q", title="depth", axis=alt.Axis(tickMinStep=1), scale=alt.Scale(nice=False))
    y = alt.Y("drift:Q", title="1 − similarity", scale=alt.Scale(type="log"))
    base_chart = alt.Chart(d).transform_filter(sel)
    # fillOpacity, not opacity: a mark's opacity would fade the shared legend's symbols too
    band = base_chart.mark_area(fillOpacity=0.15).encode(x=x, y=alt.Y("drift_lo:Q", scale=alt.Scale(type="log")),
                                                         y2="drift_hi:Q", color="method:N", detail="curve:N")
    line = base_chart.mark_line(strokeWidth=1.2).encode(
        x=x, y=y, color=alt.Color("method:N", title="method", legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=3)),
        detail="curve:N",
        tooltip=["curve", "depth_name", alt.Tooltip("value:Q", title="similarity", format=".6f"),
                 alt.Tooltip("lo:Q", format=".6f"), alt.Tooltip("hi:Q", format=".6f")])
    null_line = alt.Chart(nl).transform_filter(sel).mark_line(strokeDash=[2, 2], color="grey").encode(x=x, y=y)
    charts = []
    for meas, title in zip(shown, ("linear CKA", "debiased CKA", "mean cosine")):
        layers_ = [band.transform_filter(alt.datum.measure == meas), line.transform_filter(alt.datum.measure == meas)]
        if meas != "cosine":
            layers_.append(null_line.transform_filter(alt.datum.measure == meas))
        charts.append(alt.layer(*layers_).properties(width=150, height=200, title=title))
    # narrow panels and the legend below them: the three fit a page's text column
    return alt.hconcat(*charts).add_params(task_p, pool_p).configure_legend(orient="bottom")


def drift_controls(res: dict):
    """Negative control: base vs each method, two seeds of one method, two methods, and the null (log scale)."""
    import altair as alt
    import pandas as pd
    L, P, N = res["layers"], res["pairs"], res["null"]
    p = P.groupby(["task", "kind", "measure", "depth"], as_index=False).value.mean()
    p["curve"] = p.kind.map({"within_full": "FT seed vs FT seed", "within_lora": "LoRA seed vs LoRA seed",
                             "across": "FT vs LoRA"})
    b = (L[(L.method != "base") & (L.pooling == "masked") & L.measure.isin(["cka", "debiased_cka"])]
         .groupby(["task", "method", "measure", "depth"], as_index=False).value.mean())
    b["curve"] = b.method.map({"full": "base vs FT", "lora": "base vs LoRA"})
    nl = (N.groupby(["task", "measure", "depth"], as_index=False).null_q95.max()
          .rename(columns={"null_q95": "value"}).assign(curve="unrelated (null q95)"))
    cols = ["task", "measure", "depth", "value", "curve"]
    allc = pd.concat([p[cols], b[cols], nl[cols]])
    allc["drift"] = (1 - allc.value).clip(lower=DRIFT_FLOOR)
    allc["style"] = allc.curve.map(lambda c: "base" if c.startswith("base") else ("null" if c.startswith("unrel") else "pair"))
    task_p = _task_param("task2", res["tasks"])
    ch = alt.Chart(allc).transform_filter(alt.datum.task == task_p).mark_line().encode(
        x=alt.X("depth:Q", axis=alt.Axis(tickMinStep=1), scale=alt.Scale(nice=False)),
        y=alt.Y("drift:Q", title="1 − similarity", scale=alt.Scale(type="log")),
        color=alt.Color("curve:N", title=None), strokeDash=alt.StrokeDash("style:N", legend=None, scale=alt.Scale(
            domain=["base", "pair", "null"], range=[[1, 0], [5, 3], [1, 2]])),
        tooltip=["curve", "depth", alt.Tooltip("value:Q", title="similarity", format=".6f")])
    charts = [ch.transform_filter(alt.datum.measure == m).properties(width=270, height=210, title=t)
              for m, t in (("cka", "linear CKA"), ("debiased_cka", "debiased CKA"))]
    return alt.hconcat(*charts).add_params(task_p).configure_legend(orient="bottom", columns=3)


def drift_intruders(res: dict, threshold: float):
    """Per layer and adapted matrix, 1 − the worst best-match cosine of the top-k singular vectors
    (log scale, mean over seeds), with the intruder threshold dashed."""
    import altair as alt
    import pandas as pd
    I = res["intruders"]
    g = I.assign(gap=(1 - I.min_max_sim).clip(lower=1e-9))
    g = g.groupby(["task", "method", "matrix", "layer"], as_index=False).gap.mean()
    g["series"] = g.method + " " + g.matrix
    task_p = _task_param("task3", res["tasks"])
    lines = alt.Chart(g).transform_filter(alt.datum.task == task_p).mark_line(point=True).encode(
        x=alt.X("layer:Q", scale=alt.Scale(nice=False), axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("gap:Q", title="1 − best-match cosine (worst of top-k)", scale=alt.Scale(type="log")),
        color=alt.Color("method:N"), strokeDash=alt.StrokeDash("matrix:N"),
        tooltip=["series", "layer", alt.Tooltip("gap:Q", format=".2e")])
    rule = alt.Chart(pd.DataFrame({"gap": [1 - threshold]})).mark_rule(strokeDash=[4, 4], color="grey").encode(y="gap:Q")
    return alt.layer(lines, rule).add_params(task_p).properties(width=560, height=220)


def drift_tradeoff(res: dict, forgetting):
    """Each fine-tuned model: test metric against forgetting (with its interval) and against drift at the final norm."""
    import altair as alt
    S = res["seeds"]
    m = forgetting.merge(S[(S.pooling == "masked") & (S.measure == "cka")][["model", "last", "test_score"]], on="model")
    enc = dict(color=alt.Color("method:N"), shape=alt.Shape("task:N"),
               tooltip=["model", alt.Tooltip("test_score:Q", format=".3f"), alt.Tooltip("delta_nll:Q", format=".4f"),
                        alt.Tooltip("last:Q", format=".4f")])
    left = alt.Chart(m).mark_point(size=70, filled=True).encode(
        x=alt.X("delta_nll:Q", title="forgetting: Δ WikiText loss (nats/token)"),
        y=alt.Y("test_score:Q", title="test metric", scale=alt.Scale(zero=False)), **enc)
    left = alt.layer(alt.Chart(m).mark_rule(strokeOpacity=0.6).encode(   # strokeOpacity: the legend stays solid
        x="delta_nll_lo:Q", x2="delta_nll_hi:Q", y="test_score:Q", color="method:N"), left)
    right = alt.Chart(m).mark_point(size=70, filled=True).encode(
        x=alt.X("last:Q", title="drift at final norm (1 − CKA)"),
        y=alt.Y("test_score:Q", title="test metric", scale=alt.Scale(zero=False)), **enc)
    return alt.hconcat(left.properties(width=260, height=220), right.properties(width=260, height=220))


def drift_replication_display(rep):
    """The replication table as displayed: their quantity as mean ± sd, drifts to 3 significant figures."""
    t = rep.copy()
    t["ours, their quantity"] = [pm(m, s) for m, s in zip(t["ours, their quantity"], t["ours, their quantity sd"])]
    t = t.drop(columns=["ours, their quantity sd"])
    for c in ("1 - CKA (masked)", "1 - debiased CKA (masked)", "1 - CKA, final norm", "1 - debiased CKA, final norm"):
        t[c] = sig_column(t[c])   # one notation per column
    return t.rename(columns=lambda c: c.replace("1 - ", "1 − "))


def drift_seeds_display(st):
    """Per-seed drift as displayed: mean ± sd over seeds (3 and 2 significant figures), one notation per column."""
    from .study_figures import MEASURE_LABELS
    from .tasks import task_name
    t = st[["task", "measure", "method", "seeds"]].copy()
    t["task"], t["measure"] = t.task.map(task_name), t.measure.map(lambda m: MEASURE_LABELS.get(m, m))
    t["method"], t["seeds"] = t.method.map(method_label), t.seeds.astype(int).astype(str)
    for c, label in (("last", "drift, last"), ("mean", "drift, mean over layers")):
        means, sds = list(st[c]), list(st[f"{c}_sd"])
        both = sig_column(means + sds)   # the sd in the notation its mean needs
        sd2 = sig_column(means + sds, 2)
        t[label] = [f"{m} ± {s}" for m, s in zip(both[:len(means)], sd2[len(means):])]
    return t


def drift_tests_display(tests, dominated=lambda task, pooling, depth: None):
    """The exploratory seed-level tests as displayed: one row per task, pooling, measure and depth, drifts
    to 3 significant figures, FT − LoRA with Welch's interval, Benjamini-Hochberg q-values, and whether
    the input is dominated by one coordinate (``dominated(task, pooling, depth)``; None: not assessed)."""
    import pandas as pd
    from .study_figures import test_label
    from .tasks import task_name
    rows = []
    for t in tests.itertuples():
        lo, hi = getattr(t, "diff_low", None), getattr(t, "diff_high", None)
        dom = dominated(t.task, t.pooling, t.depth if t.depth == "final_norm" else None)
        rows.append({"task": task_name(t.task),
                     "test": test_label(t.pooling, t.measure, t.depth),
                     "FT": t.mean_a, "LoRA": t.mean_b,
                     "FT − LoRA [95% CI]": f"{signed_sig(t.diff)} " + ("" if missing(lo) else
                                                                       f"[{signed_sig(lo)}, {signed_sig(hi)}]"),
                     "g": f"{t.hedges_g:.2f}", "Welch q": pval(getattr(t, "welch_p_bh", None)),
                     "perm. q": pval(getattr(t, "perm_p_bh", None)),
                     "dominated": "–" if dom is None else ("yes" if dom else "no")})
    out = pd.DataFrame(rows)
    for c in ("FT", "LoRA"):
        out[c] = sig_column(out[c])   # one notation per column
    return out


def drift_intruders_display(tot):
    return tot.assign(**{"median relative change": sig_column(tot["median relative change"])})


# ---- the original study (appendix)
def original_settings_table(optima: dict, applied: dict):
    """The original's tuned values (analysis/*_optimal.yaml) beside what its training applied: 'yaml → used'."""
    import pandas as pd
    arrow = lambda tuned, used: f"{written(tuned, 2)} → {written(used, 2)}"  # noqa: E731
    rows = []
    for (task, method), v in optima.items():
        lora = method == "lora"
        rows.append({"task": task, "method": method_label(method), "learning rate": v["learning_rate"],
                     "epochs": v["num_train_epochs"], "batch (effective)":
                         f'{v["per_device_train_batch_size"]} ({v["per_device_train_batch_size"] * applied["grad_accumulation"]})',
                     "warm-up": arrow(v["warmup_ratio"], applied["lora_warmup_ratio"]) if lora else written(v["warmup_ratio"], 2),
                     "weight decay": arrow(v["weight_decay"], applied["weight_decay"]),
                     "LoRA α": v.get("lora_alpha", "–"),
                     "LoRA dropout": arrow(v["lora_dropout"], applied["lora_dropout"]) if lora else "–"})
    t = pd.DataFrame(rows)
    return t.assign(**{"learning rate": sig_column(t["learning rate"])})   # one notation for the column


def original_performance_table(performance: dict):
    """Each seed's score and mean ± sd (ddof=1) per task and method, on the split that also chose the epoch."""
    import statistics

    import pandas as pd
    rows = []
    for task, by in performance.items():
        metric = "f1" if task == "mrpc" else "accuracy"
        for method, ms in by.items():
            v = ms[metric]
            rows.append({"task": task, "method": method_label(method), "metric": metric,
                         "seeds 42, 1337, 2024": ", ".join(f"{x:.3f}" for x in v),
                         "mean ± sd": pm(statistics.mean(v), statistics.stdev(v))})
    return pd.DataFrame(rows)


def original_drift_table(red):
    """``original.drift_reduction``: mean drift of each method, the reduction per seed and mean ± sd, its p."""
    return red.assign(**{
        "full FT drift": red["full"].map(lambda x: f"{x:.3f}"), "LoRA drift": red["lora"].map(lambda x: f"{x:.3f}"),
        "reduction per seed (%)": red["per_seed"].map(lambda v: ", ".join(signed(x, 2, plus=False) for x in v)),
        "reduction (%)": [f"{m:.2f} ± {s:.2f}" for m, s in zip(red["mean"], red["sd"])],
        "one-sided p": sig_column(red["p"], 2)})[
        ["task", "full FT drift", "LoRA drift", "reduction per seed (%)", "reduction (%)", "one-sided p"]]


def original_serving_table(rows: list[dict]):
    """The original's serving headline per configuration group: mean latency (sd over configurations), derived req/s."""
    import pandas as pd
    return pd.DataFrame([{"configuration": r["original_name"], "as": r["mode"], "configurations": r["configs"],
                          "latency ms": r["latency_ms"] if missing(r["latency_sd"]) else pm(r["latency_ms"], r["latency_sd"], 2),
                          "req/s (1000 / latency)": f'{r["throughput_rps"]:.2f}'} for r in rows])

