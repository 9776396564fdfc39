"""What the chapters show: figure functions (altair charts) and the display tables beside them.

Each function takes results or findings (numbers) and returns an altair chart or a DataFrame ready
for ``report.table``; formatting a number as text happens here, where it is displayed.
``report.show`` / ``report.table`` put them on the page.
"""
from __future__ import annotations


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
    d = L[(L.method != "base") & (L.pooling.isin(["masked", "last"]))].copy()
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
    band = base_chart.mark_area(opacity=0.15).encode(x=x, y=alt.Y("drift_lo:Q", scale=alt.Scale(type="log")),
                                                       y2="drift_hi:Q", color="method:N", detail="curve:N")
    line = base_chart.mark_line(strokeWidth=1.2).encode(
        x=x, y=y, color=alt.Color("method:N", title="method"), detail="curve:N",
        tooltip=["curve", "depth_name", alt.Tooltip("value:Q", title="similarity", format=".6f"),
                 alt.Tooltip("lo:Q", format=".6f"), alt.Tooltip("hi:Q", format=".6f")])
    null_line = alt.Chart(nl).transform_filter(sel).mark_line(strokeDash=[2, 2], color="grey").encode(x=x, y=y)
    charts = []
    for meas, title in (("cka", "linear CKA"), ("debiased_cka", "debiased CKA"), ("cosine", "mean cosine")):
        layers_ = [band.transform_filter(alt.datum.measure == meas), line.transform_filter(alt.datum.measure == meas)]
        if meas != "cosine":
            layers_.append(null_line.transform_filter(alt.datum.measure == meas))
        charts.append(alt.layer(*layers_).properties(width=210, height=220, title=title))
    return alt.hconcat(*charts).add_params(task_p, pool_p)


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
    charts = [ch.transform_filter(alt.datum.measure == m).properties(width=300, height=230, title=t)
              for m, t in (("cka", "linear CKA"), ("debiased_cka", "debiased CKA"))]
    return alt.hconcat(*charts).add_params(task_p)


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
    left = alt.layer(alt.Chart(m).mark_rule(opacity=0.6).encode(
        x="delta_nll_lo:Q", x2="delta_nll_hi:Q", y="test_score:Q", color="method:N"), left)
    right = alt.Chart(m).mark_point(size=70, filled=True).encode(
        x=alt.X("last:Q", title="drift at final norm (1 − CKA)"),
        y=alt.Y("test_score:Q", title="test metric", scale=alt.Scale(zero=False)), **enc)
    return alt.hconcat(left.properties(width=260, height=220), right.properties(width=260, height=220))


def drift_replication_display(rep):
    """The replication table as displayed: their quantity as mean ± sd, drifts to 3 significant figures."""
    from .report import pm, sig
    t = rep.copy()
    t["ours, their quantity"] = [pm(m, s) for m, s in zip(t["ours, their quantity"], t["ours, their quantity sd"])]
    t = t.drop(columns=["ours, their quantity sd"])
    for c in ("1 - CKA (masked)", "1 - debiased CKA (masked)", "1 - CKA, final norm", "1 - debiased CKA, final norm"):
        t[c] = t[c].map(sig)
    return t


def drift_seeds_display(st):
    """Per-seed drift as displayed: mean ± sd over seeds (3 and 2 significant figures)."""
    from .report import sig
    t = st[["task", "measure", "method", "seeds"]].copy()
    for c, label in (("last", "drift, last"), ("mean", "drift, mean over layers")):
        t[label] = [f"{sig(m)} ± {sig(s, 2)}" for m, s in zip(st[c], st[f"{c}_sd"])]
    return t


def drift_tests_display(tests):
    """The seed-level tests as displayed: short headers, drifts to 3 significant figures."""
    from .report import sig
    t = tests[["task", "measure", "summary", "mean_a", "mean_b", "diff", "hedges_g", "welch_p", "welch_p_holm",
               "perm_p", "perm_p_holm", "min_attainable_p"]].rename(columns={
        "mean_a": "FT", "mean_b": "LoRA", "hedges_g": "Hedges g", "welch_p": "Welch p", "welch_p_holm": "Welch p (Holm)",
        "perm_p": "perm. p", "perm_p_holm": "perm. p (Holm)", "min_attainable_p": "min p"})
    for c in ("FT", "LoRA", "diff"):
        t[c] = t[c].map(sig)
    return t


def drift_intruders_display(tot):
    from .report import sig
    return tot.assign(**{"median relative change": tot["median relative change"].map(sig)})
