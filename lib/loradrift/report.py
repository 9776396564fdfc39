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
        what = (f"{plural(len(items), 'training unit')} ({', '.join(items)}) {'was' if len(items) == 1 else 'were'} "
                "made with values the profile no longer has; shown until re-trained")
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


# raw column names some tables still carry, as a reader should see them (any other '_' becomes a space)
HEADERS = {"ci_low": "95% CI low", "ci_high": "95% CI high", "n_batches": "batches", "base_ppl": "base ppl",
           "ppl_ratio": "ppl ratio", "delta_nll": "Δ loss", "delta_nll_lo": "Δ loss 95% low",
           "delta_nll_hi": "Δ loss 95% high"}
# raw values of a cell (measure names) as a reader should see them
VALUES = {"cka": "linear CKA", "debiased_cka": "debiased CKA"}


def header(name) -> str:
    """A column name for display: known raw names spelled out, '_' as spaces, sizes in MiB (every byte
    count in this book is divided by 2**20)."""
    import re
    text = HEADERS.get(name, str(name).replace("_", " "))
    return re.sub(r"\bMB\b", "MiB", text)


def column(values, digits: int = 3) -> list[str | None]:
    """One table column as text, in one notation: booleans as yes/no; floats with ``digits`` decimals,
    or all in m × 10ⁿ when a value would show fewer than two significant digits (or is ≥ 10⁶); integers
    with thousands separators once any reaches 10,000; a raw measure name spelled out; None where missing."""
    vals = [None if _absent(v) else v.item() if hasattr(v, "item") else v for v in values]
    nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    fractional = [abs(v) for v in nums if isinstance(v, float) and not v.is_integer()]
    # a float column of whole numbers holds counts (a count column with a gap is float) once one reaches 10
    counts = not fractional and any(isinstance(v, float) for v in nums) and max(map(abs, nums)) >= 10
    nonzero = [v for v in fractional if v != 0]
    scientific = bool(nonzero) and (min(nonzero) < 10 ** (1 - digits) or max(nonzero) >= 1e6)
    wide = any(abs(v) >= 10_000 for v in nums)

    def one(v):
        if v is None:
            return None
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, str):
            return VALUES.get(v, v)
        if isinstance(v, int) or (isinstance(v, float) and counts):
            return f"{int(v):,}" if wide else str(int(v))
        if isinstance(v, float):
            return sci(v, 3) if scientific else signed(v, digits, plus=False)
        return str(v)
    return [one(v) for v in vals]


def _absent(v) -> bool:
    """None, NaN or pandas' NA."""
    import pandas as pd
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):   # a list or array: a value
        return False


def table(df, digits: int = 3, index: bool = False, as_written: bool = False):
    """A pandas DataFrame as a markdown table: the same readable table in HTML and PDF.

    Every column is written as text by ``column`` (its headers by ``header``), numbers right-aligned;
    ``as_written`` shows every value as its own text instead (a profile's '2e-05' is not rounded to 0.000)."""
    import pandas as pd
    if index:
        df = df.reset_index()
    # a '|' in a header or a cell would end the pipe table's column: write it as the escaped '\|'
    pipe = lambda v: _together(v.replace("|", "\\|")) if isinstance(v, str) else v  # noqa: E731
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    text = (lambda col: [None if _absent(v) else _as_written(v) for v in col]) if as_written else \
        (lambda col: column(col, digits))
    shown = pd.DataFrame([["–" if v is None else pipe(v) for v in row] for row in zip(*(text(df[c]) for c in df.columns))],
                         columns=[pipe(header(c)) for c in df.columns], dtype=object)
    md = _min_col_widths(shown.to_markdown(index=False, disable_numparse=True,
                                           colalign=["right" if n else "left" for n in numeric]))
    _display({"text/markdown": md, "text/plain": shown.to_string(index=False)})


def _together(text: str) -> str:
    for a, b in KEEP_TOGETHER:
        text = text.replace(a, b)
    return text


def _as_written(v) -> str:
    """A value as its own text (a setting as the profile writes it); a boolean as yes/no."""
    v = v.item() if hasattr(v, "item") else v
    return ("yes" if v else "no") if isinstance(v, bool) else str(v)


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
    import re
    cells = lambda ln: [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip()[1:-1])]  # noqa: E731  ('\|' stays in its cell)
    rows = [cells(ln) for ln in lines[:1] + lines[2:]]
    seps = lines[1].strip().strip("|").split("|")
    if any(len(r) != len(seps) for r in rows):
        return md   # not a table this function wrote: leave it as it is
    def words(cell):   # a number with its ± or × 10ⁿ reads as one word (no-break spaces join, too)
        return cell.replace(" ± ", "±").replace(" × ", "×").split(" ") or [""]
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


def show(chart, scale: float = 2.0):
    """An altair chart: interactive (vega-embed) in HTML, a PNG in PDF and plain outputs (``charts``).

    Quarto picks the richest output its format can show: HTML takes ``text/html``, LaTeX/PDF
    takes ``image/png``.
    """
    from .charts import bundle
    _display(bundle(chart, scale))


def missing(x) -> bool:
    """None or NaN: a value a stage has not computed."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x, digits: int = 3) -> str:
    """A number for prose: fixed digits, or 'n/a' for missing values."""
    if missing(x):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


_SUP = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
TIMES = " × "
# in a table cell m × 10ⁿ is held together by no-break spaces (never in prose: Quarto's inline values
# come out as Python's repr, which writes a no-break space as '\xa0')
KEEP_TOGETHER = ((" × ", "\u00a0×\u00a0"),)


def sig(x, digits: int = 3, na: str = "n/a") -> str:
    """A number with ``digits`` significant figures (trailing zeros kept: '0.0020'); small or large
    ones as m × 10ⁿ (text, never re-parsed as a number by a table formatter)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return na
    if math.isnan(x):
        return na
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{max(digits - 1 - math.floor(math.log10(abs(x))), 0)}f}"
    return sci(x, digits)


def sci(x, digits: int = 3, na: str = "n/a") -> str:
    """Always m × 10ⁿ with ``digits`` significant figures ('8.91 × 10⁻³'); 0 as '0'."""
    if missing(x):
        return na
    if x == 0:
        return "0"
    m, e = f"{x:.{digits - 1}e}".split("e")
    return f"{m}{TIMES}10{str(int(e)).translate(_SUP)}"


def written(x, digits: int = 4, na: str = "–") -> str:
    """A setting as a person writes it: up to ``digits`` significant figures, no trailing zeros, and
    m × 10ⁿ where Python would write 'e' ('2 × 10⁻⁵', '0.0204', '3')."""
    if missing(x):
        return na
    text = f"{x:.{digits}g}"
    if "e" not in text:
        return text
    m, e = text.split("e")
    return f"{m}{TIMES}10{str(int(e)).translate(_SUP)}"


def sig_column(values, digits: int = 3, na: str = "n/a") -> list[str]:
    """A column of numbers in one notation: ``sig`` when every non-zero value is between 10⁻³ and 10⁴,
    else all as m × 10ⁿ."""
    vals = [None if missing(v) else float(v) for v in values]
    spread = [abs(v) for v in vals if v]
    plain = all(1e-3 <= v < 1e4 for v in spread)
    return [na if v is None else sig(v, digits) if plain else sci(v, digits) for v in vals]


def signed(x, digits: int = 3, plus: bool = True, na: str = "n/a") -> str:
    """Fixed decimals, with '+' on positive values when ``plus``; a value that rounds to zero has no
    sign ('0.000', never '-0.000')."""
    if missing(x):
        return na
    text = f"{x:{'+' if plus else ''}.{digits}f}"
    return text.lstrip("+-") if float(text) == 0 else text


def pval(x, na: str = "–") -> str:
    """A p- or q-value: 2 significant figures, below 0.001 as '3.1e-06'."""
    return na if missing(x) else f"{x:.2g}" if x >= 0.001 else f"{x:.1e}"


def signed_sig(x, digits: int = 3, na: str = "n/a") -> str:
    """`sig` with '+' on positive values (a difference of any size: '+0.0031', '−2.1 × 10⁻⁴' reads as '-')."""
    text = sig(x, digits, na)
    return "+" + text if text not in (na, "0") and float(x) > 0 else text


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


def plural(n, noun: str, nouns: str | None = None) -> str:
    """A count with its noun: '1 thread', '2 threads'; several counts joined ('1 and 2 threads'); 'n/a'."""
    items = list(n) if isinstance(n, (list, tuple, set)) else [n]
    if not items or any(missing(i) or i == "n/a" for i in items):
        return "n/a"
    one = len(items) == 1 and str(items[0]) == "1"
    return f"{listing(items)} {noun if one else nouns or noun + 's'}"


def at_least(share, noun: str) -> str:
    """The smallest of several shares, for prose: 'all predictions', 'at least 99.5% of the predictions'."""
    if missing(share):
        return "n/a"
    return f"all {noun}" if share >= 1 else f"at least {pct(share)} of the {noun}"
