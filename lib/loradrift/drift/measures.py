"""Representation similarity measures, in one registry: name -> `Measure`.

A representation is a matrix X of shape [n, d]: n examples in rows, d features in columns; two
representations compared have the same n, row i the same example. Measures take numpy arrays
(torch tensors are converted to float64).

A `Measure` holds the function, whether it is a similarity (1 = identical) or a distance (0 =
identical), whether the stage gives it a bootstrap interval, and optional fast paths for the
bootstrap (`resampled`) and the permutation null (`permuted`) that `drift.stats` uses instead of
recomputing the measure per replicate. Adding a measure is one `register_measure(Measure(...))`
(here or in a user's code) plus, to compute it in the stage, its name under a pooling in the
profile's ``drift.measures``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class Measure:
    name: str
    fn: Callable                       # (X, Y) -> float
    similarity: bool = True            # False: a distance (0 = identical)
    interval: bool = True              # the stage computes a bootstrap interval for it
    resampled: Callable | None = None  # fast bootstrap: (X, Y, idx [B, n], duplicates, chunk) -> [B]
    permuted: Callable | None = None   # fast null: (X, Y, perms [P, n]) -> [P]
    min_examples: int = 1

    def drift(self, value):
        """How far apart: 1 - similarity, or the distance itself."""
        return 1 - value if self.similarity else value


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
def as64(X) -> np.ndarray:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().double().numpy()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D [n, d] array, got shape {X.shape}")
    return X


def pair(X, Y) -> tuple[np.ndarray, np.ndarray]:
    X, Y = as64(X), as64(Y)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y need the same number of rows (examples): {X.shape} vs {Y.shape}")
    return X, Y


def _gram_is_cheaper(n: int, d1: int, d2: int) -> bool:
    # Gram form costs ~ n^2 (d1 + d2) flops, feature form ~ n (d1 d2 + d1^2 + d2^2).
    # For d1 = d2 = d this is "use the Gram form when n < 1.5 d".
    return n * (d1 + d2) < d1 * d1 + d1 * d2 + d2 * d2


def _centred_products(X: np.ndarray, Y: np.ndarray) -> tuple[float, float, float]:
    """(||Xc^T Yc||_F^2, ||Xc^T Xc||_F^2, ||Yc^T Yc||_F^2) for column-centred Xc, Yc.

    Uses ||Xc^T Yc||_F^2 = <Kc, Lc> with Kc = Xc Xc^T when the n x n Gram form is cheaper.
    """
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    if _gram_is_cheaper(X.shape[0], X.shape[1], Y.shape[1]):
        K, L = Xc @ Xc.T, Yc @ Yc.T
        return float((K * L).sum()), float((K * K).sum()), float((L * L).sum())
    sq = lambda A: float((A * A).sum())  # noqa: E731
    return sq(Xc.T @ Yc), sq(Xc.T @ Xc), sq(Yc.T @ Yc)


def _centred_grams(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Centring at the full-sample mean changes none of the measures but keeps the expanded
    # formulas of the fast paths free of cancellation when the representations have a large mean.
    X, Y = X - X.mean(0), Y - Y.mean(0)
    return X @ X.T, Y @ Y.T


def _hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC estimator (Song et al. 2012) from uncentred Gram matrices K, L [n, n]."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    trace_kl = (K * L).sum()  # tr(K~ L~), both symmetric
    cross = K.sum(1) @ L.sum(1)  # 1^T K~ L~ 1
    return (trace_kl + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


# ------------------------------------------------------------------------------------ the measures
def linear_cka(X, Y) -> float:
    """Linear CKA (Kornblith et al. 2019): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F).

    Xc, Yc are column-centred. Invariant to orthogonal transforms and isotropic scaling of either
    side, not to general invertible linear maps. This is the plug-in ("biased") estimator: for
    n < d it is far above 0 even for independent random X and Y; see `debiased_cka`.
    Computed in the n x n Gram form or the d x d feature form, whichever is cheaper.
    """
    xy, xx, yy = _centred_products(*pair(X, Y))
    return xy / math.sqrt(xx * yy)


def debiased_cka(X, Y) -> float:
    """CKA with the unbiased HSIC estimator (Song et al. 2012; Nguyen, Raghu & Kornblith 2021).

    With linear Grams K = X X^T, L = Y Y^T and K~, L~ those with the diagonal set to zero:

        HSIC_u(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))
        CKA_u = HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L))

    HSIC_u is translation invariant, so no centring is needed. Unlike linear CKA it is near 0 for
    independent X, Y even when n < d, and it can be slightly negative (not clipped). Needs n >= 4;
    nan if a self-term HSIC_u(K, K) is not positive (e.g. a constant representation).
    """
    X, Y = pair(X, Y)
    if X.shape[0] < 4:
        raise ValueError(f"debiased CKA needs at least 4 examples, got {X.shape[0]}")
    X, Y = X - X.mean(0), Y - Y.mean(0)  # exact no-op in theory; keeps the Grams' magnitudes small
    K, L = X @ X.T, Y @ Y.T
    denom = _hsic_unbiased(K, K) * _hsic_unbiased(L, L)
    return _hsic_unbiased(K, L) / math.sqrt(denom) if denom > 0 else float("nan")


def original_study_similarity(X, Y) -> float:
    """The formula the original study called "CKA". It is NOT CKA.

        tr(Yc^T Xc Xc^T Yc) / (sqrt(tr(Xc^T Xc) tr(Yc^T Yc)))^2 = ||Xc^T Yc||_F^2 / (||Xc||_F^2 ||Yc||_F^2)

    The denominator uses squared Frobenius norms of Xc, Yc instead of ||Xc^T Xc||_F ||Yc^T Yc||_F,
    so the measure is not normalised: its self-similarity is sum(s^4) / (sum(s^2))^2 over the
    singular values s of Xc, which is below 1 unless Xc has rank 1. It measures how concentrated
    the spectra are (about 1/d + 1/n for iid Gaussian data: 0.0064 for 400 x 256) as much as how
    similar X and Y are. Kept only to reproduce the original study.
    """
    X, Y = pair(X, Y)
    xy, _, _ = _centred_products(X, Y)
    nx = ((X - X.mean(0)) ** 2).sum()
    ny = ((Y - Y.mean(0)) ** 2).sum()
    return xy / (nx * ny)


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


# ------------------------------------------------------------------------------------ fast paths
# Bootstrap replicate b draws rows idx_b of X and Y with replacement. Its Gram matrices are
# K[idx_b][:, idx_b], and every quantity the Gram-based measures need is a linear or quadratic form
# in the counts w_b (w_b[i] = how often example i was drawn), e.g.
#     tr(K_b L_b) = w^T (K o L) w,   1^T K_b 1 = w^T K w,   1^T K_b L_b 1 = sum_i w_i (K w)_i (L w)_i.
# So B replicates cost a few [B, n] @ [n, n] matmuls instead of B separate n x n recomputations.
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
def _weighted_sums(K, L, W, duplicates: str, drop_own_diagonal: bool):
    """For the resampled (diagonal-adjusted) Grams of each row of counts W [B, n]:
    (tr(A_b B_b), 1^T A_b 1, 1^T B_b 1, 1^T A_b B_b 1) for (A, B) = (K, L), (K, K), (L, L)."""
    if duplicates not in ("rows", "distinct"):
        raise ValueError(f"duplicates must be 'rows' or 'distinct', got {duplicates!r}")
    dK, dL = np.diag(K), np.diag(L)
    Ko, Lo = K - np.diag(dK), L - np.diag(dL)  # off-diagonal parts: pairs of different examples
    Kw, Lw = W @ Ko, W @ Lo
    # Each copy of example i meets e_i entries equal to its self-similarity: itself, plus its
    # w_i - 1 other copies under "rows". The debiased estimator drops the copy's own diagonal.
    e = W if duplicates == "rows" else np.ones_like(W)
    g = e - 1.0 if drop_own_diagonal else e

    def sums(A, Aw, dA, B, Bw, dB):
        rA, rB = Aw + g * dA, Bw + g * dB  # row sums of the resampled matrices, per original example
        trace = (W * (W @ (A * B))).sum(1) + (W * g) @ (dA * dB)
        return trace, (W * rA).sum(1), (W * rB).sum(1), (W * rA * rB).sum(1)

    return sums(Ko, Kw, dK, Lo, Lw, dL), sums(Ko, Kw, dK, Ko, Kw, dK), sums(Lo, Lw, dL, Lo, Lw, dL)


def _centred(n, trace, sA, sB, cross):  # tr(H A H B) with H = I - 11^T/n
    return trace - 2.0 * cross / n + sA * sB / n**2


def _cka_weighted(K, L, W, duplicates):
    n = K.shape[0]
    kl, kk, ll = _weighted_sums(K, L, W, duplicates, False)
    return _centred(n, *kl) / np.sqrt(_centred(n, *kk) * _centred(n, *ll))


def _original_weighted(K, L, W, duplicates):
    n = K.shape[0]
    kl, _, _ = _weighted_sums(K, L, W, duplicates, False)
    _, sK, sL, _ = kl
    return _centred(n, *kl) / ((W @ np.diag(K) - sK / n) * (W @ np.diag(L) - sL / n))  # ||Xc_b||^2 = tr(H K_b H)


def _debiased_weighted(K, L, W, duplicates):
    n = K.shape[0]

    def hsic_u(trace, sA, sB, cross):
        return (trace + sA * sB / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))

    kl, kk, ll = _weighted_sums(K, L, W, duplicates, True)
    num, denom = hsic_u(*kl), hsic_u(*kk) * hsic_u(*ll)
    return np.where(denom > 0, num / np.sqrt(np.where(denom > 0, denom, 1.0)), np.nan)


def _gram_resampled(weighted):
    """A bootstrap fast path from a Gram measure on counts: weighted(K, L, W [B, n], duplicates) -> [B]."""
    def resampled(X, Y, idx, duplicates="distinct", chunk=250):
        K, L = _centred_grams(X, Y)
        n, out = K.shape[0], np.empty(len(idx))
        for start in range(0, len(idx), chunk):
            rows = idx[start:start + chunk]
            flat = (rows + n * np.arange(len(rows))[:, None]).ravel()
            W = np.bincount(flat, minlength=len(rows) * n).reshape(len(rows), n).astype(np.float64)
            out[start:start + chunk] = weighted(K, L, W, duplicates)
        return out
    return resampled


def _cka_permuted(X, Y, perms, original: bool = False):
    # only tr(Kc Lc[p][:, p]) depends on the permutation p; the self-terms do not change
    K, L = _centred_grams(X, Y)  # columns already centred, so these are Kc, Lc
    scale = np.trace(K) * np.trace(L) if original else math.sqrt((K * K).sum() * (L * L).sum())
    return np.array([(K * L[np.ix_(p, p)]).sum() for p in perms]) / scale


def _debiased_permuted(X, Y, perms):
    n = X.shape[0]
    K, L = _centred_grams(X, Y)
    denom = _hsic_unbiased(K, K) * _hsic_unbiased(L, L)
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)  # a permutation maps the diagonal onto itself
    k1, l1, const = K.sum(1), L.sum(1), K.sum() * L.sum() / ((n - 1) * (n - 2))
    h = np.array([((K * L[np.ix_(p, p)]).sum() + const - 2.0 * (k1 @ l1[p]) / (n - 2)) for p in perms])
    return h / (n * (n - 3)) / math.sqrt(denom) if denom > 0 else np.full(len(perms), np.nan)


def _cosine_resampled(X, Y, idx, duplicates="distinct", chunk=None):
    return per_example_cosine(X, Y)[idx].mean(1)


def _cosine_permuted(X, Y, perms):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Yn = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    return np.array([(Xn * Yn[p]).sum(1).mean() for p in perms])


register_measure(Measure("cka", linear_cka, resampled=_gram_resampled(_cka_weighted), permuted=_cka_permuted))
register_measure(Measure("debiased_cka", debiased_cka, resampled=_gram_resampled(_debiased_weighted),
                         permuted=_debiased_permuted, min_examples=4))
register_measure(Measure("original_study_similarity", original_study_similarity,
                         resampled=_gram_resampled(_original_weighted),
                         permuted=lambda X, Y, perms: _cka_permuted(X, Y, perms, original=True)))
register_measure(Measure("cosine", mean_cosine, resampled=_cosine_resampled, permuted=_cosine_permuted))
