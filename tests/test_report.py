"""The preface's headline and the study's run time: computed from data/, checked against the records."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loradrift import cli, report
from loradrift.config import load_profile
from loradrift.store import repo_root

COMMITTED = Path(__file__).resolve().parents[1] / "data" / "cpu"


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
    t = report.study_time("x")
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
    t = report.study_time("y")
    assert [s["stage"] for s in t["stages"]] == ["train"] and t["stages"][0]["loaded"] is True
    assert report.study_time("nothing-here")["total_wall_s"] == 0


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
    study, serving = report.headline("cpu")
    runs = [json.loads(p.read_text()) for p in sorted((COMMITTED / "runs").glob("*.json"))]
    tasks = {r["task"] for r in runs}
    assert len(study) == len(tasks)
    for r in ("rte", "mrpc", "sst2"):
        if r not in tasks:
            continue
        metric = "f1" if r == "mrpc" else "accuracy"
        vals = [x["test"][metric] for x in runs if x["task"] == r and x["method"] == "lora"]
        mean = sum(vals) / len(vals)
        row = study[study.task == {"rte": "RTE", "mrpc": "MRPC", "sst2": "SST-2"}[r]].iloc[0]
        assert row["metric"] == metric
        assert row["LoRA test"].startswith(f"{mean:.3f} ± ")
    summ = json.loads((COMMITTED / "drift_summary.json").read_text()) if (COMMITTED / "drift_summary.json").exists() else {}
    for t in summ.get("tests", []):
        if t["pooling"] == "masked" and t["measure"] == "cka" and t["summary"] == "last":
            row = study[study.task.str.lower().str.replace("-", "") == t["task"]].iloc[0]
            assert row["p (FT vs LoRA drift)"].startswith(f"{t['perm_p']:.2f}")
            assert row["full FT 1−CKA"] == report.sig(t["mean_a"], 2) and row["LoRA 1−CKA"] == report.sig(t["mean_b"], 2)
    stale = {r["task"] for r in report.runs_frame("cpu").query("status != 'done'").to_dict("records")}
    assert ("units" in study) == bool(stale)  # the column appears only while some units are stale
    if stale:
        names = {"rte": "RTE", "mrpc": "MRPC", "sst2": "SST-2"}
        assert set(study[study["units"] != "current"]["task"]) == {names[t] for t in stale}
    if (COMMITTED / "deployment_meta.json").exists():
        assert not serving.empty and serving["ratio [95% CI]"].str.contains("×").any()


def test_sig_formats_small_numbers_as_text_and_keeps_plain_ones():
    assert report.sig(5.34e-4, 2) == "5.3 × 10⁻⁴"
    assert report.sig(0.2051, 2) == "0.21" and report.sig(0, 2) == "0"
    assert report.sig(None) == "n/a" and report.sig(float("nan")) == "n/a"


def test_listing_joins_items_for_prose():
    assert report.listing([]) == "" and report.listing(["MRPC"]) == "MRPC"
    assert report.listing(["MRPC", "SST-2"]) == "MRPC and SST-2"
    assert report.listing(iter(["RTE", "MRPC", "SST-2"])) == "RTE, MRPC and SST-2"


def test_every_chart_gets_its_own_div_with_a_static_fallback():
    import altair as alt
    import pandas as pd
    ch = alt.Chart(pd.DataFrame({"x": [1, 2]})).mark_point().encode(x="x")
    a, b = report.chart_html(ch, "AAAA"), report.chart_html(ch, "BBBB")
    ida, idb = (re.search(r'<div id="(vis-[^"]+)">', h).group(1) for h in (a, b))
    assert ida != idb
    for h, i, png in ((a, ida, "AAAA"), (b, idb, "BBBB")):
        assert f'<div id="{i}"><img src="data:image/png;base64,{png}"' in h   # PNG until vega-embed replaces it
        assert f'vegaEmbed("#{i}"' in h


def test_untuned_units_are_kept_beside_the_study():
    """The study's first run (untuned values) stays readable for the search's test-split comparison."""
    old = report.runs_frame("cpu", "runs_untuned")
    assert len(old) == 18 and set(old["task"]) == {"rte", "mrpc", "sst2"}
    assert old.groupby(["task", "method"])["seed"].nunique().eq(3).all()
    cfg = json.loads((COMMITTED / "runs_untuned" / "rte-lora-s42.json").read_text())["config"]["training"]
    prof = load_profile("cpu")
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
    t = report.tuned_vs_untuned(str(tiny_profile)).set_index("method")
    assert bool(t.loc["lora", "retrained"]) and not bool(t.loc["full", "retrained"])  # full: no searched values
    assert t.loc["lora", "diff"] == pytest.approx(0.72 - 0.55)
    assert t.loc["lora", "ci_low"] < t.loc["lora", "diff"] < t.loc["lora", "ci_high"]
    import numpy as np
    assert np.isnan(t.loc["full", "diff"])
    # one lora unit left from before the search (stale): no comparison until all three are current
    _write(d / "runs" / "rte-lora-s3.json", _unit_record(prof, "rte", "lora", 3, 0.74, current=False))
    assert not report.tuned_vs_untuned(str(tiny_profile)).set_index("method").loc["lora", "retrained"]


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
