"""What chapters call for display: the active profile, results on demand, and output that works in
HTML and PDF (notes, tables, charts, numbers formatted for prose).

Nothing here computes a finding: ``findings`` and ``search_findings`` return the numbers, ``figures``
draws them. A chapter's cells only *load and plot* when results exist, so rendering takes seconds. When
a result is missing, ``ensure`` computes it through its stage (``quarto render --execute`` on a GPU
reruns the study) unless ``LORADRIFT_COMPUTE=never`` (the chapter test, CI), in which case the chapter
says what is missing and which command computes it. A result file a reader cannot read is left out and
named in a note (``store.UnreadableResult`` warnings are shown as notes in a notebook).
"""
from __future__ import annotations

import base64
import math
import os
import warnings

from .config import active_profile, load_profile
from .findings import outdated
from .stages import get_stage
from .store import UnreadableResult, data_dir


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
    st = get_stage(stage)
    prof = load_profile(profile())
    if compute_mode() != "never":
        st.run(prof, tasks=tasks)
    return has_results(stage, prof["name"])


def shown_profile(stage: str) -> str:
    """The profile whose ``stage`` results a chapter shows: the active profile once it has them; until
    then, the earlier run the profile names as ``interim`` (if that has them), with a note saying so."""
    name = profile()
    earlier = load_profile(name).get("interim")
    if earlier and not has_results(stage, name) and has_results(stage, earlier):
        note(f"**Interim results.** The `{name}` profile's {get_stage(stage).help} are not computed yet "
             f"(`{command(stage)}`). Until they are, this chapter shows those of the study's first run "
             f"(profile `{earlier}`), whose tasks mostly did not learn (see the Training chapter): "
             "read them as the state before the redesign, not as answers.")
        return earlier
    return name


def has_results(stage: str, prof_name: str) -> bool:
    return any(data_dir(prof_name).glob(get_stage(stage).results))


def command(stage: str) -> str:
    return get_stage(stage).command(profile())


def missing_note(stage: str, what: str | None = None):
    note(f"**Not computed yet** for the `{profile()}` profile: {what or get_stage(stage).help}. "
         f"Run `{command(stage)}` (or render with `quarto render --execute`) to compute it.")


def outdated_note(stage: str, prof_name: str | None = None) -> None:
    """Show a note when a stage's committed results come from superseded training units (nothing otherwise;
    it returns None so that a chapter's last line displays nothing)."""
    from .tasks import task_name
    items = outdated(prof_name)[stage]
    if not items:
        return
    if stage == "train":
        what = (f"{len(items)} training unit(s) ({', '.join(items)}) were made with values the profile no "
                "longer has; they are shown until re-trained")
    elif stage == "drift":
        what = (f"the drift results of {', '.join(map(task_name, items))} were computed with other drift "
                "settings or from training units that have since been re-trained")
    elif items == ["settings"]:
        what = "the benchmark ran with settings the profile no longer has"
    else:
        what = f"the benchmark served models ({', '.join(items)}) that have since been re-trained"
    note(f"**Out of date:** {what}. Run `{command(stage)}` to bring them up to date.")


# ---------------------------------------------------------------------------- display
def _display(bundle: dict):
    from IPython.display import display
    display(bundle, raw=True)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A result a reader could not read, as a note in the chapter (in a notebook); anything else as Python shows it."""
    if issubclass(category, UnreadableResult) and _in_notebook():
        note(f"**Unreadable result:** {message}.")
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


# Python's own display of warnings (taken from an earlier hook when this module is reloaded)
_python_show_warning = _show_warning.original = getattr(warnings.showwarning, "original", warnings.showwarning)
warnings.showwarning = _show_warning


def note(text: str):
    """A markdown paragraph (a callout-like note in both HTML and PDF)."""
    _display({"text/markdown": text, "text/plain": text})


def table(df, digits: int = 3, index: bool = False, as_written: bool = False):
    """A pandas DataFrame as a markdown table: the same readable table in HTML and PDF.

    ``as_written`` shows every value as its text (no number formatting: '2e-05' stays '2e-05')."""
    # a '|' in a header or a cell would end the pipe table's column: write it as the escaped '\|'
    pipe = lambda v: v.replace("|", "\\|") if isinstance(v, str) else v  # noqa: E731
    shown = df.rename(columns=pipe).map(pipe).astype(object)
    shown = shown.where(df.notna().to_numpy(), None)   # a missing value reads as '–', not 'nan'
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


def missing(x) -> bool:
    """None or NaN: a value a stage has not computed."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x, digits: int = 3) -> str:
    """A number for prose: fixed digits, or 'n/a' for missing values."""
    if missing(x):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


_SUP = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def sig(x, digits: int = 3, na: str = "n/a") -> str:
    """A number with ``digits`` significant figures; small or large ones as m × 10ⁿ (text, never
    re-parsed as a number by a table formatter)."""
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


def thousands(n) -> str:
    """A count with thousands separators ('134,516,160'), or 'n/a'."""
    return "n/a" if missing(n) else f"{int(n):,}"


def listing(items) -> str:
    """Items for prose: 'A', 'A and B', 'A, B and C'."""
    items = [str(i) for i in items]
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


def pct(x, digits: int = 1) -> str:
    return "n/a" if missing(x) else f"{100 * x:.{digits}f}%"
