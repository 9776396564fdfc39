"""An altair chart as a chapter output: interactive in HTML, a PNG sized for the PDF page.

HTML: vega-embed draws the chart into a div that holds the static PNG until then (a reader offline,
or without JavaScript, keeps the image). Quarto puts require.js on every page with HTML output, and
vega's UMD bundles then register as anonymous AMD modules instead of globals ("Mismatched anonymous
define() module"; ``vegaEmbed`` undefined), so the loader asks require.js for them when it is there
and adds plain script tags otherwise.

PDF: LaTeX shrinks a picture wider than the text to the text width, so a chart of W pixels prints
its f-pixel text at f × text width / W points. The PNG's text is enlarged until the smallest prints
at ``MIN_PDF_FONT_PT`` or more (the HTML chart keeps vega's own sizes).
"""
from __future__ import annotations

import base64
import hashlib
import json

import jinja2

# the text width of the PDF (_quarto.yml: a4, 2.2 cm margins) in PostScript points, what a 72-dpi PNG is measured in
PDF_TEXT_WIDTH_PT = (21.0 - 2 * 2.2) / 2.54 * 72
MIN_PDF_FONT_PT = 9.0
# vega-lite's default text sizes (px): axis, legend and facet-header labels 10, their titles 11, a chart title 13
FONT_PX = {"axis": {"labelFontSize": 10, "titleFontSize": 11}, "legend": {"labelFontSize": 10, "titleFontSize": 11},
           "header": {"labelFontSize": 10, "titleFontSize": 11}, "title": {"fontSize": 13}}
SMALLEST_FONT_PX = 10

# vega-embed into the div that holds the static image; the libraries through require.js where the page has it
TEMPLATE = jinja2.Template("""\
<div id="{{ output_div }}"></div>
<script type="text/javascript">
(function (spec, embedOpt) {
  const paths = {"vega": "{{ base_url }}/vega@{{ vega_version }}?noext",
                 "vega-lite": "{{ base_url }}/vega-lite@{{ vegalite_version }}?noext",
                 "vega-embed": "{{ base_url }}/vega-embed@{{ vegaembed_version }}?noext"};
  const keep = (err) => console.warn("interactive chart unavailable, the static image stays:", err);
  const draw = (vegaEmbed) => vegaEmbed("#{{ output_div }}", spec, embedOpt).catch(keep);
  if (typeof define === "function" && define.amd) {
    requirejs.config({paths: paths});
    require(["vega-embed"], draw, keep);
  } else {
    window.loradriftVega = window.loradriftVega || ["vega", "vega-lite", "vega-embed"].reduce(
      (loaded, lib) => loaded.then(() => new Promise((ok, fail) => {
        const s = document.createElement("script");
        s.src = paths[lib]; s.onload = ok; s.onerror = fail; document.head.appendChild(s);
      })), Promise.resolve());
    window.loradriftVega.then(() => draw(window.vegaEmbed), keep);
  }
})({{ spec }}, {{ embed_options }});
</script>""")

_N_CHARTS = [0]


def chart_html(chart, png_b64: str) -> str:
    """vega-embed HTML for one chart, in a div of its own (unique on a page, stable across renders),
    holding the static PNG until the interactive chart replaces it, inside a box that scrolls sideways."""
    _N_CHARTS[0] += 1
    spec = json.dumps(chart.to_dict(), sort_keys=True)
    div = f"vis-{_N_CHARTS[0]}-{hashlib.md5(spec.encode()).hexdigest()[:8]}"
    html = chart.to_html(fullhtml=False, output_div=div, template=TEMPLATE)
    img = f'<img src="data:image/png;base64,{png_b64}" alt="chart (static)" style="max-width:100%">'
    # in a column narrower than the chart (a narrow window), the chart scrolls sideways instead of being cut off
    return html.replace(f'<div id="{div}"></div>',
                        f'<div class="loradrift-chart" style="overflow-x:auto"><div id="{div}">{img}</div></div>', 1)


def with_fonts(spec: dict, factor: float) -> dict:
    """The spec with every default text size (and legend symbol) scaled by ``factor``; the chart's own config wins."""
    cfg = dict(spec.get("config") or {})
    for part, sizes in FONT_PX.items():
        cfg[part] = {**{k: round(v * factor, 1) for k, v in sizes.items()}, **(cfg.get(part) or {})}
    cfg["legend"].setdefault("symbolSize", round(100 * factor ** 2))
    cfg["legend"].setdefault("labelLimit", round(160 * factor))   # vega's 160 px, or longer labels get cut
    return {**spec, "config": cfg}


def png_width(png: bytes) -> int:
    """Pixel width from a PNG's header."""
    return int.from_bytes(png[16:20], "big")


def printed_font_pt(font_px: float, width_px: float, scale: float) -> float:
    """The size a PNG's text prints at in the PDF: a 72-dpi image at its natural size, shrunk to the text width."""
    return font_px * scale * min(1.0, PDF_TEXT_WIDTH_PT / (width_px * scale))


def pdf_png(spec: dict, scale: float = 2.0) -> tuple[bytes, float]:
    """The chart as a PNG whose smallest text prints at ``MIN_PDF_FONT_PT`` or more, and the factor its
    text sizes were multiplied by (a few renders: bigger text widens the chart a little)."""
    import vl_convert as vlc
    factor = 1.0
    png = vlc.vegalite_to_png(spec, scale=scale)
    for _ in range(3):
        printed = printed_font_pt(SMALLEST_FONT_PX * factor, png_width(png) / scale, scale)
        if printed >= MIN_PDF_FONT_PT - 0.05:
            break
        factor *= MIN_PDF_FONT_PT / printed * 1.03
        png = vlc.vegalite_to_png(with_fonts(spec, factor), scale=scale)
    return png, factor


def bundle(chart, scale: float = 2.0) -> dict:
    """The display bundle: ``image/png`` (what the PDF takes) and ``text/html`` (what HTML takes). Charts carry
    their data inline, past altair's 5,000-row guard: the per-depth chart of a three-task study holds ~6,000."""
    import altair as alt
    with alt.data_transformers.disable_max_rows():
        png = base64.b64encode(pdf_png(chart.to_dict(), scale)[0]).decode()
        out = {"image/png": png, "text/plain": f"<{type(chart).__name__}>"}
        if hasattr(chart, "to_html"):
            out["text/html"] = chart_html(chart, png)
    return out
