"""Charts as the book shows them: the HTML loader (require.js on the page or not) and the PDF's PNG text size."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from loradrift import charts, figures


def _chart(width=100, panels=1):
    import altair as alt
    import pandas as pd
    one = alt.Chart(pd.DataFrame({"x": [1, 2], "k": ["a", "b"]})).mark_point().encode(
        x="x", color="k").properties(width=width, height=80)
    return one if panels == 1 else alt.hconcat(*[one] * panels)


def test_every_chart_gets_its_own_div_with_a_static_fallback():
    ch = _chart()
    a, b = charts.chart_html(ch, "AAAA"), charts.chart_html(ch, "BBBB")
    ida, idb = (re.search(r'<div id="(vis-[^"]+)">', h).group(1) for h in (a, b))
    assert ida != idb
    for h, i, png in ((a, ida, "AAAA"), (b, idb, "BBBB")):
        assert f'<div id="{i}"><img src="data:image/png;base64,{png}"' in h   # PNG until vega-embed replaces it
        assert f'<div class="loradrift-chart" style="overflow-x:auto"><div id="{i}">' in h   # scrolls, never cut off
        assert f'vegaEmbed("#{i}"' in h
        assert "<script src" not in h and 'type="text/javascript" src=' not in h   # no bare UMD script tags


# the loader run in node with a stub DOM: what it asks require.js for, or which scripts it adds, and what it draws
NODE_HARNESS = r"""
const fs = require("fs"), vm = require("vm");
const amd = process.argv[2] === "amd";
const log = {config: null, required: null, scripts: [], drawn: []};
const vegaEmbed = (sel, spec, opt) => { log.drawn.push([sel, opt.mode]); return Promise.resolve(); };
const page = {console: {warn: (...a) => { log.warned = String(a[1]); }}, Promise, setTimeout};
page.window = page;
if (amd) {
  page.define = function () {}; page.define.amd = {};
  page.requirejs = {config: (c) => { log.config = c; }};
  page.require = (deps, ok, fail) => { log.required = deps; ok(vegaEmbed); };
} else {
  page.document = {createElement: () => ({}), head: {appendChild: (s) => {
    log.scripts.push(s.src); if (s.src.includes("vega-embed")) page.vegaEmbed = vegaEmbed; setTimeout(s.onload, 0); }}};
}
vm.runInNewContext(fs.readFileSync(0, "utf8"), page);
setTimeout(() => process.stdout.write(JSON.stringify(log)), 50);
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("page", ["amd", "plain"])
def test_the_loader_uses_require_js_where_the_page_has_it(page, tmp_path):
    html = charts.chart_html(_chart(), "AAAA")
    div = re.search(r'<div id="(vis-[^"]+)">', html).group(1)
    js = re.search(r"<script[^>]*>(.*)</script>", html, re.S).group(1)
    (tmp_path / "h.js").write_text(NODE_HARNESS)
    out = subprocess.run(["node", str(tmp_path / "h.js"), page], input=js, capture_output=True, text=True, timeout=60)
    log = json.loads(out.stdout)
    assert log["drawn"] == [[f"#{div}", "vega-lite"]], out.stderr
    if page == "amd":   # vega as AMD modules, by path, never as anonymous script tags
        assert log["required"] == ["vega-embed"] and not log["scripts"]
        assert set(log["config"]["paths"]) == {"vega", "vega-lite", "vega-embed"}
    else:               # the three bundles in dependency order
        assert [re.search(r"npm/([a-z-]+)@", s).group(1) for s in log["scripts"]] == ["vega", "vega-lite", "vega-embed"]


def test_a_narrow_chart_keeps_its_text_and_a_wide_one_prints_it_at_9_pt():
    narrow, factor = charts.pdf_png(_chart(width=100).to_dict())
    assert factor == 1.0
    assert charts.printed_font_pt(10, charts.png_width(narrow) / 2, 2) >= 9
    wide, factor = charts.pdf_png(_chart(width=300, panels=3).to_dict())
    width = charts.png_width(wide) / 2
    assert factor > 1.2 and width > 900
    assert charts.printed_font_pt(charts.SMALLEST_FONT_PX * factor, width, 2) >= charts.MIN_PDF_FONT_PT - 0.05
    # without the enlargement the same chart's labels would print below 8 pt
    assert charts.printed_font_pt(charts.SMALLEST_FONT_PX, width, 2) < 8


def test_enlarged_text_sizes_reach_every_part_and_keep_a_charts_own():
    spec = charts.with_fonts({"config": {"legend": {"orient": "bottom", "labelFontSize": 7}}}, 1.5)["config"]
    assert spec["axis"] == {"labelFontSize": 15, "titleFontSize": 16.5}
    assert spec["header"]["labelFontSize"] == 15 and spec["title"]["fontSize"] == 19.5
    assert spec["legend"]["orient"] == "bottom" and spec["legend"]["labelFontSize"] == 7   # the chart's own
    assert spec["legend"]["symbolSize"] == 225 and spec["legend"]["labelLimit"] == 240


def test_printed_size_is_the_shrink_to_the_text_width():
    assert charts.printed_font_pt(10, charts.PDF_TEXT_WIDTH_PT, 1) == pytest.approx(10)
    assert charts.printed_font_pt(10, 2 * charts.PDF_TEXT_WIDTH_PT, 2) == pytest.approx(5)
    assert charts.printed_font_pt(10, 100, 2) == pytest.approx(20)   # a small picture is not enlarged


def _legend(chart) -> tuple[list[str], set[str]]:
    """The opacity of each legend symbol and the legends' labels, from the chart's SVG."""
    import altair as alt
    import vl_convert as vlc
    with alt.data_transformers.disable_max_rows():   # as charts.bundle shows them: the per-depth chart has ~6,000 rows
        svg = vlc.vegalite_to_svg(chart.to_dict())
    labels = set(re.findall(r'role-legend-label.*?<text[^>]*>([^<]+)</text>', svg))
    return re.findall(r'role-legend-symbol.*?<path[^>]*?opacity="([^"]+)"', svg), labels


@pytest.mark.skipif(not (charts.__file__ and (__import__("pathlib").Path(__file__).parents[1] / "data" / "cpu" / "drift_summary.json").exists()),
                    reason="no committed drift results")
def test_drift_charts_keep_a_solid_legend(monkeypatch):
    """A translucent band or bar layered under lines must not fade (or remove) the method legend."""
    from loradrift import figures
    from loradrift.drift import load_results, results
    monkeypatch.delenv("LORADRIFT_ROOT", raising=False)
    res = load_results("cpu")
    for chart in (figures.drift_layers(res), figures.drift_tradeoff(res, results.forgetting_table(res))):
        ops, labels = _legend(chart)
        assert {"full", "lora"} <= labels, labels                   # the method legend is there
        assert ops and all(float(o) >= 0.7 for o in ops), ops   # 0.7: vega's own for filled points


def test_a_chart_past_altairs_row_guard_is_shown_and_the_guard_stays_on():
    """The per-depth chart of a three-task study has ~6,000 rows: the bundle embeds it; charts built
    elsewhere keep altair's guard."""
    import altair as alt
    import pandas as pd
    from loradrift.charts import bundle
    big = alt.Chart(pd.DataFrame({"x": range(6000)})).mark_point().encode(x="x")
    out = bundle(big, 1.0)
    assert out["image/png"] and '"x": 5999' in out["text/html"]
    with pytest.raises(alt.MaxRowsError):
        big.to_dict()


def test_runtime_table_writes_every_stage_in_minutes_with_one_decimal():
    t = figures.runtime_table({"stages": [
        {"stage": "setup", "wall_s": 10.4, "cpu_s": None, "pieces": 2, "loaded": None, "what": "sanity"},
        {"stage": "train", "wall_s": 16242.1, "cpu_s": None, "pieces": 65, "loaded": False, "what": "units"},
        {"stage": "drift", "wall_s": 2940.2, "cpu_s": 5461.4, "pieces": 3, "loaded": True, "what": "drift"}]})
    assert list(t["minutes"]) == ["0.2", "270.7", "49.0"]      # no m × 10ⁿ for a short stage beside long ones
    assert list(t["CPU minutes"]) == ["", "", "91.0"] and list(t["shared"]) == ["", "no", "yes"]
