"""Uncertainty and tests: bootstrap intervals and permutation nulls over examples (through each
measure's registered fast path), and the across-seed comparison (Welch t, exact permutation test,
Hedges' g, Holm's adjustment over the primary endpoints, Benjamini-Hochberg over the exploratory tests).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special, stats

from .grams import Gram, Permutations, Resamples
from .measures import as_arrays, get_measure, grams_of


# ------------------------------------------------------------------------------------ over examples
def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Row indices of the bootstrap resamples, [n_boot, n]; the ones `bootstrap_replicates` uses."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


@functools.lru_cache(maxsize=8)
def resamples(n: int, n_boot: int, seed: int, chunk: int) -> Resamples:
    """The draws of `bootstrap_indices`, named: every comparison of n examples with the same
    settings shares them, and with them each `Gram`'s products with the counts."""
    idx = bootstrap_indices(n, n_boot, seed)
    idx.flags.writeable = False
    return Resamples(idx, n, chunk, key=(n, n_boot, seed, chunk))


@functools.lru_cache(maxsize=8)
def permutations(n: int, n_perm: int, seed: int) -> Permutations:
    """The permutations `permutation_null` uses, named like `resamples`."""
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(n_perm)]
    for p in perms:
        p.flags.writeable = False
    return Permutations(perms, key=(n, n_perm, seed))


def _checked(X, Y, m):
    """(X, Y) as the measure takes them, and n; an error if the measure needs more examples."""
    X, Y = grams_of(X, Y) if m.grams else as_arrays(X, Y)
    n = X.n if isinstance(X, Gram) else X.shape[0]
    if n < m.min_examples:
        raise ValueError(f"{m.name} needs at least {m.min_examples} examples, got {n}")
    return X, Y, n


def bootstrap_replicates(X, Y, measure, n_boot: int = 1000, seed: int = 0, duplicates: str = "distinct",
                         chunk: int = 250) -> np.ndarray:
    """The measure on n_boot resamples of the examples (the same rows of X and Y) -> [n_boot].

    X, Y: arrays, or `Gram`s (a cache's: their Grams and products are reused). measure: a
    registered name, a `Measure`, or a function fn(X, Y) -> float. A measure with a registered fast
    path uses it (the Gram measures: the Grams' products with the resample counts, memory a few
    n x n float64 matrices plus chunk x n; duplicates "distinct" (default) or "rows", see the comment
    in `drift.measures`). Any other function is recomputed on X[idx], Y[idx] ("rows" behaviour,
    slow). ``chunk``: replicates computed together by a fast path.
    """
    m = get_measure(measure)
    X, Y, n = _checked(X, Y, m)
    if m.resampled is None:
        X, Y = as_arrays(X, Y)
        return np.array([m.fn(X[i], Y[i]) for i in bootstrap_indices(n, n_boot, seed)])
    return m.resampled(X, Y, resamples(n, n_boot, seed, chunk), duplicates)


def bootstrap_ci(X, Y, measure, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 duplicates: str = "distinct") -> tuple[float, float, float]:
    """(point, lo, hi): the measure on all examples and a percentile bootstrap interval.

    The interval is the [alpha/2, 1 - alpha/2] quantiles of `bootstrap_replicates`; it covers
    example-sampling noise only (not seed-to-seed training noise). nan replicates are ignored.
    duplicates="rows" reproduces published practice, which is biased for the Gram measures; the
    derivation of "distinct" and the simulations behind it are in the comment above the fast paths
    in `loradrift.drift.measures`.
    """
    point = float(get_measure(measure).value(X, Y))
    reps = bootstrap_replicates(X, Y, measure, n_boot=n_boot, seed=seed, duplicates=duplicates)
    lo, hi = np.nanquantile(reps, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


def permutation_null(X, Y, measure, n_perm: int = 200, seed: int = 0) -> np.ndarray:
    """The measure with the example pairing broken (rows of Y permuted) -> [n_perm].

    This is the null distribution of "X and Y are no more alike than unrelated examples". A
    measure's registered fast path reuses the Grams (only the cross term depends on the
    permutation; with `Gram`s from a cache, one pass over the permutations serves every Gram
    measure of the pair). A one-sided p-value for the paired value v is
    (1 + (null >= v).sum()) / (1 + n_perm).
    """
    m = get_measure(measure)
    X, Y, n = _checked(X, Y, m)
    perms = permutations(n, n_perm, seed)
    if m.permuted is not None:
        return m.permuted(X, Y, perms)
    X, Y = as_arrays(X, Y)
    return np.array([m.fn(X, Y[p]) for p in perms.perms])


def mean_interval(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-chunk loss differences)."""
    v = np.asarray(values, dtype=np.float64)
    bs = v[np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))].mean(1)
    lo, hi = np.quantile(bs, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------ across seeds
def hedges_g(a, b) -> float:
    """Hedges' g = J * (mean(a) - mean(b)) / pooled sd, with the exact small-sample factor
    J = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)), df = n_a + n_b - 2 (about 1 - 3/(4 df - 1)).
    Both groups constant: 0 if the means are equal, else +-inf."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    df = len(a) + len(b) - 2
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / df)
    j = math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)
    diff = a.mean() - b.mean()
    if pooled == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return j * diff / pooled


def compare_groups(a, b, n_resamples=None) -> dict:
    """Compare per-seed values a (method A) with b (method B).

    Returns a dict with n_a, n_b, mean_a, sd_a, mean_b, sd_b (sd with ddof=1), diff (mean_a -
    mean_b), diff_low and diff_high (Welch's 95% interval of diff; diff itself when both groups are
    constant), welch_t and welch_p (two-sided, unequal variances), perm_p (two-sided permutation test
    of the difference of means; exact over all C(n_a + n_b, n_a) relabelings when n_resamples is
    None: 184,756 for 10 vs 10, under a second), min_attainable_p (2 / C(n_a + n_b, n_a): the
    smallest perm_p the design allows: 0.1 for 3 vs 3, 1.1e-5 for 10 vs 10), hedges_g and
    no_variance.

    ``no_variance``: both groups constant (e.g. models that did not move from the base). Welch's t
    is then undefined: with equal means the result is t = 0 and p = 1 (nothing differs); with
    different means t = +-inf and p = 0 (the limit); the exact permutation p stays what it is
    (1, or the smallest attainable), and is the one to read.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each group needs at least 2 values")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("per-seed values must be finite (drop the nan ones first)")
    no_variance = bool(np.ptp(a) == 0 and np.ptp(b) == 0)
    diff = float(a.mean() - b.mean())
    if no_variance:  # scipy's own answer here depends on rounding in its mean (nan, or a huge finite t)
        welch_t, welch_p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
        low = high = diff
    else:
        welch = stats.ttest_ind(a, b, equal_var=False)
        welch_t, welch_p = float(welch.statistic), float(welch.pvalue)
        low, high = (float(v) for v in welch.confidence_interval(0.95))
    perm = stats.permutation_test(
        (a, b), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        permutation_type="independent", alternative="two-sided",
        n_resamples=np.inf if n_resamples is None else n_resamples, vectorized=True, random_state=0)
    return {"n_a": len(a), "n_b": len(b), "mean_a": float(a.mean()), "sd_a": float(a.std(ddof=1)),
            "mean_b": float(b.mean()), "sd_b": float(b.std(ddof=1)), "diff": diff,
            "diff_low": low, "diff_high": high, "welch_t": welch_t, "welch_p": welch_p, "perm_p": float(perm.pvalue),
            "min_attainable_p": min(1.0, 2.0 / math.comb(len(a) + len(b), len(a))), "hedges_g": hedges_g(a, b),
            "no_variance": no_variance}


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Sorted ascending, p_(i) becomes max over j <= i of (m - j + 1) p_(j), capped at 1
    (step-down, so the adjusted values are monotone in the raw ones).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.isnan(p).any():
        raise ValueError("holm needs a 1-D array of p-values without nan")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def holm_family(pvalues, m: int | None = None) -> np.ndarray:
    """Holm over a pre-registered family of ``m`` tests (default: as many as given) of which some
    may be missing (nan, e.g. a task without results): a missing test counts as p = 1, so the others
    are adjusted for the whole family, and stays nan in the output."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p) if m is None else m
    if m < len(p):
        raise ValueError(f"a family of {m} tests cannot hold {len(p)} p-values")
    full = np.concatenate([np.where(np.isnan(p), 1.0, p), np.ones(m - len(p))])
    return np.where(np.isnan(p), np.nan, holm(full)[:len(p)])


def bh(pvalues) -> np.ndarray:
    """Benjamini-Hochberg q-values (scipy's `false_discovery_control`), in the input order; nan stays nan."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out
