"""Representation similarity measures, in one registry: name -> `Measure`.

A representation is a matrix X of shape [n, d]: n examples in rows, d features in columns; two
representations compared have the same n, row i the same example. Measures take numpy arrays
(torch tensors are converted to float64); the Gram measures also take `grams.Gram`s, whose Gram
matrices are built once and reused (`grams.Grams`, the drift stage's cache).

A `Measure` holds the function, whether it is a similarity (1 = identical) or a distance (0 =
identical), whether the stage gives it a bootstrap interval, whether it is a Gram measure, and
optional fast paths for the bootstrap (`resampled`) and the permutation null (`permuted`) that
`drift.stats` uses instead of recomputing the measure per replicate. Adding a measure is one
`register_measure(Measure(...))` (here or in a user's code) plus, to compute it in the stage, its
name under a pooling in the profile's ``drift.measures``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .grams import Gram, Permutations, Resamples, as64, hsic_unbiased, pair

__all__ = ["MEASURES", "Measure", "as64", "debiased_cka", "get_measure", "linear_cka", "mean_cosine",
           "original_study_similarity", "pair", "per_example_cosine", "procrustes", "register_measure",
           "standardized_cka", "standardized_debiased_cka", "unmatched_cosine"]


@dataclass(frozen=True)
class Measure:
    name: str
    fn: Callable                       # (X, Y) -> float
    similarity: bool = True            # False: a distance (0 = identical)
    interval: bool = True              # the stage computes a bootstrap interval for it
    resampled: Callable | None = None  # fast bootstrap: (X, Y, draws: Resamples, duplicates) -> [B]
    permuted: Callable | None = None   # fast null: (X, Y, perms: Permutations) -> [P]
    min_examples: int = 1
    grams: bool = False                # fn and the fast paths take `Gram`s (cached ones are reused)
    unmatched: Callable | None = None  # (X, Y) -> the measure over pairs of *different* examples (a null)

    def drift(self, value):
        """How far apart: 1 - similarity, or the distance itself."""
        return 1 - value if self.similarity else value

    def operands(self, X, Y):
        """(X, Y) as this measure's functions take them: `Gram`s for a Gram measure (a given Gram
        as it is, an array wrapped afresh), else the representations as given."""
        if self.grams:
            return grams_of(X, Y)
        return tuple(Z.X if isinstance(Z, Gram) else Z for Z in (X, Y))

    def value(self, X, Y):
        """The measure of X and Y (arrays or `Gram`s)."""
        return self.fn(*self.operands(X, Y))

    def unmatched_value(self, X, Y):
        """The measure over pairs of different examples (its registered null), or None without one."""
        return None if self.unmatched is None else float(self.unmatched(*self.operands(X, Y)))


MEASURES: dict[str, Measure] = {}


def register_measure(measure: Measure) -> Measure:
    MEASURES[measure.name] = measure
    return measure


def get_measure(measure) -> Measure:
    """A registered measure by name (or the `Measure` itself); a plain function becomes an
    unregistered measure without fast paths."""
    if isinstance(measure, Measure):
        return measure
    if isinstance(measure, str):
        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; known: {sorted(MEASURES)}")
        return MEASURES[measure]
    for m in MEASURES.values():
        if measure is m.fn:
            return m
    return Measure(getattr(measure, "__name__", "custom"), measure)


# ------------------------------------------------------------------------------------ helpers
def grams_of(X, Y) -> tuple[Gram, Gram]:
    """Both sides as `Gram`s (a Gram as it is, an array as a fresh uncached one), with the same n."""
    G, H = (Z if isinstance(Z, Gram) else Gram(Z) for Z in (X, Y))
    if G.n != H.n:
        raise ValueError(f"X and Y need the same number of rows (examples): {G.Xc.shape} vs {H.Xc.shape}")
    return G, H


def as_arrays(X, Y) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as float64 arrays (a `Gram`'s representation for a Gram)."""
    return pair(*(Z.X if isinstance(Z, Gram) else Z for Z in (X, Y)))


def _gram_is_cheaper(n: int, d1: int, d2: int) -> bool:
    # Gram form costs ~ n^2 (d1 + d2) flops, feature form ~ n (d1 d2 + d1^2 + d2^2).
    # For d1 = d2 = d this is "use the Gram form when n < 1.5 d".
    return n * (d1 + d2) < d1 * d1 + d1 * d2 + d2 * d2


def _gram_form(G: Gram, H: Gram) -> bool:
    # cached Grams: K is built (and kept) anyway, so <K, L> costs only n^2
    return G.cached or H.cached or _gram_is_cheaper(G.n, G.d, H.d)


def _sq(A: np.ndarray) -> float:
    return float((A * A).sum())


def _cross(G: Gram, H: Gram) -> float:
    """||Xc^T Yc||_F^2 = <Kc, Lc>, in the Gram form or the feature form."""
    return float((G.K * H.K).sum()) if _gram_form(G, H) else _sq(G.Xc.T @ H.Xc)


def _self(G: Gram, gram_form: bool) -> float:
    """||Xc^T Xc||_F^2 = ||Kc||_F^2."""
    return G.fro2 if gram_form else _sq(G.Xc.T @ G.Xc)


# ------------------------------------------------------------------------------------ the measures
def linear_cka(X, Y) -> float:
    """Linear CKA (Kornblith et al. 2019): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F).

    Xc, Yc are column-centred. Invariant to orthogonal transforms and isotropic scaling of either
    side, not to general invertible linear maps. This is the plug-in ("biased") estimator: for
    n < d it is far above 0 even for independent random X and Y; see `debiased_cka`.
    Computed in the n x n Gram form (always for cached `Gram`s) or the d x d feature form,
    whichever is cheaper.
    """
    G, H = grams_of(X, Y)
    form = _gram_form(G, H)
    return _cross(G, H) / math.sqrt(_self(G, form) * _self(H, form))


def debiased_cka(X, Y) -> float:
    """CKA with the unbiased HSIC estimator (Song et al. 2012; Nguyen, Raghu & Kornblith 2021).

    With linear Grams K = X X^T, L = Y Y^T and K~, L~ those with the diagonal set to zero:

        HSIC_u(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))
        CKA_u = HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L))

    HSIC_u is translation invariant, so no centring is needed (the Grams are of the centred data,
    which keeps their magnitudes small). Unlike linear CKA it is near 0 for independent X, Y even
    when n < d, and it can be slightly negative (not clipped). Needs n >= 4; nan if a self-term
    HSIC_u(K, K) is not positive (e.g. a constant representation).
    """
    G, H = grams_of(X, Y)
    if G.n < 4:
        raise ValueError(f"debiased CKA needs at least 4 examples, got {G.n}")
    denom = G.hsic_self * H.hsic_self
    return hsic_unbiased(G, H) / math.sqrt(denom) if denom > 0 else float("nan")


def original_study_similarity(X, Y) -> float:
    """The formula the original study called "CKA". It is NOT CKA.

        tr(Yc^T Xc Xc^T Yc) / (sqrt(tr(Xc^T Xc) tr(Yc^T Yc)))^2 = ||Xc^T Yc||_F^2 / (||Xc||_F^2 ||Yc||_F^2)

    The denominator uses squared Frobenius norms of Xc, Yc instead of ||Xc^T Xc||_F ||Yc^T Yc||_F,
    so the measure is not normalised: its self-similarity is sum(s^4) / (sum(s^2))^2 over the
    singular values s of Xc, which is below 1 unless Xc has rank 1. It measures how concentrated
    the spectra are (about 1/d + 1/n for iid Gaussian data: 0.0064 for 400 x 256) as much as how
    similar X and Y are. Kept only to reproduce the original study.
    """
    G, H = grams_of(X, Y)
    return _cross(G, H) / (G.sq * H.sq)


def per_example_cosine(X, Y) -> np.ndarray:
    """Cosine between row i of X and row i of Y (uncentred), for each example -> [n].

    X and Y must have the same shape. A zero row gives nan for that example.
    """
    X, Y = pair(X, Y)
    if X.shape != Y.shape:
        raise ValueError(f"cosine needs X and Y of the same shape: {X.shape} vs {Y.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return (X * Y).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1))


def mean_cosine(X, Y) -> float:
    """Mean over examples of the uncentred cosine between matching rows of X and Y."""
    return float(per_example_cosine(X, Y).mean())


def unmatched_cosine(X, Y) -> float:
    """The null of `mean_cosine`: the mean cosine between row i of X and row j of Y over every pair
    of *different* examples (i != j), exactly (no sampling). Pooled states share a large common
    direction, so unrelated examples already have a high cosine; a matched cosine means little
    until it is read against this one."""
    X, Y = pair(X, Y)
    n = X.shape[0]
    if n < 2:
        raise ValueError("unmatched cosine needs at least 2 examples")
    with np.errstate(invalid="ignore", divide="ignore"):
        Xn, Yn = (Z / np.linalg.norm(Z, axis=1, keepdims=True) for Z in (X, Y))
    return float((Xn.sum(0) @ Yn.sum(0) - (Xn * Yn).sum()) / (n * (n - 1)))


def standardized_cka(X, Y) -> float:
    """Linear CKA of the standardised representations: every coordinate z-scored first
    (`grams.Gram.standardized`).

    Linear CKA weighs each direction by its squared variance, so a coordinate holding most of the
    variance (as the attention sink's does in an unfixed mean pooling) decides it alone; after
    z-scoring every coordinate weighs the same. Invariant to per-coordinate scaling and shifts of
    either side (and to permuting coordinates), not to rotations. A plug-in estimator: standardising
    raises the effective dimension, and with it the upward bias for n not far above d; see
    `standardized_debiased_cka`. Bootstrap replicates keep the full sample's standardisation.
    """
    G, H = grams_of(X, Y)
    return linear_cka(G.standardized, H.standardized)


def standardized_debiased_cka(X, Y) -> float:
    """Debiased CKA (`debiased_cka`) of the standardised representations (see `standardized_cka`)."""
    G, H = grams_of(X, Y)
    return debiased_cka(G.standardized, H.standardized)


def procrustes(X, Y) -> float:
    """Orthogonal Procrustes distance of the centred, Frobenius-normalised representations.

        X~ = Xc / ||Xc||_F,  Y~ = Yc / ||Yc||_F
        procrustes(X, Y) = 1 - ||X~^T Y~||_*  =  min over Q with orthonormal columns of ||X~ - Y~ Q||_F^2 / 2

    (||.||_* the nuclear norm, the sum of singular values; for d1 != d2 the smaller side is padded
    with zero columns). In [0, 1]: 0 exactly when Y is X rotated or reflected (up to a shift and an
    isotropic scale), 1 when X~^T Y~ = 0. Half the squared Procrustes distance of Ding, Denain &
    Steinhardt (2021), whose square root is a metric. It weighs directions by their singular values,
    not by their squares as CKA does, so a few large coordinates decide it less. One d1 x d2 SVD per
    call (float64, exact to rounding near 0): no bootstrap fast path, so the stage gives it no interval.
    """
    X, Y = pair(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    nx, ny = np.linalg.norm(Xc), np.linalg.norm(Yc)
    if nx == 0 or ny == 0:
        return float("nan")
    return float(1.0 - np.linalg.svd((Xc / nx).T @ (Yc / ny), compute_uv=False).sum())


# ------------------------------------------------------------------------------------ fast paths
# Bootstrap replicate b draws rows idx_b of X and Y with replacement. Its Gram matrices are
# K[idx_b][:, idx_b], and every quantity the Gram-based measures need is a linear or quadratic form
# in the counts w_b (w_b[i] = how often example i was drawn), e.g.
#     tr(K_b L_b) = w^T (K o L) w,   1^T K_b 1 = w^T K w,   1^T K_b L_b 1 = sum_i w_i (K w)_i (L w)_i.
# So B replicates cost a few [B, n] @ [n, n] matmuls instead of B separate n x n recomputations,
# and the products of one Gram with the counts (`Gram.weighted`, `.weighted_sq`) serve every
# measure and every comparison of that Gram under the same draw; a pair's cross term
# (`.weighted_cross`) serves each of its measures.
#
# Duplicates. A resample holds about 0.63 n distinct examples, some several times, and the Gram
# entry between two copies of one example is that example's self-similarity ||x_i||^2, which in
# high dimension is far larger than a typical cross entry x_i . x_j. The unbiased HSIC estimator
# removes self-similarities by zeroing the diagonal, but copies sit off the diagonal; the plug-in
# measures count them as extra self-terms. Either way the naive replicates ("rows": the measure
# recomputed on X[idx], Y[idx], which is what published code does) are biased upwards, badly when
# n is not much larger than d: with n = 300, d = 300 and independent X, Y, debiased CKA is -0.007
# but its "rows" replicates lie in [0.45, 0.53], and the percentile intervals of all three Gram
# measures exclude their point estimates. The default, "distinct", sets the Gram entries between
# two copies of the same example to 0 (each copy keeps its own diagonal), i.e. a resampled example
# never meets a copy of itself. The replicates are then centred on the point estimate (within a
# few tenths of the interval's half-width in the cases above) and their spread is a slightly
# conservative (+20-30 % in simulations) estimate of the estimator's sampling sd. For debiased
# CKA this is the unbiased estimator over pairs of distinct positions with same-example pairs
# contributing 0; for the plug-in measures it is a heuristic. Grams are built from data centred
# at the full-sample mean (the measures themselves are translation invariant; the zeroed entries
# are not, so this fixes the convention). Cosine is per-example and needs none of this.
def _sums(W, g, Aw, dA, Bw, dB, ABw):
    """(tr(A_b B_b), 1^T A_b 1, 1^T B_b 1, 1^T A_b B_b 1) of the resampled (diagonal-adjusted)
    matrices, from Aw = W @ A~, Bw = W @ B~, ABw = W @ (A~ o B~) and the diagonals dA, dB."""
    rA, rB = Aw + g * dA, Bw + g * dB  # row sums of the resampled matrices, per original example
    trace = (W * ABw).sum(1) + (W * g) @ (dA * dB)
    return trace, (W * rA).sum(1), (W * rB).sum(1), (W * rA * rB).sum(1)


def _adjust(W, duplicates: str, drop_own_diagonal: bool):
    # Each copy of example i meets e_i entries equal to its self-similarity: itself, plus its
    # w_i - 1 other copies under "rows". The debiased estimator drops the copy's own diagonal.
    if duplicates not in ("rows", "distinct"):
        raise ValueError(f"duplicates must be 'rows' or 'distinct', got {duplicates!r}")
    e = W if duplicates == "rows" else np.ones_like(W)
    return e - 1.0 if drop_own_diagonal else e


def _pair_sums(G: Gram, H: Gram, draws: Resamples, c: int, duplicates: str, drop: bool):
    """`_sums` of (K, L) for chunk c of the draws."""
    W = draws.counts[c][1]
    return _sums(W, _adjust(W, duplicates, drop), G.weighted(draws, c), G.diag, H.weighted(draws, c), H.diag,
                 G.weighted_cross(H, draws, c))


def _self_sums(G: Gram, draws: Resamples, c: int, duplicates: str, drop: bool):
    """`_sums` of (K, K) for chunk c of the draws."""
    W = draws.counts[c][1]
    Kw = G.weighted(draws, c)
    return _sums(W, _adjust(W, duplicates, drop), Kw, G.diag, Kw, G.diag, G.weighted_sq(draws, c))


def _centred(n, trace, sA, sB, cross):  # tr(H A H B) with H = I - 11^T/n
    return trace - 2.0 * cross / n + sA * sB / n**2


def _cka_weighted(G, H, draws, c, duplicates):
    n = G.n
    kl = _pair_sums(G, H, draws, c, duplicates, False)
    kk, ll = _self_sums(G, draws, c, duplicates, False), _self_sums(H, draws, c, duplicates, False)
    return _centred(n, *kl) / np.sqrt(_centred(n, *kk) * _centred(n, *ll))


def _original_weighted(G, H, draws, c, duplicates):
    n, W = G.n, draws.counts[c][1]
    kl = _pair_sums(G, H, draws, c, duplicates, False)
    _, sK, sL, _ = kl
    return _centred(n, *kl) / ((W @ G.diag - sK / n) * (W @ H.diag - sL / n))  # ||Xc_b||^2 = tr(H K_b H)


def _debiased_weighted(G, H, draws, c, duplicates):
    n = G.n

    def hsic_u(trace, sA, sB, cross):
        return (trace + sA * sB / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))

    kl = _pair_sums(G, H, draws, c, duplicates, True)
    kk, ll = _self_sums(G, draws, c, duplicates, True), _self_sums(H, draws, c, duplicates, True)
    num, denom = hsic_u(*kl), hsic_u(*kk) * hsic_u(*ll)
    return np.where(denom > 0, num / np.sqrt(np.where(denom > 0, denom, 1.0)), np.nan)


def _gram_resampled(weighted):
    """A bootstrap fast path from a Gram measure on counts: weighted(G, H, draws, chunk, duplicates) -> [rows]."""
    def resampled(X, Y, draws: Resamples, duplicates="distinct"):
        G, H = grams_of(X, Y)
        out = np.empty(len(draws.idx))
        for c, (start, W) in enumerate(draws.counts):
            out[start:start + len(W)] = weighted(G, H, draws, c, duplicates)
        return out
    return resampled


def _cka_permuted(X, Y, perms: Permutations, original: bool = False):
    # only tr(Kc Lc[p][:, p]) depends on the permutation p; the self-terms do not change
    G, H = grams_of(X, Y)
    full, _, _ = G.permuted_cross(H, perms)
    return full / (G.trace * H.trace if original else math.sqrt(G.fro2 * H.fro2))


def _debiased_permuted(X, Y, perms: Permutations):
    G, H = grams_of(X, Y)
    n, denom = G.n, G.hsic_self * H.hsic_self
    _, zero, rows = G.permuted_cross(H, perms)
    h = zero + G.zero_total * H.zero_total / ((n - 1) * (n - 2)) - 2.0 * rows / (n - 2)
    return h / (n * (n - 3)) / math.sqrt(denom) if denom > 0 else np.full(len(perms.perms), np.nan)


def _on_standardized(weighted):
    """A Gram fast path applied to both sides' standardised Grams."""
    return lambda G, H, draws, c, duplicates: weighted(G.standardized, H.standardized, draws, c, duplicates)


def _standardized(X, Y) -> tuple[Gram, Gram]:
    G, H = grams_of(X, Y)
    return G.standardized, H.standardized


def _cosine_resampled(X, Y, draws: Resamples, duplicates="distinct"):
    return per_example_cosine(X, Y)[draws.idx].mean(1)


def _cosine_permuted(X, Y, perms: Permutations):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Yn = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    return np.array([(Xn * Yn[p]).sum(1).mean() for p in perms.perms])


register_measure(Measure("cka", linear_cka, resampled=_gram_resampled(_cka_weighted), permuted=_cka_permuted,
                         grams=True))
register_measure(Measure("debiased_cka", debiased_cka, resampled=_gram_resampled(_debiased_weighted),
                         permuted=_debiased_permuted, min_examples=4, grams=True))
register_measure(Measure("original_study_similarity", original_study_similarity,
                         resampled=_gram_resampled(_original_weighted),
                         permuted=lambda X, Y, perms: _cka_permuted(X, Y, perms, original=True), grams=True))
register_measure(Measure("standardized_cka", standardized_cka, resampled=_gram_resampled(_on_standardized(_cka_weighted)),
                         permuted=lambda X, Y, perms: _cka_permuted(*_standardized(X, Y), perms), grams=True))
register_measure(Measure("standardized_debiased_cka", standardized_debiased_cka,
                         resampled=_gram_resampled(_on_standardized(_debiased_weighted)),
                         permuted=lambda X, Y, perms: _debiased_permuted(*_standardized(X, Y), perms),
                         min_examples=4, grams=True))
register_measure(Measure("procrustes", procrustes, similarity=False, interval=False, min_examples=2))
register_measure(Measure("cosine", mean_cosine, resampled=_cosine_resampled, permuted=_cosine_permuted,
                         unmatched=unmatched_cosine))
