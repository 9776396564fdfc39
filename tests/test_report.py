"""Findings (numbers from data/), the chapters' display (report, figures) and report's stage wiring:
checked against the records they are computed from."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loradrift import cli, figures, findings, report, search_findings
from loradrift.config import load_profile
from loradrift.store import repo_root

COMMITTED = Path(__file__).resolve().parents[1] / "data" / "cpu-v1"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _fake_records(d: Path, run_loads=(1.0, 1.2), deploy_load=3.5):
    _write(d / "sanity.json", {"full": {"seconds": 10.0}, "lora": {"seconds": 20.0}})
    for i, load in enumerate(run_loads):
        _write(d / "runs" / f"rte-full-s{i}.json", {"wall_time_s": 100.0 * (i + 1),
                                                    "environment": {"cpu_count": 2, "load_avg": [load, 1, 1]}})
    _write(d / "drift_timing.json", {"total_wall_s": 50.0, "total_cpu_s": 80.0, "per_task": {"rte": {}}})
    _write(d / "deployment_meta.json", {"wall_time_s": 40.0, "loadavg_before": [deploy_load, 1, 1],
                                        "environment": {"cpu_count": 2}})
    _write(d / "search" / "summary.json", {"wall_s": 600.0, "cpu_s": 1100.0, "studies": [{}, {}]})


def test_study_time_sums_every_stage(book_root):
    _fake_records(book_root / "data" / "x")
    t = findings.study_time("x")
    by = {s["stage"]: s for s in t["stages"]}
    assert [s["stage"] for s in t["stages"]] == ["setup", "search", "train", "drift", "deploy"]
    assert by["setup"]["wall_s"] == 30.0 and by["train"]["wall_s"] == 300.0 and by["train"]["pieces"] == 2
    assert by["search"]["cpu_s"] == 1100.0 and by["drift"]["cpu_s"] == 80.0
    assert t["total_wall_s"] == pytest.approx(30 + 600 + 300 + 50 + 40)
    assert by["train"]["loaded"] is False          # load 1.2 on 2 cores: not shared
    assert by["deploy"]["loaded"] is True          # load 3.5 on 2 cores: shared


def test_study_time_flags_a_loaded_training_run_and_skips_absent_stages(book_root):
    d = book_root / "data" / "y"
    _write(d / "runs" / "a.json", {"wall_time_s": 5.0, "environment": {"cpu_count": 2, "load_avg": [4.0, 1, 1]}})
    t = findings.study_time("y")
    assert [s["stage"] for s in t["stages"]] == ["train"] and t["stages"][0]["loaded"] is True
    assert findings.study_time("nothing-here")["total_wall_s"] == 0


def test_timing_command_writes_study_time(tiny_profile, book_root, capsys):
    _fake_records(book_root / "data" / "tiny")
    assert cli.main(["timing", "--profile", str(tiny_profile)]) == 0
    out = json.loads((book_root / "data" / "tiny" / "study_time.json").read_text())
    assert out["total_wall_s"] == pytest.approx(1020.0)
    assert "total" in capsys.readouterr().out


@pytest.mark.skipif(not (COMMITTED / "runs").exists(), reason="no committed cpu results")
def test_headline_matches_the_run_records(monkeypatch):
    monkeypatch.delenv("LORADRIFT_ROOT", raising=False)
    assert repo_root() == COMMITTED.parents[1]
    numbers = findings.headline_study("cpu-v1")
    study, serving = figures.headline_table(numbers), figures.headline_serving_table(findings.headline_serving("cpu-v1"))
    runs = [json.loads(p.read_text()) for p in sorted((COMMITTED / "runs").glob("*.json"))]
    tasks = {r["task"] for r in runs}
    assert len(study) == len(tasks)
    names = {"rte": "RTE", "mrpc": "MRPC", "sst2": "SST-2"}
    for t in tasks:
        metric = "f1" if t == "mrpc" else "accuracy"
        vals = [x["test"][metric] for x in runs if x["task"] == t and x["method"] == "lora"]
        mean = sum(vals) / len(vals)
        n = numbers[(numbers.task == t) & (numbers.method == "lora")].iloc[0]
        assert n["metric"] == metric and n["test_mean"] == pytest.approx(mean)
        row = study[study.task == names[t]].iloc[0]
        assert row["metric"] == metric and row["LoRA test"].startswith(f"{mean:.3f} ± ")
    summ = json.loads((COMMITTED / "drift_summary.json").read_text()) if (COMMITTED / "drift_summary.json").exists() else {}
    tests = {t["task"]: t for t in summ.get("tests", [])
             if t["pooling"] == "masked" and t["measure"] == "cka" and t["summary"] == "last"}
    order = [t.lower().replace("-", "") for t in study.task]
    for col, key in (("full FT drift", "mean_a"), ("LoRA drift", "mean_b")):   # one notation per column
        if tests:
            assert list(study[col]) == report.sig_column([tests[t][key] if t in tests else None for t in order], 2)
    for task, t in tests.items():
        row = study[study.task.str.lower().str.replace("-", "") == task].iloc[0]
        assert row["p (FT vs LoRA drift)"].startswith(f"{t['perm_p']:.2g}" if t["perm_p"] >= 0.001 else f"{t['perm_p']:.1e}")
    stale = {r["task"] for r in findings.runs_frame("cpu-v1").query("status != 'done'").to_dict("records")}
    assert ("units" in study) == bool(stale)  # the column appears only while some units are stale
    if stale:
        assert set(study[study["units"] != "current"]["task"]) == {names[t] for t in stale}
    assert serving.empty   # cpu-v1's block-timed benchmark is kept as a record, not read (the paired design replaced it)


def test_headline_serving_ratios_are_the_benchmarks_own(monkeypatch):
    """The preface's serving rows are the benchmark's own ratios (checked on the cpu study's committed
    benchmark; skipped until the paired design has been measured for it)."""
    import pandas as pd

    from loradrift import serving
    monkeypatch.delenv("LORADRIFT_ROOT", raising=False)
    data = COMMITTED.parent / "cpu"
    if serving.load_results(data) is None:
        pytest.skip("the cpu study's serving benchmark (paired design) is not committed yet")
    rat = pd.read_csv(data / "deployment_ratios.csv")
    srv = findings.headline_serving("cpu")
    lat = srv[(srv.kind == "latency") & srv.ratio.notna()]
    assert len(lat) > 3
    for r in lat.itertuples():
        src = rat[(rat.numerator == r.numerator) & (rat.denominator == r.denominator) & (rat.batch_size == r.batch_size)
                  & (rat.stream == (r.task if isinstance(r.task, str) else "interleaved"))].iloc[0]
        assert (r.ratio, r.ci_low, r.ci_high) == pytest.approx((src.ratio, src.ci_low, src.ci_high))
    shown = figures.headline_serving_table(srv)
    first = lat.iloc[0]
    assert f"{first.ratio:.2f}× [{first.ci_low:.2f}, {first.ci_high:.2f}]" in shown["ratio [95% CI]"].iloc[0]


def test_sig_formats_small_numbers_as_text_and_keeps_plain_ones():
    assert report.sig(5.34e-4, 2) == "5.3 × 10⁻⁴"
    assert report.sig(0.2051, 2) == "0.21" and report.sig(0, 2) == "0"
    assert report.sig(None) == "n/a" and report.sig(float("nan")) == "n/a"


def test_listing_joins_items_for_prose():
    assert report.listing([]) == "" and report.listing(["MRPC"]) == "MRPC"
    assert report.listing(["MRPC", "SST-2"]) == "MRPC and SST-2"
    assert report.listing(iter(["RTE", "MRPC", "SST-2"])) == "RTE, MRPC and SST-2"


def test_untuned_units_are_kept_beside_the_study():
    """The study's first run (untuned values) stays readable for the search's test-split comparison."""
    old = findings.runs_frame("cpu-v1", "runs_untuned")
    assert len(old) == 18 and set(old["task"]) == {"rte", "mrpc", "sst2"}
    assert old.groupby(["task", "method"])["seed"].nunique().eq(3).all()
    cfg = json.loads((COMMITTED / "runs_untuned" / "rte-lora-s42.json").read_text())["config"]["training"]
    prof = load_profile("cpu-v1")
    assert cfg["learning_rate"] == prof["methods"]["lora"]["learning_rate"]  # the profile's own values


def _unit_record(prof, task, method, seed, score, current=True):
    from loradrift.config import config_hash, run_id, unit_config
    cfg = unit_config(prof, task, method, seed)
    return {"id": run_id(task, method, seed), "task": task, "method": method, "seed": seed,
            "test": {"accuracy": score, "f1": score, "n": 10}, "validation": {"accuracy": score, "f1": score},
            "train_runtime_s": 1.0, "wall_time_s": 1.0, "params": {"trainable": 1, "total": 2},
            "steps": 1, "early_stopped": False, "config": cfg,
            "config_hash": config_hash(cfg) if current else "0" * 16}


def test_tuned_vs_untuned_compares_only_units_retrained_with_searched_values(tiny_profile, book_root):
    import yaml
    d = book_root / "data" / "tiny"
    prof = load_profile(str(tiny_profile))
    for s, v in zip((1, 2, 3), (0.50, 0.55, 0.60)):  # untuned units: the profile's own values
        for m in ("full", "lora"):
            _write(d / "runs_untuned" / f"rte-{m}-s{s}.json", _unit_record(prof, "rte", m, s, v))
    raw = yaml.safe_load(tiny_profile.read_text())
    raw["training"]["per_task"] = {"rte": {"lora": {"learning_rate": 1e-2}}}  # only rte/lora searched
    tiny_profile.write_text(yaml.safe_dump(raw))
    prof = load_profile(str(tiny_profile))
    for s, v in zip((1, 2, 3), (0.70, 0.72, 0.74)):
        _write(d / "runs" / f"rte-lora-s{s}.json", _unit_record(prof, "rte", "lora", s, v))
        _write(d / "runs" / f"rte-full-s{s}.json", _unit_record(prof, "rte", "full", s, v + 0.1))
    t = search_findings.tuned_vs_untuned(str(tiny_profile)).set_index("method")
    assert bool(t.loc["lora", "retrained"]) and not bool(t.loc["full", "retrained"])  # full: no searched values
    assert t.loc["lora", "diff"] == pytest.approx(0.72 - 0.55)
    assert t.loc["lora", "ci_low"] < t.loc["lora", "diff"] < t.loc["lora", "ci_high"]
    import numpy as np
    assert np.isnan(t.loc["full", "diff"])
    # one lora unit left from before the search (stale): no comparison until all three are current
    _write(d / "runs" / "rte-lora-s3.json", _unit_record(prof, "rte", "lora", 3, 0.74, current=False))
    assert not search_findings.tuned_vs_untuned(str(tiny_profile)).set_index("method").loc["lora", "retrained"]


def test_outdated_note_names_stale_units(tiny_profile, book_root, monkeypatch):
    import yaml
    d = book_root / "data" / "tiny"
    prof = load_profile(str(tiny_profile))
    _write(d / "runs" / "rte-lora-s1.json", _unit_record(prof, "rte", "lora", 1, 0.5))
    shown = []
    monkeypatch.setattr(report, "note", shown.append)
    report.outdated_note("train", str(tiny_profile))
    assert shown == []  # current: nothing to say
    raw = yaml.safe_load(tiny_profile.read_text())
    raw["training"]["per_task"] = {"rte": {"lora": {"learning_rate": 1e-2}}}
    tiny_profile.write_text(yaml.safe_dump(raw))
    for stage in ("train", "drift", "deploy"):
        report.outdated_note(stage, str(tiny_profile))
    assert len(shown) == 1 and "rte-lora-s1" in shown[0] and "Out of date" in shown[0]


def test_pipe_table_columns_keep_their_longest_word_when_the_table_is_wide():
    import pandas as pd
    df = pd.DataFrame({"task": ["mrpc"], "full FT test": ["0.813 ± 0.008"], "LoRA test": ["0.784 ± 0.045"],
                       "comparison": ["one base, mixed-adapter batches / a merged model per task " * 2]})
    md = df.to_markdown(index=False)
    out = report._min_col_widths(md)
    assert out.split("\n")[0] == md.split("\n")[0] and out.split("\n")[2:] == md.split("\n")[2:]
    dashes = [len(c) for c in out.split("\n")[1].strip("|").split("|")]
    total = sum(dashes)
    assert total == pytest.approx(sum(len(c) for c in md.split("\n")[1].strip("|").split("|")), abs=3)
    for d, word in zip(dashes, ("mrpc", "0.813±0.008", "0.784±0.045")):   # each keeps its word at 72 chars a line
        assert d * 72 / total >= len(word) + 2 - 0.5
    assert dashes[3] < len(md.split("\n")[1].strip("|").split("|")[3])   # the long text column gave room
    narrow = pd.DataFrame({"a": [1], "b": ["x"]}).to_markdown(index=False)
    assert report._min_col_widths(narrow) == narrow   # a table that fits a line is left alone


def test_table_shows_missing_values_as_a_dash_and_keeps_number_format(monkeypatch):
    import numpy as np
    import pandas as pd
    shown = []
    monkeypatch.setattr(report, "_display", shown.append)
    report.table(pd.DataFrame({"artifact": ["base model", "adapter"], "task": [np.nan, "rte"],
                               "MB": [513.16, 1.7812], "merge s": [np.nan, 0.2]}), digits=2)
    md = shown[0]["text/markdown"]
    assert "nan" not in md and "None" not in md and "nan" not in shown[0]["text/plain"]
    rows = md.split("\n")[2:]
    assert [c.strip() for c in rows[0].strip("|").split("|")] == ["base model", "–", "513.16", "–"]
    assert [c.strip() for c in rows[1].strip("|").split("|")] == ["adapter", "rte", "1.78", "0.20"]


def test_table_as_written_keeps_values_as_text(monkeypatch):
    import pandas as pd
    shown = []
    monkeypatch.setattr(report, "_display", shown.append)
    report.table(pd.DataFrame({"parameter": ["learning_rate"], "chosen": ["2e-05"], "original": [None]}),
                 as_written=True)
    row = shown[0]["text/markdown"].split("\n")[2]
    assert [c.strip() for c in row.strip("|").split("|")] == ["learning_rate", "2e-05", "–"]
    assert "None" not in shown[0]["text/plain"]


def _split_record(prof, task, method, seed, test, val, **extra):
    """A unit whose test and validation scores differ (and, per split, accuracy from F1)."""
    rec = _unit_record(prof, task, method, seed, test)
    rec["test"] = {"accuracy": test, "f1": test + 0.05, "n": 10}
    rec["validation"] = {"accuracy": val, "f1": val + 0.05}
    rec["curves"] = {"train": [{"step": 1, "loss": 0.7}],
                     "validation": [{"step": 1, "loss": 0.6, "accuracy": val, "f1": val + 0.05}]}
    return rec | extra


def test_training_findings_read_the_test_split_and_the_tasks_metric(tiny_profile, book_root):
    """Every record's test and validation scores differ: a finding that reads the wrong split, or
    accuracy where MRPC is judged by F1, shows in the test chapter's numbers."""
    d = book_root / "data" / "tiny"
    prof = load_profile(str(tiny_profile))
    for task in ("rte", "mrpc"):
        for s, v in zip((1, 2, 3), (0.60, 0.70, 0.80)):
            _write(d / "runs" / f"{task}-lora-s{s}.json", _split_record(prof, task, "lora", s, v, v - 0.3))
    test = {"rte": [0.60, 0.70, 0.80], "mrpc": [0.65, 0.75, 0.85]}       # accuracy for RTE, F1 for MRPC
    val = {"rte": [0.30, 0.40, 0.50], "mrpc": [0.35, 0.45, 0.55]}
    runs = findings.runs_frame(str(tiny_profile)).sort_values(["task", "seed"])
    for task in test:
        r = runs[runs.task == task]
        assert list(r["test_score"]) == pytest.approx(test[task]) and list(r["val_score"]) == pytest.approx(val[task])
    summ = findings.summary_frame(runs).set_index("task")
    scores = findings.test_scores(runs, findings.summary_frame(runs)).set_index("task")
    study = findings.headline_study(str(tiny_profile)).query("method == 'lora'").set_index("task")
    _, curves = findings.learning_curves(str(tiny_profile))
    for task in test:
        assert summ.loc[task, "mean"] == pytest.approx(sum(test[task]) / 3)
        assert summ.loc[task, "sd"] == pytest.approx(0.1)
        assert scores.loc[task, "scores"] == pytest.approx(test[task])
        assert study.loc[task, "test_mean"] == pytest.approx(sum(test[task]) / 3)
        assert sorted(curves[curves.task == task]["metric"]) == pytest.approx(val[task])   # the validation slice's


def test_findings_and_tables_follow_the_profiles_methods(tiny_profile, book_root):
    """A third method (a LoRA variant) counts as an adapter and, compared with full fine-tuning
    (``drift.compare``), gets the preface's columns; nothing assumes the methods are exactly full and lora."""
    import yaml
    raw = yaml.safe_load(tiny_profile.read_text())
    raw["methods"]["lora-r64"] = {"extends": "lora", "lora_r": 64}
    raw["drift"] = {"compare": ["full", "lora-r64"]}
    tiny_profile.write_text(yaml.safe_dump(raw))
    prof = load_profile(str(tiny_profile))
    d = book_root / "data" / "tiny"
    for m, trainable, speed in (("full", 100, 100.0), ("lora", 1, 200.0), ("lora-r64", 3, 400.0)):
        for s in (1, 2):
            rec = _split_record(prof, "rte", m, s, 0.6, 0.5, tokens_per_s=speed)
            rec["params"] = {"trainable": trainable, "total": 100}
            _write(d / "runs" / f"rte-{m}-s{s}.json", rec)
    study = findings.headline_study(str(tiny_profile))
    assert list(study["method"]) == ["full", "lora-r64"]          # the compared methods, in drift.compare's order
    shown = figures.headline_table(study)
    assert {"full FT test", "lora-r64 test", "lora-r64 drift"} <= set(shown.columns) and "LoRA test" not in shown
    assert shown["drift endpoint"].iloc[0] == "sink-free mean · linear CKA · final norm"
    settings = figures.settings_table(findings.unit_settings(str(tiny_profile))).set_index(["task", "method"])
    assert settings.loc[("rte", "lora-r64"), "LoRA r / α / dropout"] == "64 / 8 / 0"
    assert settings.loc[("rte", "full"), "LoRA r / α / dropout"] == "–"
    cost = findings.adapter_cost(str(tiny_profile), findings.summary_frame(findings.runs_frame(str(tiny_profile))))
    assert cost["trainable_fraction"] == pytest.approx(0.02) and cost["speedup"] == pytest.approx(3.0)
    assert findings.unit_counts(str(tiny_profile), findings.runs_frame(str(tiny_profile))) == \
        {"units": 3 * 3 * 3, "done": 6, "stale": 0}


def test_ensure_runs_a_stage_unless_told_never_and_looks_for_its_results(tiny_profile, book_root, monkeypatch):
    calls, shown = [], []

    class Fake:
        name, help, results = "train", "training units", "runs/*.json"

        def run(self, prof, tasks=None):
            calls.append((prof["name"], tasks))
            _write(book_root / "data" / "tiny" / "runs" / "rte-lora-s1.json", {})

        def command(self, profile):
            return f"python -m loradrift train --profile {profile}"

    real = report.get_stage
    monkeypatch.setattr(report, "get_stage", lambda name: Fake() if name == "train" else real(name))
    monkeypatch.setattr(report, "profile", lambda: str(tiny_profile))
    monkeypatch.setattr(report, "note", shown.append)
    monkeypatch.setenv("LORADRIFT_COMPUTE", "never")
    assert report.ensure("train") is False and calls == []
    report.missing_note("train")
    assert "training units" in shown[0] and f"--profile {tiny_profile}`" in shown[0]
    monkeypatch.setenv("LORADRIFT_COMPUTE", "missing")
    assert report.ensure("train", tasks=["rte"]) is True and calls == [("tiny", ["rte"])]
    assert report.has_results("train", "tiny") and not report.has_results("drift", "tiny")


def test_every_stage_has_a_command_and_a_results_pattern(tiny_profile, book_root):
    from loradrift.stages import STAGES, get_stage
    assert [s.name for s in STAGES] == ["setup", "bench", "search", "train", "drift", "deploy", "timing"]
    for s in STAGES:
        assert s.command("cpu") == f"python -m loradrift {s.name} --profile cpu" and s.results and s.help
    _fake_records(book_root / "data" / "tiny")
    assert not report.has_results("timing", "tiny")
    get_stage("timing").run(load_profile(str(tiny_profile)))
    assert report.has_results("timing", "tiny")
    assert findings.recorded_study_time(str(tiny_profile))["total_wall_s"] == pytest.approx(1020.0)


def _study(task, method, gain, applied_lr, n_complete=5):
    return {"task": task, "method": method, "metric": "accuracy", "n_trials": 8, "n_complete": n_complete,
            "n_pruned": 8 - n_complete, "best_value": 0.5 + gain, "default_value": 0.5, "gain_over_default": gain,
            "best_params": {"learning_rate": applied_lr, "num_train_epochs": 2},
            "default_params": {"learning_rate": 5e-3, "num_train_epochs": 2}, "cpu_s": 600.0, "wall_s": 360.0,
            "trials": [{"number": 0, "state": "COMPLETE", "value": 0.5, "defaults": True, "intermediate": {}},
                       {"number": 1, "state": "PRUNED", "value": None, "defaults": False, "intermediate": {"1": 0.7}},
                       {"number": 2, "state": "COMPLETE", "value": 0.5 + gain, "defaults": False, "intermediate": {}}]}


def test_search_findings_count_trials_gains_and_applied_values(tiny_profile):
    import yaml
    raw = yaml.safe_load(tiny_profile.read_text())
    raw["training"]["per_task"] = {"rte": {"lora": {"learning_rate": 1e-2, "num_train_epochs": 2}}}
    tiny_profile.write_text(yaml.safe_dump(raw))
    prof = load_profile(str(tiny_profile))
    res = [_study("rte", "lora", 0.10, 1e-2, n_complete=6), _study("rte", "full", 0.02, 3e-5, n_complete=3)]
    s = search_findings.summary(prof, res)
    assert (s["n_studies"], s["n_trials"], s["n_pruned"], s["n_applied"]) == (2, 16, 7, 1)
    assert (s["max_complete"], s["min_complete"]) == (6, 3) and s["wall_h"] == pytest.approx(0.2)
    assert (s["gain_mean"], s["gain_min"], s["gain_max"]) == pytest.approx((0.06, 0.02, 0.10))
    hist = search_findings.history(res[:1])
    assert list(hist["state"]) == ["defaults", "pruned", "complete"] and list(hist["value"]) == pytest.approx([0.5, 0.7, 0.6])
    assert list(hist["best so far"]) == pytest.approx([0.5, 0.5, 0.6])
    gains = figures.gains_table(search_findings.gains(prof, res)).set_index("method")
    assert gains.loc["lora", "applied"] == "yes" and gains.loc["full", "applied"] == "no"
    chosen = figures.chosen_table(search_findings.chosen(res)).set_index(["method", "parameter"])
    assert chosen.loc[("lora", "learning rate"), "chosen"] == "0.01" and chosen.loc[("lora", "learning rate"), "untuned"] == "0.005"
    assert chosen.loc[("lora", "epochs"), "chosen"] == 2                       # an integer stays as written
    assert chosen.loc[("full", "learning rate"), "original"] == "9.663 × 10⁻⁶"  # the original's typed-in choice
    res[0]["best_params"]["max_grad_norm"] = 0.5                                # no untuned value, no original
    chosen = figures.chosen_table(search_findings.chosen(res)).set_index(["method", "parameter"])
    assert tuple(chosen.loc[("lora", "max grad norm")]) == ("rte", "–", "0.5", "–")


def test_a_pipe_in_a_table_does_not_split_its_column(monkeypatch):
    import pandas as pd
    shown = []
    monkeypatch.setattr(report, "_display", shown.append)
    report.table(pd.DataFrame({"max |Δ|": ["a|b"], "kind": ["x"]}))
    md = shown[0]["text/markdown"]
    header, sep, row = md.splitlines()[:3]
    assert header.count(" | ") == row.count(" | ") == 1  # two columns, the pipes inside them escaped
    assert "max \\|Δ\\|" in header and "a\\|b" in row


# ---------------------------------------------------------------------------- numbers and tables as shown
def _markdown(df, **kw):
    shown = []
    orig = report._display
    report._display = lambda b: shown.append(b["text/markdown"])
    try:
        report.table(df, **kw)
    finally:
        report._display = orig
    return shown[0]


def _cells(md):
    rows = [re.split(r"(?<!\\)\|", ln.strip()[1:-1]) for ln in md.splitlines()]
    return [[c.strip() for c in r] for r in rows[:1] + rows[2:]], rows[1]


def test_sig_keeps_its_significant_figures_and_one_notation():
    assert report.sig(0.002, 2) == "0.0020" and report.sig(0.5) == "0.500" and report.sig(1234) == "1234"
    assert report.sig(12345) == "1.23 × 10⁴" and report.sci(0.00891) == "8.91 × 10⁻³" and report.sci(0) == "0"
    assert report.sig_column([1.7e-4, 0.0089], 2) == ["1.7 × 10⁻⁴", "8.9 × 10⁻³"]   # one small value: all m × 10ⁿ
    assert report.sig_column([0.5, 0.0089, None], 2) == ["0.50", "0.0089", "n/a"]
    assert report.written(2e-05) == "2 × 10⁻⁵" and report.written(0.0204) == "0.0204" and report.written(3.0) == "3"
    # prose values are printable: Quarto writes an inline value as its repr, so a no-break space would read '\xa0'
    assert all(s.isprintable() for s in (report.sig(1.7e-4), report.sci(0.5), report.written(2e-5)))


def test_signed_values_never_read_minus_zero():
    assert report.signed(-0.0001) == "0.000" and report.signed(-0.0001, plus=False) == "0.000"
    assert report.signed(0.016) == "+0.016" and report.signed(-0.017) == "-0.017"
    assert report.signed(float("nan")) == "n/a"


def test_counts_and_shares_read_as_prose():
    assert report.plural(["2"], "thread") == "2 threads" and report.plural(1, "time") == "1 time"
    assert report.plural(["1", "2"], "thread") == "1 and 2 threads" and report.plural(None, "thread") == "n/a"
    assert report.at_least(1.0, "predictions") == "all predictions"
    assert report.at_least(0.995, "predictions") == "at least 99.5% of the predictions"


def test_a_table_shows_words_not_python():
    import pandas as pd
    df = pd.DataFrame({"ci_low": [0.95, 1.02], "paired": [True, False], "max |Δlogit|": [0.0, 3.2e-6],
                       "tokens run": [171052, 3], "measure": ["cka", "debiased_cka"], "diff": [-0.00001, 0.5],
                       "model MB": [513.14, 1.78], "unit test n": [408.0, float("nan")], "kind": ["identical", None]})
    rows, sep = _cells(_markdown(df))
    assert rows[0] == ["95% CI low", "paired", "max \\|Δlogit\\|", "tokens run", "measure", "diff", "model MiB",
                       "unit test n", "kind"]   # the escaped '|' keeps the header's columns
    assert rows[1] == ["0.950", "yes", "0", "171,052", "linear CKA", "-1.00\u00a0×\u00a010⁻⁵", "513.140", "408", "identical"]
    assert rows[2] == ["1.020", "no", "3.20\u00a0×\u00a010⁻⁶", "3", "debiased CKA", "5.00\u00a0×\u00a010⁻¹", "1.780", "–", "–"]
    assert [c.strip().endswith(":") for c in sep] == [True, False, True, True, False, True, True, True, False]


def test_a_table_rounds_without_minus_zero_and_as_written_keeps_settings():
    import pandas as pd
    rows, _ = _cells(_markdown(pd.DataFrame({"delta": [-0.00004, 0.0123]}), digits=4))
    assert [r[0] for r in rows[1:]] == ["-4.00\u00a0×\u00a010⁻⁵", "1.23\u00a0×\u00a010⁻²"]   # not '-0.0000': its value, in one notation
    rows, _ = _cells(_markdown(pd.DataFrame({"delta": [-0.4, 0.0123]}), digits=4))
    assert [r[0] for r in rows[1:]] == ["-0.4000", "0.0123"]
    rows, _ = _cells(_markdown(pd.DataFrame({"lr": [2e-05], "on": [True]}), as_written=True))
    assert rows[1] == ["2e-05", "yes"]


def test_display_tables_format_their_numbers_once():
    import pandas as pd
    s = figures.sanity_table({"full": {"final_loss": 3.2e-5, "passed": True, "seconds": 368.3555},
                              "lora": {"final_loss": 0.0123, "passed": False, "seconds": 244.39}})
    assert list(s["final loss"]) == ["3.2 × 10⁻⁵", "0.012"] and list(s["seconds"]) == [368, 244]
    summ = pd.DataFrame({"task": ["rte", "rte"], "method": ["full", "lora"], "trainable": [134516160, 470016],
                         "total": [134516160, 134986176], "train_s": [267.674, 100.2], "tokens_per_s": [188.25, 600.7],
                         "pad_fraction": [0.113, 0.1]})
    c = figures.cost_table(summ)
    assert list(c["trainable %"]) == ["100%", "0.35%"] and list(c["train s"]) == [268, 100]
    assert list(c["tokens/s"]) == [188, 601]


def test_study_time_projects_the_units_not_done_from_the_done_ones(tiny_profile, book_root):
    """Units planned vs done, and the rest projected per task and kind at the done units' seconds per training token."""
    prof = load_profile(str(tiny_profile))
    d = book_root / "data" / "tiny"
    _write(d / "data_stats.json", {"splits": [{"task": "rte", "split": "train", "tokens_mean": 10.0},
                                              {"task": "sst2", "split": "train", "tokens_mean": 5.0}]})
    for seed, wall in ((1, 64.0), (2, 96.0)):   # rte full: 32 examples x 10 tokens -> 0.2 and 0.3 s per token
        _write(d / "runs" / f"rte-full-s{seed}.json", {"id": f"rte-full-s{seed}", "task": "rte", "method": "full",
                                                       "wall_time_s": wall, "n_train": 32,
                                                       "environment": {"cpu_count": 2, "load_avg": [1.0, 1, 1]}})
    t = findings.study_time(prof)
    tr = next(s for s in t["stages"] if s["stage"] == "train")
    from loradrift.config import units
    assert tr["units_planned"] == len(units(prof)) and tr["units_done"] == 2 and not t["complete"]
    # rte-full-s3 at its task's median (0.25 s/token x 320 tokens); sst2 full (40 examples x 5 tokens) at the
    # same kind's median on any task; LoRA has no done unit of its kind: not projected
    n_sst2_full = sum(1 for task, m, _ in units(prof) if (task, m) == ("sst2", "full"))
    assert tr["projected_left_s"] == pytest.approx(0.25 * 320 + n_sst2_full * 0.25 * 200)
    assert tr["projected_from_other_tasks"] == n_sst2_full
    # mrpc trains on its whole split, whose size data_stats does not give here; LoRA has no done unit
    assert tr["not_projected"] == len(units(prof)) - 3 - n_sst2_full


def test_the_headline_puts_every_task_on_the_first_endpoints_scale():
    import pandas as pd
    cfg = {"primary": [{"task": "sst2", "pooling": "last", "measure": "debiased_cka", "depth": "final_norm"},
                       {"task": "sst2", "pooling": "masked", "measure": "debiased_cka", "depth": "final_norm"},
                       {"task": "rte", "pooling": "masked", "measure": "cka", "depth": "mean"}]}
    registered = pd.DataFrame(columns=["family"])
    assert findings._headline_endpoint(cfg, "sst2", registered) == ("last", "debiased_cka", "final_norm")
    assert findings._headline_endpoint(cfg, "rte", registered) == ("masked", "cka", "mean")         # its own
    assert findings._headline_endpoint(cfg, "mrpc", registered) == ("last", "debiased_cka", "final_norm")  # the first
    assert findings._headline_endpoint(cfg, "mrpc", pd.DataFrame()) == ("masked", "cka", "final_norm")  # before registration
    assert findings._headline_endpoint({}, "mrpc", registered) == ("masked", "cka", "final_norm")
