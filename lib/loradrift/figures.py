"""The book's figures: one function per chart (altair), given the results' frames; chapters show them
with ``report.show``. Each chapter's figures are a section of their own."""
from __future__ import annotations


# ---- deployment
def _batch_axis(df):
    import altair as alt
    return alt.X("batch_size:Q", title="batch size", scale=alt.Scale(type="log", base=2),
                 axis=alt.Axis(values=sorted(int(b) for b in df["batch_size"].unique()), format="d"))


def _first_repeat(lat):
    lat = lat[lat["repeat"] == 0].copy()
    lat["stream"] = lat["stream"].replace({"multi": "interleaved (all tasks)"})
    return lat


def latency_chart(lat, title: str | None = None):
    """Per-request latency (median; the bar reaches the 95th percentile) against batch size, one panel
    per stream (the first repeat)."""
    import altair as alt

    from .serving import MODES
    lat = _first_repeat(lat)
    base = alt.Chart(lat).encode(x=_batch_axis(lat), color=alt.Color("mode:N", sort=list(MODES)))
    line = base.mark_line(point=True).encode(
        y=alt.Y("latency_p50_ms:Q", title="latency per request (ms)", scale=alt.Scale(type="log")),
        tooltip=["mode", "stream", "batch_size", "n_requests", alt.Tooltip("latency_p50_ms:Q", format=".2f"),
                 alt.Tooltip("latency_p95_ms:Q", format=".2f"), alt.Tooltip("latency_p99_ms:Q", format=".2f"),
                 alt.Tooltip("latency_mean_ms:Q", format=".2f"), alt.Tooltip("throughput_rps:Q", format=".1f"),
                 "switches"])
    bar = base.mark_rule(opacity=0.5).encode(y="latency_p50_ms:Q", y2="latency_p95_ms:Q")
    ch = alt.layer(bar, line).properties(width=170, height=170).facet(column=alt.Column("stream:N", title=None))
    return ch.properties(title=title) if title else ch


def throughput_chart(lat):
    """Measured throughput (requests per second over the whole timed stream) against batch size."""
    import altair as alt

    from .serving import MODES
    lat = _first_repeat(lat)
    return alt.Chart(lat).mark_line(point=True).encode(
        x=_batch_axis(lat),
        y=alt.Y("throughput_rps:Q", title="requests / s", scale=alt.Scale(type="log")),
        color=alt.Color("mode:N", sort=list(MODES)),
        tooltip=["mode", "stream", "batch_size", alt.Tooltip("throughput_rps:Q", format=".1f"),
                 alt.Tooltip("pad_fraction:Q", format=".2f")]
    ).properties(width=170, height=170).facet(column=alt.Column("stream:N", title=None))


RATIO_PAIRS = ["lora / merged", "merged / full", "lora / full", "multi / routed-merged", "mixed / routed-merged",
               "mixed / multi"]


def ratio_chart(rat):
    """Latency ratios between modes with their 95% intervals, one panel per pair (``RATIO_PAIRS``)."""
    import altair as alt
    r = rat.copy()
    r["pair"] = r["numerator"] + " / " + r["denominator"]
    r["stream"] = r["stream"].replace({"multi": "interleaved"})
    r = r[r["pair"].isin(RATIO_PAIRS)]
    base = alt.Chart(r).encode(
        y=alt.Y("stream:N", title=None), color=alt.Color("batch_size:O", title="batch size"),
        yOffset="batch_size:O")
    pts = base.mark_point(filled=True).encode(
        x=alt.X("ratio:Q", title="latency ratio", scale=alt.Scale(type="log", zero=False)),
        tooltip=["pair", "stream", "batch_size", alt.Tooltip("ratio:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f"), "paired"])
    bars = base.mark_rule().encode(x="ci_low:Q", x2="ci_high:Q")
    one = alt.Chart().mark_rule(strokeDash=[4, 3], color="gray").encode(x=alt.datum(1.0))
    return alt.layer(one, bars, pts, data=r).properties(width=260, height=110).facet(
        facet=alt.Facet("pair:N", title=None, sort=RATIO_PAIRS), columns=2)
