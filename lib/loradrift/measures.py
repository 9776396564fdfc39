"""Numerical measures: pooling, representation similarity, uncertainty, group tests, intruder dimensions.

Everything here is plain numerics on arrays (numpy float64 for the measures, torch for pooling);
nothing knows about models, tasks or files. Conventions:

- A representation is a matrix X of shape [n, d]: n examples in rows, d features in columns.
  Two representations compared with each other have the same n, with row i the same example.
- Similarity measures take numpy arrays (torch tensors are accepted and converted to float64).

Sections:
1. pooling        token states [N, T, D] -> one vector per example [N, D]
2. similarity     linear CKA, debiased CKA, the original study's formula, cosine; SIMILARITIES
3. uncertainty    bootstrap intervals and permutation nulls over examples (fast Gram path)
4. across seeds   Welch t, exact permutation test, Hedges' g; Holm adjustment
5. weight space   intruder dimensions (Shuttleworth et al. 2024)
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from scipy import special, stats

# ---------------------------------------------------------------------------------------------
# 1. pooling


def _check_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.bool()
    if mask.ndim != 2:
        raise ValueError(f"attention_mask must be [N, T], got shape {tuple(mask.shape)}")
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every example needs at least one real token (a mask row is all zeros)")
    return mask


def _accum_dtype(hidden: torch.Tensor) -> torch.Tensor:
    # half-precision sums over hundreds of tokens lose digits; pool in float32 instead
    return hidden.float() if hidden.dtype in (torch.float16, torch.bfloat16) else hidden


def masked_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden [N, T, D] over the real tokens of each example (mask 1), -> [N, D].

    Padding positions are excluded whatever they contain (even inf/nan), so left and right padding
    give the same result. Half-precision input is pooled, and returned, in float32.
    """
    mask = _check_mask(attention_mask)
    h = _accum_dtype(hidden)
    h = torch.where(mask.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=h.device))
    return h.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(h.dtype)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last real token of each example, -> [N, D].

    "Last real token" is the position of the last 1 in the mask row, which is T-1 under left
    padding and sum(mask)-1 under right padding; both are handled.
    """
    mask = _check_mask(attention_mask)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).max(dim=1).values  # [N]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def unmasked_mean_pool(hidden: torch.Tensor) -> torch.Tensor:
    """Mean over all T positions, padding included, -> [N, D].

    This is what the original study did; it is kept only to reproduce its numbers. With padding,
    the result depends on the pad token's hidden states and on how much padding a batch had.
    """
    return _accum_dtype(hidden).mean(dim=1)


# ---------------------------------------------------------------------------------------------
# 2. similarity


def _as64(X) -> np.ndarray:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().double().numpy()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D [n, d] array, got shape {X.shape}")
    return X


def _pair(X, Y) -> tuple[np.ndarray, np.ndarray]:
    X, Y = _as64(X), _as64(Y)
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


def linear_cka(X, Y) -> float:
    """Linear CKA (Kornblith et al. 2019): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F).

    Xc, Yc are column-centred. Invariant to orthogonal transforms and isotropic scaling of either
    side, not to general invertible linear maps. This is the plug-in ("biased") estimator: for
    n < d it is far above 0 even for independent random X and Y; see `debiased_cka`.
    Computed in the n x n Gram form or the d x d feature form, whichever is cheaper.
    """
    xy, xx, yy = _centred_products(*_pair(X, Y))
    return xy / math.sqrt(xx * yy)


def _hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC estimator (Song et al. 2012) from uncentred Gram matrices K, L [n, n]."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    trace_kl = (K * L).sum()  # tr(K~ L~), both symmetric
    cross = K.sum(1) @ L.sum(1)  # 1^T K~ L~ 1
    return (trace_kl + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def debiased_cka(X, Y) -> float:
    """CKA with the unbiased HSIC estimator (Song et al. 2012; Nguyen, Raghu & Kornblith 2021).

    With linear Grams K = X X^T, L = Y Y^T and K~, L~ those with the diagonal set to zero:

        HSIC_u(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))
        CKA_u = HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L))

    HSIC_u is translation invariant, so no centring is needed. Unlike linear CKA it is near 0 for
    independent X, Y even when n < d, and it can be slightly negative (not clipped). Needs n >= 4;
    nan if a self-term HSIC_u(K, K) is not positive (e.g. a constant representation).
    """
    X, Y = _pair(X, Y)
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
    X, Y = _pair(X, Y)
    xy, _, _ = _centred_products(X, Y)
    nx = ((X - X.mean(0)) ** 2).sum()
    ny = ((Y - Y.mean(0)) ** 2).sum()
    return xy / (nx * ny)


def per_example_cosine(X, Y) -> np.ndarray:
    """Cosine between row i of X and row i of Y (uncentred), for each example -> [n].

    X and Y must have the same shape. A zero row gives nan for that example.
    """
    X, Y = _pair(X, Y)
    if X.shape != Y.shape:
        raise ValueError(f"cosine needs X and Y of the same shape: {X.shape} vs {Y.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return (X * Y).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1))


def mean_cosine(X, Y) -> float:
    """Mean over examples of the uncentred cosine between matching rows of X and Y."""
    return float(per_example_cosine(X, Y).mean())


SIMILARITIES = {
    "cka": linear_cka,
    "debiased_cka": debiased_cka,
    "original_study_similarity": original_study_similarity,
    "cosine": mean_cosine,
}
_GRAM_MEASURES = ("cka", "debiased_cka", "original_study_similarity")


# ---------------------------------------------------------------------------------------------
# 3. uncertainty over examples
#
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


def _resolve(measure) -> tuple[str | None, Callable]:
    if isinstance(measure, str):
        if measure not in SIMILARITIES:
            raise ValueError(f"unknown measure {measure!r}; known: {sorted(SIMILARITIES)}")
        return measure, SIMILARITIES[measure]
    for name, fn in SIMILARITIES.items():
        if measure is fn:
            return name, fn
    return None, measure  # an arbitrary callable fn(X, Y) -> float: no fast path


def _centred_grams(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Centring at the full-sample mean changes none of the measures but keeps the expanded
    # formulas below free of cancellation when the representations have a large mean.
    X, Y = X - X.mean(0), Y - Y.mean(0)
    return X @ X.T, Y @ Y.T


def _gram_measure_weighted(
    name: str, K: np.ndarray, L: np.ndarray, W: np.ndarray, duplicates: str = "distinct"
) -> np.ndarray:
    """A Gram-based measure on resampled data, one value per row of counts W [B, n] -> [B].

    Rows of W sum to n. W = ones((1, n)) gives the measure on the original data.
    duplicates="rows": exactly the measure on X[idx], Y[idx]; "distinct": entries between copies
    of the same example set to 0 (see the comment above).
    """
    n = K.shape[0]
    if duplicates not in ("rows", "distinct"):
        raise ValueError(f"duplicates must be 'rows' or 'distinct', got {duplicates!r}")
    dK, dL = np.diag(K), np.diag(L)
    Ko, Lo = K - np.diag(dK), L - np.diag(dL)  # off-diagonal parts: pairs of different examples
    Kw, Lw = W @ Ko, W @ Lo
    # Each copy of example i meets e_i entries equal to its self-similarity: itself, plus its
    # w_i - 1 other copies under "rows". The debiased estimator drops the copy's own diagonal.
    e = W if duplicates == "rows" else np.ones_like(W)
    g = e - 1.0 if name == "debiased_cka" else e

    def sums(A, Aw, dA, B, Bw, dB):
        """tr(A_b B_b), 1^T A_b 1, 1^T B_b 1, 1^T A_b B_b 1 for the resampled (diagonal-adjusted) Grams."""
        rA, rB = Aw + g * dA, Bw + g * dB  # row sums of the resampled matrices, per original example
        trace = (W * (W @ (A * B))).sum(1) + (W * g) @ (dA * dB)
        return trace, (W * rA).sum(1), (W * rB).sum(1), (W * rA * rB).sum(1)

    kl, kk, ll = sums(Ko, Kw, dK, Lo, Lw, dL), sums(Ko, Kw, dK, Ko, Kw, dK), sums(Lo, Lw, dL, Lo, Lw, dL)
    if name == "debiased_cka":
        def hsic_u(trace, sA, sB, cross):
            return (trace + sA * sB / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))

        num, denom = hsic_u(*kl), hsic_u(*kk) * hsic_u(*ll)
        return np.where(denom > 0, num / np.sqrt(np.where(denom > 0, denom, 1.0)), np.nan)

    def centred(trace, sA, sB, cross):  # tr(H A H B) with H = I - 11^T/n
        return trace - 2.0 * cross / n + sA * sB / n**2

    if name == "cka":
        return centred(*kl) / np.sqrt(centred(*kk) * centred(*ll))
    if name == "original_study_similarity":
        _, sK, sL, _ = kl
        return centred(*kl) / ((W @ dK - sK / n) * (W @ dL - sL / n))  # ||Xc_b||^2 = tr(H K_b H)
    raise ValueError(f"{name!r} is not a Gram-based measure")


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Row indices of the bootstrap resamples, [n_boot, n]; the ones `bootstrap_replicates` uses."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_replicates(
    X, Y, measure, n_boot: int = 1000, seed: int = 0, duplicates: str = "distinct", chunk: int = 250
) -> np.ndarray:
    """The measure on n_boot resamples of the examples (the same rows of X and Y) -> [n_boot].

    measure: a name in SIMILARITIES, or a function fn(X, Y) -> float. Registered Gram measures use
    the precomputed-Gram fast path (memory: a few n x n float64 matrices plus chunk x n), with
    duplicates "distinct" (default) or "rows" as explained above. Cosine resamples the per-example
    cosines. Any other function is recomputed on X[idx], Y[idx] ("rows" behaviour, slow).
    """
    X, Y = _pair(X, Y)
    name, fn = _resolve(measure)
    n = X.shape[0]
    idx = bootstrap_indices(n, n_boot, seed)
    if name == "cosine":
        return per_example_cosine(X, Y)[idx].mean(1)
    if name in _GRAM_MEASURES:
        if name == "debiased_cka" and n < 4:
            raise ValueError(f"debiased CKA needs at least 4 examples, got {n}")
        K, L = _centred_grams(X, Y)
        out = np.empty(n_boot)
        for start in range(0, n_boot, chunk):
            rows = idx[start : start + chunk]
            flat = (rows + n * np.arange(len(rows))[:, None]).ravel()
            W = np.bincount(flat, minlength=len(rows) * n).reshape(len(rows), n).astype(np.float64)
            out[start : start + chunk] = _gram_measure_weighted(name, K, L, W, duplicates)
        return out
    return np.array([fn(X[i], Y[i]) for i in idx])


def bootstrap_ci(
    X, Y, measure, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, duplicates: str = "distinct"
) -> tuple[float, float, float]:
    """(point, lo, hi): the measure on all examples and a percentile bootstrap interval.

    The interval is the [alpha/2, 1 - alpha/2] quantiles of `bootstrap_replicates`; it covers
    example-sampling noise only (not seed-to-seed training noise). nan replicates are ignored.
    duplicates="rows" reproduces published practice, which is biased for the Gram measures.
    """
    _, fn = _resolve(measure)
    point = float(fn(X, Y))
    reps = bootstrap_replicates(X, Y, measure, n_boot=n_boot, seed=seed, duplicates=duplicates)
    lo, hi = np.nanquantile(reps, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


def permutation_null(X, Y, measure, n_perm: int = 200, seed: int = 0) -> np.ndarray:
    """The measure with the example pairing broken (rows of Y permuted) -> [n_perm].

    This is the null distribution of "X and Y are no more alike than unrelated examples".
    Gram measures reuse precomputed Grams: only tr(Kc Lc[p][:, p]) (and, for debiased CKA, one
    cross term) depend on the permutation p; the self-terms do not change.
    A one-sided p-value for the paired value v is (1 + (null >= v).sum()) / (1 + n_perm).
    """
    X, Y = _pair(X, Y)
    name, fn = _resolve(measure)
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(n_perm)]
    if name == "cosine":
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        Yn = Y / np.linalg.norm(Y, axis=1, keepdims=True)
        return np.array([(Xn * Yn[p]).sum(1).mean() for p in perms])
    if name in ("cka", "original_study_similarity"):
        K, L = _centred_grams(X, Y)  # columns already centred, so these are Kc, Lc
        if name == "cka":
            scale = math.sqrt((K * K).sum() * (L * L).sum())
        else:
            scale = np.trace(K) * np.trace(L)
        return np.array([(K * L[np.ix_(p, p)]).sum() for p in perms]) / scale
    if name == "debiased_cka":
        if n < 4:
            raise ValueError(f"debiased CKA needs at least 4 examples, got {n}")
        K, L = _centred_grams(X, Y)
        denom = _hsic_unbiased(K, K) * _hsic_unbiased(L, L)
        np.fill_diagonal(K, 0.0)
        np.fill_diagonal(L, 0.0)  # a permutation maps the diagonal onto itself
        k1, l1, const = K.sum(1), L.sum(1), K.sum() * L.sum() / ((n - 1) * (n - 2))
        h = np.array([((K * L[np.ix_(p, p)]).sum() + const - 2.0 * (k1 @ l1[p]) / (n - 2)) for p in perms])
        return h / (n * (n - 3)) / math.sqrt(denom) if denom > 0 else np.full(n_perm, np.nan)
    return np.array([fn(X, Y[p]) for p in perms])


# ---------------------------------------------------------------------------------------------
# 4. across seeds


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
    """Compare per-seed values a (method A) with b (method B); typically 3 seeds each.

    Returns a dict with n_a, n_b, mean_a, sd_a, mean_b, sd_b (sd with ddof=1), diff (mean_a -
    mean_b), welch_t and welch_p (two-sided, unequal variances), perm_p (two-sided permutation test
    of the difference of means; exact over all relabelings when n_resamples is None),
    min_attainable_p (2 / C(n_a + n_b, n_a): the smallest perm_p the design allows, 0.1 for 3 vs 3,
    so a 3-vs-3 permutation test can never reach p < 0.05) and hedges_g.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each group needs at least 2 values")
    welch = stats.ttest_ind(a, b, equal_var=False)
    perm = stats.permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        permutation_type="independent",
        alternative="two-sided",
        n_resamples=np.inf if n_resamples is None else n_resamples,
        vectorized=True,
        random_state=0,
    )
    return {
        "n_a": len(a),
        "n_b": len(b),
        "mean_a": float(a.mean()),
        "sd_a": float(a.std(ddof=1)),
        "mean_b": float(b.mean()),
        "sd_b": float(b.std(ddof=1)),
        "diff": float(a.mean() - b.mean()),
        "welch_t": float(welch.statistic),
        "welch_p": float(welch.pvalue),
        "perm_p": float(perm.pvalue),
        "min_attainable_p": min(1.0, 2.0 / math.comb(len(a) + len(b), len(a))),
        "hedges_g": hedges_g(a, b),
    }


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


# ---------------------------------------------------------------------------------------------
# 5. weight space: intruder dimensions


def intruder_dimensions(W_base, W_ft, k: int = 10, threshold: float = 0.5) -> dict:
    """Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
    Equivalence"): top singular vectors of a fine-tuned matrix that resemble no singular vector of
    the base matrix.

    For each of the top-k left singular vectors u_i of W_ft, max_sim_i = max_j |u_i . v_j| over
    ALL left singular vectors v_j of W_base (float64 SVD); u_i is an intruder if max_sim_i < threshold.
    Returns {"n_intruders": int, "max_sims": [k floats], "singular_values": top-k of W_ft}.

    For an [m, n] matrix there are min(m, n) left singular vectors in R^m. When m <= n they form a
    basis of R^m, so every unit vector has max_sim >= 1/sqrt(m) (small for real layers, but it means
    the threshold must stay well above that). When m > n, a vector outside the base's column space
    can have max_sim near 0.
    """
    A, B = _as64(W_base), _as64(W_ft)
    if A.shape != B.shape:
        raise ValueError(f"W_base and W_ft must have the same shape: {A.shape} vs {B.shape}")
    if not 1 <= k <= min(A.shape):
        raise ValueError(f"k must be in [1, {min(A.shape)}], got {k}")
    U_base = np.linalg.svd(A, full_matrices=False)[0]
    U_ft, s_ft, _ = np.linalg.svd(B, full_matrices=False)
    max_sims = np.abs(U_ft[:, :k].T @ U_base).max(axis=1)
    return {
        "n_intruders": int((max_sims < threshold).sum()),
        "max_sims": max_sims.tolist(),
        "singular_values": s_ft[:k].tolist(),
    }
