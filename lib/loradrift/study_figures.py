"""What the Training chapter shows of the study's design (`loradrift.design`): does each task learn,
the learning curve, the learning-rate and rank sweeps, and the original's claims 5 and 6. Display
tables and altair charts; numbers become text here and nowhere earlier (see `figures`)."""
from __future__ import annotations

from .figures import method_label
from .report import missing, pval, sig
from .tasks import task_name

VERDICT_5 = {"negative": "LoRA better (the original's direction)", "positive": "full FT better (against the original)",
             "unresolved": "no difference resolved", "undecided": "too few seeds"}


def _ci(mean, lo, hi, digits: int = 3) -> str:
    """'0.852 [0.845, 0.859]', the mean alone when there is no interval, '–' when there is no mean."""
    if missing(mean):
        return "–"
    return f"{mean:.{digits}f}" if missing(lo) else f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


interval = _ci   # the public name the chapters use


def _signed(mean, lo, hi, digits: int = 3) -> str:
    return "–" if missing(mean) else f"{mean:+.{digits}f}" + ("" if missing(lo) else f" [{lo:+.{digits}f}, {hi:+.{digits}f}]")


def _yes(b) -> str:
    return "yes" if b else "no"


def verdicts_table(v):
    """One row per task x method: does it learn? (`design.learning_verdicts`)."""
    import pandas as pd
    return pd.DataFrame([{"task": task_name(r.task), "method": method_label(r.method), "metric": r.metric,
                          "seeds": r.seeds, "test metric [95% CI]": _ci(r.mean, r.low, r.high),
                          "best trivial baseline": f"{r.baseline:.3f} ({r.baseline_name})",
                          "learned": _yes(r.learned) if r.seeds >= 2 else "too few seeds",
                          "in the drift claims": _yes(r.in_claims)}
                         for r in v.itertuples()])


def learning_curve_chart(lc, baselines):
    """Validation metric (solid) and test metric (dashed) against training-set size, per task; the
    grey rule is the task's best trivial baseline on the test split."""
    import altair as alt
    from .design import best_baseline
    from .tasks import task_metric
    df = lc.assign(task=lc.task.map(task_name), method=lc.method.map(method_label)).melt(
        id_vars=["task", "method", "train_size"], value_vars=["val_score", "test_score"], var_name="split",
        value_name="score")
    df["split"] = df.split.map({"val_score": "validation", "test_score": "test"})
    # one frame for every layer, so that each task's panel holds its own rows (layers with data of their own
    # are drawn whole in every panel of a facet)
    base = {task_name(t): best_baseline(baselines, t, task_metric(t))[0] for t in lc.task.unique()}
    df["baseline"] = df.task.map(base)
    lines = alt.Chart().mark_line(point=True).encode(
        x=alt.X("train_size:Q", scale=alt.Scale(type="log"), title="training examples"),
        y=alt.Y("score:Q", scale=alt.Scale(zero=False), title="metric (F1 for MRPC, else accuracy)"),
        color=alt.Color("method:N", title="method"),
        strokeDash=alt.StrokeDash("split:N", title="split", legend=alt.Legend(symbolType="stroke", symbolStrokeColor="gray"),
                                  scale=alt.Scale(domain=["validation", "test"], range=[[1, 0], [5, 3]])),
        tooltip=["task", "method", "split", "train_size", alt.Tooltip("score:Q", format=".3f")])
    rule = alt.Chart().mark_rule(color="grey").encode(y="min(baseline):Q")
    return alt.layer(lines, rule, data=df).properties(width=190, height=170).facet(
        column=alt.Column("task:N", title=None))


def _largest_size_sentence(lc, task: str, baseline: float) -> str:
    """For a task outside the drift claims: each method's test metric at the curve's largest size against the
    task's best trivial baseline (one seed: a hint at what that size would give, not a verdict)."""
    top = lc[(lc.task == task) & (lc.train_size == lc[lc.task == task].train_size.max())].sort_values("method")
    if top.empty:
        return ""
    above = [m for m, v in zip(top.method, top.test_score) if v > baseline]
    scores = " and ".join(f"{v:.3f} ({method_label(m)}, {v - baseline:+.3f})" for m, v in zip(top.method, top.test_score))
    who = ("both are above it" if len(above) == len(top) > 1 else "it is above it" if len(above) == len(top) == 1
           else "none is above it" if not above else f"only {method_label(above[0])} is above it")
    units = "unit" if len(top) == 1 else "units"
    return (f" At {int(top.train_size.iloc[0]):,} training examples {task_name(task)}'s seed-0 {units} scored {scores} on "
            f"the test split against the baseline's {baseline:.3f}: {who}, by one seed and without an interval, so "
            "the study's own seeds at that size would be needed to put it in the drift claims.")


def learning_curve_scope(prof: dict) -> str:
    """A sentence when the learning curve leaves out some of the compared methods: which ones it draws ("" when it
    draws them all)."""
    from .config import study_groups
    from .design import compared_methods
    drawn = [m for g in study_groups(prof).values() if g["train_sizes"] for m in g["methods"]]
    left = [m for m in compared_methods(prof) if m not in drawn]
    if not drawn or not left:
        return ""
    return (f"The curve is drawn for {' and '.join(map(method_label, drawn))} only, not for "
            f"{' and '.join(map(method_label, left))}: it is there to choose training sizes, which one method does "
            "within the study's time budget (the profile's `study:` section says why).")


def learning_curve_sentences(lc, prof: dict, controls: dict | None = None) -> str:
    """Per task, what the learning curve says: each method's validation metric at the smallest and largest
    training size, and whether the last step up in size gained more than twice the binomial standard error
    of the validation slice at that score (``still rising``), lost more (``falling``) or neither (``flat
    within noise``). ``controls`` ({task: best trivial baseline}) adds, for each task outside the drift
    claims, its test metric at the largest size against that baseline."""
    import math
    from .tasks import task_metric
    out = []
    for task in [t for t in prof["tasks"] if t in set(lc.task)]:
        n_val = (prof["data"].get("tasks") or {}).get(task, {}).get("validation_size")
        parts = []
        for m, r in lc[lc.task == task].groupby("method"):
            r = r.sort_values("train_size")
            sizes, val = r.train_size.to_list(), r.val_score.to_list()
            if len(sizes) < 2:
                parts.append(f"{method_label(m)} has one size so far ({sizes[0]:,} examples: {val[0]:.3f})")
                continue
            gain = val[-1] - val[-2]
            two_se = 2 * math.sqrt(max(val[-1] * (1 - val[-1]), 1e-12) / n_val) if n_val else math.nan
            shape = ("its noise is unknown" if math.isnan(two_se) else "still rising" if gain > two_se
                     else "falling" if gain < -two_se else "flat within noise")
            noise = "" if math.isnan(two_se) else f" against twice the slice's binomial standard error, {two_se:.3f}"
            parts.append(f"{method_label(m)} went from {val[0]:.3f} at {sizes[0]:,} examples to {val[-1]:.3f} at "
                         f"{sizes[-1]:,}, and the last step ({sizes[-2]:,} to {sizes[-1]:,}) changed it by {gain:+.3f}"
                         f"{noise}: {shape}")
        metric = "F1" if task_metric(task) == "f1" else "accuracy"
        slice_ = f" ({n_val:,}-example validation slice)" if n_val else ""
        out.append(f"On {task_name(task)}, validation {metric}{slice_}: " + "; ".join(parts) + "."
                   + (_largest_size_sentence(lc, task, controls[task]) if task in (controls or {}) else ""))
    return " ".join(out)


def sweep_table(runs, prof: dict, task: str, methods: list[str]):
    """The sweep's units on ``task``: per method, its kind, learning rate, LoRA rank, seeds, test metric
    mean ± sd and the largest share of one class among its models' predictions."""
    import pandas as pd
    rows = []
    for m in methods:
        r = runs[(runs.task == task) & (runs.method == m)]
        if not len(r):
            continue
        s = prof["methods"][m]
        rows.append({"method": method_label(m), "kind": s["kind"], "learning rate": f"{s['learning_rate']:.0e}",
                     "LoRA r": s.get("lora_r", "–"), "seeds": len(r),
                     "test metric": f"{r.test_score.mean():.3f} ± {r.test_score.std(ddof=1):.3f}" if len(r) > 1
                     else f"{r.test_score.mean():.3f}",
                     "one-class share (max)": sig(r.top_class_share.max(), 2)})
    return pd.DataFrame(rows)


def claim5_table(c5):
    """The original's claim 5 per task: FT - LoRA, ours with its Welch interval, and the original's."""
    import pandas as pd
    return pd.DataFrame([{"task": task_name(r.task), "metric": r.metric, "seeds (FT / LoRA)": f"{r.seeds_full} / {r.seeds_lora}",
                          "FT − LoRA, ours [95% CI]": _signed(r.diff, r.low, r.high),
                          "Welch p": sig(r.p, 2), "FT − LoRA, original": _signed(r.original_diff, None, None),
                          "verdict": VERDICT_5[r.direction]} for r in c5.itertuples()])


def claim6_table(c6):
    """The original's claim 6 per task x method: one-class models, and the original-format difference."""
    import pandas as pd
    return pd.DataFrame([{"task": task_name(r.task), "method": method_label(r.method), "seeds": r.seeds,
                          "one-class models": r.collapsed,
                          "one-class, original format": r.collapsed_original_format if r.format_seeds else "–",
                          "original format − ours [95% CI]": _signed(r.format_diff, r.format_low, r.format_high)
                          if r.format_seeds else "– (single sentences: same format)"} for r in c6.itertuples()])


def groups_table(groups):
    """The study's groups of units (`design.groups_frame`)."""
    import pandas as pd
    seeds = lambda s: f"{len(s)} ({s[0]}–{s[-1]})" if len(s) > 1 else f"1 (seed {s[0]})"  # noqa: E731
    return pd.DataFrame([{"group": r.group, "tasks": ", ".join(task_name(t) for t in r.tasks),
                          "methods": ", ".join(method_label(m) for m in r.methods),
                          "training examples": ", ".join(map(str, r.train_sizes)) or "the task's",
                          "seeds": seeds(r.seeds), "units (new)": f"{r.units} ({r.new_units})",
                          "drift measured": _yes(r.drift)} for r in groups.itertuples()])


def frontier_chart(points, methods: list[str], fr: dict, y: str = "drift", title: str = "drift from the base"):
    """Drift (or forgetting) against test accuracy over the learning-rate sweep: one point per unit,
    coloured by kind and sized by learning rate; the lines are each kind's fit inside the accuracy range
    both reach, and the rule marks the accuracy where they are compared (`design.matched_drift`)."""
    import altair as alt

    from .design import _fit_at
    import numpy as np
    import pandas as pd
    pts = points[points.method.isin(methods)].dropna(subset=[y]).assign(
        method_kind=lambda d: d.kind.map(method_label), lr=lambda d: d.learning_rate.map(lambda v: f"{v:.0e}"))
    enc = dict(x=alt.X("accuracy:Q", scale=alt.Scale(zero=False), title="test accuracy"),
               y=alt.Y(f"{y}:Q", title=title), color=alt.Color("method_kind:N", title="method"))
    dots = alt.Chart(pts).mark_point(filled=True, opacity=0.8, size=60).encode(
        **enc, shape=alt.Shape("lr:N", title="learning rate"),
        tooltip=["id", "lr", alt.Tooltip("accuracy:Q", format=".3f"), alt.Tooltip(f"{y}:Q", format=".4f")])
    layers = [dots]
    lo, hi = fr.get("overlap", (np.nan, np.nan))
    if fr.get("decided"):
        rows = []
        for kind in ("full", "lora"):
            d = pts[(pts.kind == kind) & (pts.accuracy >= lo) & (pts.accuracy <= hi)]
            rows += [{"method_kind": method_label(kind), "accuracy": a, y: _fit_at(d.accuracy, d[y], a)} for a in (lo, hi)]
        layers.append(alt.Chart(pd.DataFrame(rows)).mark_line().encode(**enc))
        layers.append(alt.Chart(pd.DataFrame({"accuracy": [fr["at"]]})).mark_rule(strokeDash=[4, 4], color="grey")
                      .encode(x="accuracy:Q"))
    return alt.layer(*layers).properties(width=380, height=260)


# ---- the Drift chapter's lead: the primary tests, the diagnostic, the original's claims 1-6
POOLING_LABELS = {"masked": "sink-free mean", "masked_all": "mean, sinks included", "last": "last token",
                  "original": "the original's padded mean"}
MEASURE_LABELS = {"cka": "linear CKA", "debiased_cka": "debiased CKA", "standardized_cka": "CKA on z-scores",
                  "standardized_debiased_cka": "debiased CKA on z-scores", "procrustes": "Procrustes distance",
                  "cosine": "mean cosine", "original_study_similarity": "the original's formula"}
DEPTH_LABELS = {"final_norm": "final norm", "last_decoder": "last decoder layer", "decoder_mean": "mean over decoder layers"}


def test_label(pooling: str, measure: str, depth: str) -> str:
    """'last token · debiased CKA · final norm'."""
    return " · ".join((POOLING_LABELS.get(pooling, pooling), MEASURE_LABELS.get(measure, measure),
                       DEPTH_LABELS.get(depth, depth)))


def endpoint_label(e) -> str:
    """'SST-2 · last token · debiased CKA · final norm'."""
    return f"{task_name(e['task'])} · {test_label(e['pooling'], e['measure'], e['depth'])}"


def primary_table(tests, dominated=lambda task, pooling, depth: None):
    """The pre-registered endpoints' tests (`drift.findings.primary_tests`): drift per method (mean ± sd
    over seeds), FT − LoRA with Welch's 95% interval, Hedges' g, Holm-adjusted p-values, and whether the
    endpoint's input is dominated by one coordinate (``dominated(task, pooling, depth)``)."""
    import pandas as pd
    rows = []
    for t in tests.itertuples():
        e = {"task": t.task, "pooling": t.pooling, "measure": t.measure, "depth": t.depth}
        ok = t.status in ("ok", "no_variance")
        dom = dominated(t.task, t.pooling, "final_norm" if t.depth == "final_norm" else None)
        rows.append({"endpoint": endpoint_label(e), "seeds (FT, LoRA)": f"{t.n_a}, {t.n_b}",
                     "FT drift": f"{sig(t.mean_a)} ± {sig(t.sd_a)}" if ok else "–",
                     "LoRA drift": f"{sig(t.mean_b)} ± {sig(t.sd_b)}" if ok else "–",
                     "FT − LoRA [95% CI]": (f"{sig(t.diff)} [{sig(getattr(t, 'diff_low', None))}, "
                                            f"{sig(getattr(t, 'diff_high', None))}]") if ok else "–",
                     "Hedges g": f"{t.hedges_g:.2f}" if ok and not missing(t.hedges_g) else "–",
                     "Welch p (Holm)": pval(t.welch_p_holm), "perm. p (Holm)": pval(t.perm_p_holm),
                     "input dominated": "–" if dom is None else _yes(dom)})
    return pd.DataFrame(rows)


def dominance_chart(D, threshold: float):
    """The top coordinate's share of the centred variance of the base model's pooled states at every depth
    (`drift.findings.dominance`), one line per pooling, a panel per task; the dashed rule is the flag's
    threshold: above it, one coordinate decides what any measure of that input reports."""
    import altair as alt
    d = D.assign(task=D.task.map(task_name), pooling=D.pooling.map(lambda p: POOLING_LABELS.get(p, p)), t=threshold)
    enc = dict(x=alt.X("depth:Q", title="depth", axis=alt.Axis(tickMinStep=1)),
               y=alt.Y("base_share:Q", title="top coordinate's share of variance", scale=alt.Scale(domain=[0, 1])))
    # every layer takes the facet's rows: a layer with data of its own is drawn whole in every task's panel
    lines = alt.Chart().mark_line(point=True).encode(
        **enc, color=alt.Color("pooling:N", title="pooling"),
        tooltip=["task", "pooling", "depth_name", alt.Tooltip("base_share:Q", format=".3f"),
                 alt.Tooltip("base_corr:Q", title="corr. with 1/length", format=".2f")])
    rule = alt.Chart().mark_rule(strokeDash=[4, 4], color="grey").encode(y="min(t):Q")
    return alt.layer(lines, rule, data=d).properties(width=220, height=170).facet(
        column=alt.Column("task:N", title=None)).configure_legend(orient="bottom")


MATCHED_WORDS = {"positive": "LoRA drifts less", "negative": "LoRA drifts more", "unresolved": "no difference resolved",
                 "undecided": "not compared"}
VERDICT_WORDS = {
    1: {"supported": "supported: full FT drifts more", "reversed": "reversed: LoRA drifts more",
        "mixed": "mixed: the endpoints disagree", "not established": "not established: no endpoint separates them",
        "undecided": "not tested yet"},
    2: {"consistent": "the same on every task in the claims", "task-dependent": "task-dependent",
        "undecided": "not decided here"},
    3: {"supported": "supported", "not supported": "not supported", "mixed": "task-dependent", "undecided": "not tested yet"},
    4: {"uninformative": "uninformative: different examples also score a cosine above 0.9", "informative": "informative",
        "undecided": "not tested yet"},
}


def claims_table(rq1: dict, c5, c6, original: dict):
    """The original's claims 1-6 and what this study concludes: 1-4 from `design.drift_claims`, 5 and 6
    from `design.claim_5` / `design.claim_6` (``original``: `design.ORIGINAL_RQ1`)."""
    import pandas as pd
    rows = [{"claim": n, "the original": original[n], "verdict here": VERDICT_WORDS[n].get(rq1[n]["verdict"], rq1[n]["verdict"])}
            for n in sorted(rq1)]
    rows[0]["verdict here"] += "; at matched accuracy: " + MATCHED_WORDS[rq1[1]["matched_direction"]]
    rows.append({"claim": 5, "the original": "LoRA is more accurate than full fine-tuning",
                 "verdict here": "; ".join(f"{task_name(r.task)}: {VERDICT_5[r.direction]}" for r in c5.itertuples())
                 if c5 is not None and len(c5) else "not tested yet"})
    full = c6[c6.method == c6.method.iloc[0]] if c6 is not None and len(c6) else None   # the first compared method
    if full is not None:
        k, n = int(full.collapsed.sum()), int(full.seeds.sum())
        txt = (("not reproduced: " if k == 0 else "reproduced: ") + f"{k} of {n} full-FT models answer one class"
               + (f" ({int(full.collapsed_original_format.sum())} in the original's format)"
                  if full.format_seeds.sum() else ""))
    else:
        txt = "not tested yet"
    rows.append({"claim": 6, "the original": "Full fine-tuning has catastrophic seeds", "verdict here": txt})
    return pd.DataFrame(rows)


def rank_table(rank, sweep, methods: list[str]):
    """The rank sweep (`design.rank_summary`): per LoRA rank, seeds, test metric, drift and forgetting
    (mean ± sd over seeds), beside the intruder dimensions per model at every threshold of the sweep
    (``sweep``: `drift.results.intruder_sweep` of the task) for ``methods`` (the ranks and full FT)."""
    import pandas as pd
    from .report import pm
    ints = intruder_columns(sweep, methods)
    rows = [{"method": method_label(r.method), "LoRA r": str(int(r.lora_r)), "seeds": str(int(r.seeds)),
             "test metric": pm(r.score, r.score_sd), "drift": f"{sig(r.drift)} ± {sig(r.drift_sd)}",
             "forgetting (Δ nats)": f"{sig(r.forgetting)} ± {sig(r.forgetting_sd)}", **ints.get(r.method, {})}
            for r in rank.itertuples()]
    rows += [{"method": method_label(m), "LoRA r": "–", **ints[m]} for m in methods if m in ints
             and m not in set(rank.method)]
    return pd.DataFrame(rows).fillna("–")


def intruder_columns(sweep, methods: list[str]) -> dict:
    """{method: {'intruders @ 0.3': '0.0 ± 0.0', ...}}: intruders per model at each threshold (mean ± sd over models)."""
    from .report import pm
    if sweep is None or not len(sweep):
        return {}
    return {m: {f"intruders @ {t.threshold:g}": pm(t.mean, t.sd, 1) for t in sweep[sweep.method == m].itertuples()}
            for m in methods if (sweep.method == m).any()}


def _k_of_n(k: int, n: int) -> str:
    """'all 3', 'the one', '2 of the 3'."""
    return "the one" if n == 1 else f"all {n}" if k == n else f"{k} of the {n}"


def controls_sentence(study, in_claims: list[str]) -> str:
    """The preface's line on the tasks outside the drift claims (``findings.headline_study`` rows): the same
    endpoint's drift of the two compared methods per task, the seeds and the exact permutation p, said to
    be no evidence; "" where every task with drift is in the claims."""
    if study is None or not len(study):
        return ""
    parts = []
    for task, g in study[~study.task.isin(in_claims) & study.drift.notna()].groupby("task", sort=False):
        if len(g) < 2:
            continue
        a, b = g.iloc[0], g.iloc[1]
        p = "" if g.perm_p.isna().all() else f" (exact permutation p = {g.perm_p.iloc[0]:.2g})"
        parts.append(f"{task_name(task)}, {method_label(a.method)} {a.drift:.2f} and {method_label(b.method)} "
                     f"{b.drift:.2f}{p}")
    if not parts:
        return ""
    return ("On the labelled controls, where not both methods beat the trivial baseline, the same endpoint reads: "
            + "; ".join(parts) + ". They are shown, not counted in the claims.")


def rq1_answer(c1: dict, task: str) -> str:
    """Claim 1's verdict (`design.drift_claims`) as the answer to RQ1, on ``task`` (its display name)."""
    k, n = c1["significant"], c1["n"]
    tested = sum(r is not None and r["status"] == "ok" for _, r in c1.get("endpoints", []))
    ends = f"{_k_of_n(k, n)} pre-registered endpoint{'s' if n != 1 else ''}"
    return {
        "supported": f"Yes, on {task}: full fine-tuning moves the representations further from the base model's than "
                     f"LoRA does on {ends}, and LoRA moves them further on none.",
        "reversed": f"No, and the other way round on {task}: LoRA moves the representations further from the base "
                    f"model's than full fine-tuning does on {ends}, and full fine-tuning on none.",
        "mixed": f"It depends on the endpoint on {task}: full fine-tuning drifts further on some pre-registered "
                 "endpoints and LoRA on others.",
        "not established": f"Not established on {task}: " + (
            "the pre-registered endpoint does not separate the methods." if tested == 1 else
            f"none of the {tested} pre-registered endpoints tested" + (f" (of {n})" if tested < n else "")
            + " separates the methods."),
        "undecided": "Not yet: the pre-registered endpoints have no test on a task whose models learned.",
    }[c1["verdict"]]


def matched_sentence(m: dict, what: str, unit: str) -> str:
    """One sentence on a quantity at matched accuracy (`design.matched_drift`), for every outcome; ``unit``:
    what the lower method does ('drifts less')."""
    from .design import direction
    from .report import signed_sig
    if not m.get("n_full") and not m.get("n_lora"):
        lo, hi = m.get("overlap", (float("nan"),) * 2)
        return (f"The learning-rate sweep cannot compare {what} at equal accuracy: the two methods' accuracy ranges "
                "do not overlap." if lo == lo and lo >= hi else
                f"The learning-rate sweep has no {what} results to compare at equal accuracy yet.")
    if not m["decided"]:
        return (f"Too few models reach the accuracy range both methods share ({m['overlap'][0]:.3f} to "
                f"{m['overlap'][1]:.3f}: {m['n_full']} full FT, {m['n_lora']} LoRA; a line needs at least 3 of each, "
                f"at 2 or more different accuracies) to compare {what} at equal accuracy.")
    way = {"positive": "full fine-tuning's is higher: at matched learning LoRA " + unit,
           "negative": "LoRA's is higher: at matched learning full fine-tuning " + unit,
           "unresolved": "the interval holds 0: at matched learning the methods are not distinguishable"}[
        direction(m["low"], m["high"])]
    acc = ("more" if m["acc_lora"] > m["acc_full"] else "less" if m["acc_lora"] < m["acc_full"] else "as")
    return (f"At equal test accuracy ({m['at']:.3f}, the middle of the range both methods reach over the sweep; "
            f"{m['n_full']} full-FT and {m['n_lora']} LoRA models in it), the fitted {what} is {sig(m['full'])} for "
            f"full fine-tuning and {sig(m['lora'])} for LoRA, a difference of {signed_sig(m['diff'])} "
            f"(95 % bootstrap interval over models {signed_sig(m['low'])} to {signed_sig(m['high'])}): {way}. "
            f"Without the fit, the models in that range average {what} {sig(m['mean_full'])} (full FT, accuracy "
            f"{m['acc_full']:.3f}) and {sig(m['mean_lora'])} (LoRA, accuracy {m['acc_lora']:.3f}: {acc} accurate"
            f"{'' if acc == 'as' else ' on average'}).")


# ---- the Drift chapter's sentences (numbers become words here, for every sign and outcome)
WAY = {"more": "full FT drifts more", "less": "LoRA drifts more", "none": "no difference established"}


def claim2_sentence(c2: dict, tasks: list[str], in_claims: list[str] | None = None) -> str:
    """Claim 2's verdict (`design.drift_claims`) in words, naming the tasks it could not compare and why:
    a labelled control (not in ``in_claims``: it did not learn) or no drift results yet."""
    from .report import listing
    per = "; ".join(f"{task_name(t)}: {WAY[w]}" for t, w in c2["signs"].items())
    at = "at the first endpoint's pooling, measure and depth"
    text = {"consistent": f"Every task in the claims goes the same way {at} ({per}).",
            "task-dependent": f"The tasks go opposite ways {at} ({per}).",
            "undecided": {"few_tasks": "Fewer than two tasks in the claims have drift results, so the tasks cannot be "
                                       "compared.",
                          "seeds": f"Not decided ({per}): with their seeds, {listing(map(task_name, c2['underpowered']))} "
                                   "cannot reach 5 %, so a significant result elsewhere beside them is not a difference "
                                   "between tasks.",
                          "none": f"Not decided: no task differs significantly {at} ({per})."}.get(c2["reason"], "")
            }[c2["verdict"]]
    absent = [t for t in tasks if t not in c2["signs"]]
    if in_claims is None:
        return text + ("" if not absent else f" {listing(map(task_name, absent))} {'is' if len(absent) == 1 else 'are'} "
                       "not compared (not in the claims, or no drift yet).")
    why = {"labelled control": [t for t in absent if t not in in_claims], "drift": [t for t in absent if t in in_claims]}
    words = {"labelled control": lambda n: (f"{'a labelled control' if n == 1 else 'labelled controls'} (not both "
                                            "methods beat the trivial baseline with their interval)"),
             "drift": lambda n: "without drift results yet"}
    return text + "".join(f" {listing(map(task_name, ts))} {'is' if len(ts) == 1 else 'are'} not compared: "
                          f"{words[k](len(ts))}." for k, ts in why.items() if ts)


def size_note(runs, tasks: list[str], compare: list[str]) -> str:
    """Why claim 2's explanation (training-set size) is not tested: the tasks' sizes, from the units."""
    from .report import listing, thousands
    if not len(runs):
        return ""
    sizes = runs[runs.method.isin(compare)].groupby("task").train_size.max()
    text = listing(f"{thousands(int(sizes[t]))} ({task_name(t)})" for t in tasks if t in sizes)
    return (f"Our tasks train on {text} examples; task and training-set size change together, so this design cannot "
            "test the original's explanation (the learning curve varies the size within a task, for accuracy only)."
            if text else "")


def claim3_lines(c3: dict, in_claims: list[str]) -> str:
    """Per task: 1 − debiased CKA between the methods and between two seeds of each (claim 3's numbers)."""
    return "; ".join(
        f"{task_name(t)}: FT vs LoRA {sig(v['across'])}, two FT seeds {sig(v['within_full'])}, two LoRA seeds "
        f"{sig(v['within_lora'])}" + ("" if t in in_claims else " (not in the claims)") for t, v in c3.items()) \
        or "no task has the controls yet"


def claim4_lines(c4: dict) -> str:
    """Per task: 1 − cosine for the same example (per method) and for different examples (claim 4's numbers)."""
    return "; ".join(f"{task_name(t)}: 1 − cosine {sig(1 - v['full'])} (full FT) and {sig(1 - v['lora'])} (LoRA) "
                     f"for the same example, {sig(1 - v['unmatched'])} for different examples"
                     for t, v in c4.items()) or "no task has it yet"


def sweep_sentence(points) -> str:
    """'It trains full FT at 1e-05, 3e-05, ... (mean test accuracy 0.78 → 0.86 → ...) and LoRA at ...'."""
    from .report import listing
    if points is None or not len(points):
        return ""
    acc = points.groupby(["kind", "learning_rate"]).accuracy.mean().reset_index().sort_values("learning_rate")
    part = lambda k, a: (f"{method_label(k)} at {listing(f'{r:.0e}' for r in a.learning_rate)} "  # noqa: E731
                         f"(mean test accuracy {' → '.join(f'{x:.3f}' for x in a.accuracy)})")
    return "It trains " + " and ".join(part(k, acc[acc.kind == k]) for k in ("full", "lora") if (acc.kind == k).any()) + "."


def sink_sentences(res: dict, cfg: dict, task: str | None) -> dict:
    """The diagnostic section's words: the sink rule (``rule``), what it found on ``task`` (``found``), how the
    sink-dominated pooling follows length (``length``)."""
    from .drift import findings
    sk = ((res["task_json"].get(task) or {}).get("sinks") or {}).get("base") if task else None
    fix = findings.sink_fix(res, task) if task else {}
    name = task_name(task) if task else ""
    return {
        "rule": (f"a position is a sink when its residual norm at some decoder layer exceeds {cfg['sink_ratio']:g} times "
                 "the median of its example's tokens, found on the base model and left out for every model."
                 if "sink_ratio" in cfg else
                 "these results were computed before that rule: their mean pooling includes the sinks."),
        "found": "" if not sk else (
            f"On {name}'s {sk['examples']} test examples the rule finds a sink at the first position only in "
            f"{sk['first_only']}, a sink elsewhere too in {sk['elsewhere']} and none in {sk['none']}"
            + ("." if sk.get("min_sink_ratio") is None else
               f"; every sink's norm is at least {sk['min_sink_ratio']:.0f} times its example's median, no other "
               f"token's above {sk['max_other_ratio']:.1f} times.")),
        "length": "" if fix.get("before_corr_min") is None else
        f" (on {name}, |correlation with 1/length| at least {fix['before_corr_min']:.2f} in layers 15–25)"}


def exploratory_sentences(X) -> dict:
    """The exploratory tests (``family`` exploratory) in words: how many have both q-values below 5 % and which
    way (``counts``), and the same for the mean over the decoder layers beside the final norm (``depth``)."""
    from .report import signed_sig
    none = lambda n: "none" if n == 0 else str(n)  # noqa: E731
    if X is None or not len(X):
        return {"counts": "", "depth": ""}
    both = (X.welch_p_bh < 0.05) & (X.perm_p_bh < 0.05)
    more, less = int((both & (X["diff"] > 0)).sum()), int((both & (X["diff"] < 0)).sum())
    counts = ("In none of them do both tests give q below 5 %." if more == less == 0 else
              f"In {none(more)} of them both tests give q below 5 % with full fine-tuning drifting more, in "
              f"{none(less)} with LoRA drifting more.")
    dm, fn = X[X.depth == "decoder_mean"], X[X.depth == "final_norm"]
    if not len(dm):
        return {"counts": counts, "depth": ""}
    k, k_final = int(both[dm.index].sum()), int(both[fn.index].sum())
    depth = (f"Averaged over the decoder layers rather than at the final norm, {none(k)} of the {len(dm)} tests give "
             f"both q below 5 % ({none(k_final)} of the {len(fn)} at the final norm); the differences FT − LoRA there "
             f"run from {signed_sig(dm['diff'].min())} to {signed_sig(dm['diff'].max())}.")
    return {"counts": counts, "depth": depth}


def _ranges(depths) -> str:
    """'3–5, 12–28' from [3, 4, 5, 12, ..., 28]."""
    d, out = sorted(set(int(x) for x in depths)), []
    for x in d:
        if out and x == out[-1][1] + 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in out)


def flag_sentence(diagnostics, threshold: float, methods: list[str], poolings=("masked", "last")) -> str:
    """Which of the compared methods' models have an input dominated by one coordinate, where: per pooling, the
    flagged decoder layers and the final norm, and how many models of each method are flagged at one depth or more."""
    from .report import listing, plural
    if diagnostics is None or not len(diagnostics):
        return "these results have no diagnostic (they predate it)"
    D = diagnostics[diagnostics.method.isin(methods) & diagnostics.pooling.isin(poolings)
                    & (diagnostics.top_share > threshold)]
    if not len(D):
        return f"no model of {listing(map(method_label, methods))} is flagged for {listing(POOLING_LABELS[p] for p in poolings)}"
    parts = []
    for p in poolings:
        g = D[D.pooling == p]
        if not len(g):
            parts.append(f"the {POOLING_LABELS[p]} is never flagged")
            continue
        def count(h):
            return listing(plural(h[h.method == m].model.nunique(), f"{method_label(m)} model") for m in methods
                           if (h.method == m).any())
        tasks = list(dict.fromkeys(g.task)) if "task" in g else []
        per = count(g) if len(tasks) < 2 else "; ".join(f"{task_name(t)}: {count(g[g.task == t])}" for t in tasks)
        inner = g[g.depth_name != "final_norm"].depth
        where = listing(([f"depths {_ranges(inner)}"] if len(inner) else [])
                        + (["the final norm"] if "final_norm" in set(g.depth_name) else []))
        parts.append(f"the {POOLING_LABELS[p]} is flagged at {where} in some model ({per}, at one depth or more)")
    return "; ".join(parts)
