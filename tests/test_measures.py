"""Tests for the drift package's numerics (loradrift.drift.measures, .stats, .extract's pooling,
.weights): each measure against an independent naive implementation, its invariances, and the
statistics against scipy or hand-worked numbers."""
import itertools
import math
import time

import numpy as np
import pytest
import torch
from scipy import stats

from loradrift.drift import extract as E
from loradrift.drift import measures as M
from loradrift.drift import stats as S
from loradrift.drift import weights as WS
from loradrift.drift.grams import Gram, Grams, Resamples


def rng(seed=0):
    return np.random.default_rng(seed)


def related(n, d, rho=0.6, seed=0):
    """X and a noisy linear view Y of it: a well-behaved, clearly similar pair."""
    r = rng(seed)
    X = r.normal(size=(n, d))
    Y = rho * X @ np.linalg.qr(r.normal(size=(d, d)))[0] + math.sqrt(1 - rho**2) * r.normal(size=(n, d))
    return X, Y


# ---------------------------------------------------------------------------------------------
# naive references, written from the definitions and sharing no code with the module


def centring(n):
    return np.eye(n) - np.ones((n, n)) / n


def naive_hsic(K, L):
    n = K.shape[0]
    H = centring(n)
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def naive_cka_gram(K, L):
    return naive_hsic(K, L) / math.sqrt(naive_hsic(K, K) * naive_hsic(L, L))


def naive_cka(X, Y):
    return naive_cka_gram(X @ X.T, Y @ Y.T)


def ustat_hsic(K, L):
    """Unbiased HSIC straight from its U-statistic definition over ordered 4-tuples of distinct
    indices (Song et al. 2012): mean of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq."""
    n = K.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
        count += 1
    return total / count


def kornblith_debiased_cka(X, Y):
    """Feature-space debiased linear CKA as in Kornblith's published CKA notebook."""
    def helper(xty, ssx, ssy, nx, ny, n):
        return xty - n / (n - 2.0) * ssx.dot(ssy) + nx * ny / ((n - 1) * (n - 2))

    X, Y = X - X.mean(0), Y - Y.mean(0)
    n = X.shape[0]
    ssx, ssy = np.einsum("ij,ij->i", X, X), np.einsum("ij,ij->i", Y, Y)
    xy = helper(np.linalg.norm(X.T @ Y) ** 2, ssx, ssy, ssx.sum(), ssy.sum(), n)
    xx = helper(np.linalg.norm(X.T @ X) ** 2, ssx, ssx, ssx.sum(), ssx.sum(), n)
    yy = helper(np.linalg.norm(Y.T @ Y) ** 2, ssy, ssy, ssy.sum(), ssy.sum(), n)
    return xy / math.sqrt(xx * yy)


def naive_debiased_gram(K, L):
    """Song et al.'s closed form, written with explicit loops over the off-diagonal entries."""
    n = K.shape[0]

    def hsic(A, B):
        off = [(i, j) for i in range(n) for j in range(n) if i != j]
        tr = sum(A[i, j] * B[j, i] for i, j in off)
        sa, sb = sum(A[i, j] for i, j in off), sum(B[i, j] for i, j in off)
        ra = [sum(A[i, j] for j in range(n) if j != i) for i in range(n)]
        rb = [sum(B[i, j] for j in range(n) if j != i) for i in range(n)]
        cross = sum(ra[i] * rb[i] for i in range(n))
        return (tr + sa * sb / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))

    return hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L))


def naive_original_gram(K, L):
    H = centring(K.shape[0])
    Kc, Lc = H @ K @ H, H @ L @ H
    return np.trace(Kc @ Lc) / (np.trace(Kc) * np.trace(Lc))


def naive_original(X, Y):
    """The original study's formula, as it wrote it."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return np.trace(Yc.T @ Xc @ Xc.T @ Yc) / math.sqrt(np.trace(Xc.T @ Xc) * np.trace(Yc.T @ Yc)) ** 2


# ---------------------------------------------------------------------------------------------
# 1. pooling


def padded_batch(padding_side):
    torch.manual_seed(0)
    lengths = [5, 2, 3]
    T, D = 6, 4
    hidden = torch.randn(3, T, D, dtype=torch.float64)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        if padding_side == "right":
            mask[i, :n] = 1
        else:
            mask[i, T - n :] = 1
    return hidden, mask, lengths


@pytest.mark.parametrize("side", ["right", "left"])
def test_masked_mean_pool_is_mean_of_real_tokens_and_ignores_padding(side):
    hidden, mask, _ = padded_batch(side)
    pooled = E.masked_mean_pool(hidden, mask)
    expected = torch.stack([hidden[i][mask[i].bool()].mean(0) for i in range(3)])
    torch.testing.assert_close(pooled, expected)
    garbage = hidden.clone()
    garbage[~mask.bool()] = torch.tensor(float("inf"), dtype=torch.float64)  # even inf is ignored
    torch.testing.assert_close(E.masked_mean_pool(garbage, mask), pooled)
    garbage[~mask.bool()] = 1e6
    torch.testing.assert_close(E.masked_mean_pool(garbage, mask), pooled)


def test_masked_mean_pool_same_for_left_and_right_padding():
    hidden, mask, lengths = padded_batch("right")
    T = hidden.shape[1]
    left_hidden = torch.zeros_like(hidden)
    left_mask = torch.zeros_like(mask)
    for i, n in enumerate(lengths):
        left_hidden[i, T - n :] = hidden[i, :n]
        left_mask[i, T - n :] = 1
    torch.testing.assert_close(E.masked_mean_pool(left_hidden, left_mask), E.masked_mean_pool(hidden, mask))
    torch.testing.assert_close(E.last_token_pool(left_hidden, left_mask), E.last_token_pool(hidden, mask))


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_pool_picks_last_real_position(side):
    hidden, mask, lengths = padded_batch(side)
    T = hidden.shape[1]
    positions = [n - 1 for n in lengths] if side == "right" else [T - 1] * 3
    expected = torch.stack([hidden[i, p] for i, p in enumerate(positions)])
    torch.testing.assert_close(E.last_token_pool(hidden, mask), expected)


def test_last_token_pool_with_holes_in_the_mask_uses_last_one():
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 0]])
    assert E.last_token_pool(hidden, mask).flatten().tolist() == [3.0, 6.0]


def test_unmasked_mean_pool_differs_with_padding_and_agrees_without():
    hidden, mask, _ = padded_batch("right")
    torch.testing.assert_close(E.unmasked_mean_pool(hidden), hidden.mean(1))
    assert not torch.allclose(E.unmasked_mean_pool(hidden), E.masked_mean_pool(hidden, mask))
    full = torch.ones_like(mask)
    torch.testing.assert_close(E.unmasked_mean_pool(hidden), E.masked_mean_pool(hidden, full))


def test_pooling_rejects_empty_rows_and_upcasts_half_precision():
    hidden, mask, _ = padded_batch("right")
    mask[1] = 0
    with pytest.raises(ValueError):
        E.masked_mean_pool(hidden, mask)
    with pytest.raises(ValueError):
        E.last_token_pool(hidden, mask)
    h16 = torch.randn(2, 3, 4).to(torch.bfloat16)
    m = torch.ones(2, 3, dtype=torch.long)
    assert E.masked_mean_pool(h16, m).dtype == torch.float32
    assert E.unmasked_mean_pool(h16).dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# 2. similarity

SHAPES = [(60, 150, 120), (200, 20, 30)]  # n < d (Gram form) and n > d (feature form)


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_self_similarity_is_one(n, d1, d2):
    X = rng(1).normal(size=(n, d1))
    assert M.linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert M.debiased_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert M.mean_cosine(X, X) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_linear_cka_matches_naive_centring_matrix(n, d1, d2):
    r = rng(2)
    X = r.normal(size=(n, d1)) + 3.0  # an offset, so centring matters
    Y = X[:, :1] * r.normal(size=(1, d2)) + r.normal(size=(n, d2))
    assert M._gram_is_cheaper(n, d1, d2) == (n < d1)  # both code paths are exercised
    assert M.linear_cka(X, Y) == pytest.approx(naive_cka(X, Y), abs=1e-10)


def test_gram_and_feature_paths_agree_on_same_data():
    X, Y = related(50, 40, seed=3)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    gram = ((Xc @ Xc.T) * (Yc @ Yc.T)).sum()
    feature = np.linalg.norm(Xc.T @ Yc) ** 2
    assert M._cross(*M.grams_of(X, Y)) == pytest.approx(gram, rel=1e-12)
    assert gram == pytest.approx(feature, rel=1e-12)


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_debiased_cka_matches_kornblith_feature_form(n, d1, d2):
    X, Y = related(n, d1, seed=4)[0], rng(5).normal(size=(n, d2))
    Y[:, :5] += X[:, :5]
    assert M.debiased_cka(X, Y) == pytest.approx(kornblith_debiased_cka(X, Y), abs=1e-10)


def test_debiased_cka_matches_loop_formula_and_ustatistic_definition():
    r = rng(6)
    X = r.normal(size=(8, 5)) + 2.0
    Y = X @ r.normal(size=(5, 3)) + 0.5 * r.normal(size=(8, 3))
    K, L = X @ X.T, Y @ Y.T  # uncentred: the estimator needs no centring
    value = M.debiased_cka(X, Y)
    assert value == pytest.approx(naive_debiased_gram(K, L), abs=1e-10)
    by_definition = ustat_hsic(K, L) / math.sqrt(ustat_hsic(K, K) * ustat_hsic(L, L))
    assert value == pytest.approx(by_definition, abs=1e-10)


@pytest.mark.parametrize("fn", [M.linear_cka, M.debiased_cka])
def test_cka_invariances(fn):
    r = rng(7)
    X, Y = related(80, 30, seed=8)
    Y = Y[:, :25]
    base = fn(X, Y)
    Q1 = np.linalg.qr(r.normal(size=(30, 30)))[0]
    Q2 = np.linalg.qr(r.normal(size=(25, 25)))[0]
    assert fn(X @ Q1, Y) == pytest.approx(base, abs=1e-10)
    assert fn(X, Y @ Q2) == pytest.approx(base, abs=1e-10)
    assert fn(7.5 * X, 0.01 * Y) == pytest.approx(base, abs=1e-10)
    assert fn(X + 100.0, Y - 3.0) == pytest.approx(base, abs=1e-8)
    assert fn(Y, X) == pytest.approx(base, abs=1e-12)
    # a non-isotropic scaling is not a similarity transform: the value must move
    stretch = np.ones(30)
    stretch[:5] = 10.0
    assert abs(fn(X * stretch, Y) - base) > 0.05


def test_debiased_cka_near_zero_for_independent_data_where_linear_cka_is_not():
    r = rng(9)
    X, Y = r.normal(size=(100, 500)), r.normal(size=(100, 500))
    assert abs(M.debiased_cka(X, Y)) < 0.05
    assert M.linear_cka(X, Y) > 0.3


def test_debiased_cka_needs_four_examples_and_may_be_negative():
    with pytest.raises(ValueError):
        M.debiased_cka(np.ones((3, 2)), np.ones((3, 2)))
    values = [M.debiased_cka(*rng(s).normal(size=(2, 30, 10))) for s in range(20)]
    assert min(values) < 0  # not clipped


def test_original_study_similarity_is_not_cka():
    X = rng(10).normal(size=(400, 256))
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    self_sim = M.original_study_similarity(X, X)
    assert self_sim == pytest.approx((s**4).sum() / (s**2).sum() ** 2, rel=1e-10)
    assert self_sim == pytest.approx(1 / 256 + 1 / 400, rel=0.05)  # about 0.0064, far from 1
    assert M.original_study_similarity(X[:, :1], X[:, :1]) == pytest.approx(1.0)  # rank 1 only


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_original_study_similarity_matches_its_trace_formula(n, d1, d2):
    r = rng(11)
    X, Y = r.normal(size=(n, d1)) + 1.0, r.normal(size=(n, d2))
    Y[:, :10] += X[:, :10]
    assert M.original_study_similarity(X, Y) == pytest.approx(naive_original(X, Y), rel=1e-10)
    assert M.original_study_similarity(X, Y) == pytest.approx(naive_original_gram(X @ X.T, Y @ Y.T), rel=1e-10)


def test_cosine():
    r = rng(12)
    X, Y = r.normal(size=(20, 7)), r.normal(size=(20, 7))
    expected = [x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(X, Y)]
    np.testing.assert_allclose(M.per_example_cosine(X, Y), expected, rtol=1e-12)
    assert M.mean_cosine(X, Y) == pytest.approx(np.mean(expected))
    scales = r.uniform(0.1, 10, size=(20, 1))
    assert M.mean_cosine(X * scales, Y) == pytest.approx(M.mean_cosine(X, Y))
    assert M.mean_cosine(X, -X) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        M.per_example_cosine(X, Y[:, :5])


def test_registry_and_input_checks():
    assert set(M.MEASURES) == {"cka", "debiased_cka", "original_study_similarity", "cosine"}
    X = rng(13).normal(size=(10, 4))
    assert M.linear_cka(torch.from_numpy(X).float(), X) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        M.linear_cka(X, X[:9])
    with pytest.raises(ValueError):
        M.linear_cka(X[0], X[0])


# ---------------------------------------------------------------------------------------------
# 3. uncertainty

GRAM = ["cka", "debiased_cka", "original_study_similarity"]
NAIVE_GRAM = {"cka": naive_cka_gram, "debiased_cka": naive_debiased_gram, "original_study_similarity": naive_original_gram}


@pytest.mark.parametrize("name", GRAM)
@pytest.mark.parametrize("duplicates", ["rows", "distinct"])
def test_weighted_fast_path_with_unit_weights_is_the_measure(name, duplicates):
    X, Y = related(40, 25, seed=14)
    draws = Resamples(np.arange(40)[None], 40)  # every example drawn once
    value = M.MEASURES[name].resampled(X, Y, draws, duplicates)[0]
    assert value == pytest.approx(M.MEASURES[name].fn(X, Y), abs=1e-12)


@pytest.mark.parametrize("name", GRAM)
def test_bootstrap_rows_mode_equals_recomputing_on_resampled_rows(name):
    X, Y = related(25, 35, seed=15)
    reps = S.bootstrap_replicates(X, Y, name, n_boot=30, seed=4, duplicates="rows", chunk=7)
    idx = S.bootstrap_indices(25, 30, seed=4)
    naive = [M.MEASURES[name].fn(X[i], Y[i]) for i in idx]
    np.testing.assert_allclose(reps, naive, atol=1e-10)


@pytest.mark.parametrize("name", GRAM)
def test_bootstrap_distinct_mode_equals_naive_on_resampled_gram_without_copy_pairs(name):
    n = 12
    X, Y = related(n, 6, seed=16)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    K, L = Xc @ Xc.T, Yc @ Yc.T
    reps = S.bootstrap_replicates(X, Y, name, n_boot=10, seed=5, duplicates="distinct")
    for value, i in zip(reps, S.bootstrap_indices(n, 10, seed=5)):
        copies = (i[:, None] == i[None, :]) & ~np.eye(n, dtype=bool)  # two copies of one example
        Kb, Lb = K[np.ix_(i, i)], L[np.ix_(i, i)]
        Kb[copies], Lb[copies] = 0.0, 0.0
        assert value == pytest.approx(NAIVE_GRAM[name](Kb, Lb), abs=1e-10)


@pytest.mark.parametrize("name", list(M.MEASURES))
def test_bootstrap_interval_contains_point_and_is_reproducible(name):
    X, Y = related(400, 8, seed=17)
    point, lo, hi = S.bootstrap_ci(X, Y, name, n_boot=300, seed=1)
    assert point == pytest.approx(M.MEASURES[name].fn(X, Y))
    assert lo < point < hi
    assert (point, lo, hi) == S.bootstrap_ci(X, Y, name, n_boot=300, seed=1)
    assert (lo, hi) != S.bootstrap_ci(X, Y, name, n_boot=300, seed=2)[1:]
    assert S.bootstrap_ci(X, Y, M.MEASURES[name].fn, n_boot=300, seed=1) == (point, lo, hi)  # callable form


def test_bootstrap_of_debiased_cka_with_duplicated_rows_is_biased_and_distinct_mode_is_not():
    """The reason for the "distinct" default: with n comparable to d, the published recipe's
    replicates for independent data sit far above the (near-zero) estimate."""
    r = rng(18)
    X, Y = r.normal(size=(150, 150)), r.normal(size=(150, 150))
    point = M.debiased_cka(X, Y)
    rows = S.bootstrap_replicates(X, Y, "debiased_cka", n_boot=200, duplicates="rows")
    distinct = S.bootstrap_replicates(X, Y, "debiased_cka", n_boot=200, duplicates="distinct")
    assert rows.min() > point + 0.2
    assert abs(distinct.mean() - point) < 0.25 * distinct.std() + 1e-3
    _, lo, hi = S.bootstrap_ci(X, Y, "debiased_cka", n_boot=200)
    assert lo < point < hi
    for name in ("cka", "original_study_similarity"):
        _, lo, hi = S.bootstrap_ci(X, Y, name, n_boot=200)
        assert lo < M.MEASURES[name].fn(X, Y) < hi


def test_bootstrap_cosine_and_custom_callable():
    X, Y = related(50, 10, seed=19)
    idx = S.bootstrap_indices(50, 40, seed=3)
    cos = M.per_example_cosine(X, Y)
    np.testing.assert_allclose(S.bootstrap_replicates(X, Y, "cosine", n_boot=40, seed=3), cos[idx].mean(1))
    fn = lambda A, B: float(np.abs(A - B).mean())  # noqa: E731
    np.testing.assert_allclose(S.bootstrap_replicates(X, Y, fn, n_boot=40, seed=3), [fn(X[i], Y[i]) for i in idx])
    with pytest.raises(ValueError):
        S.bootstrap_ci(X, Y, "not_a_measure")


def test_bootstrap_is_fast_at_study_size():
    X, Y = related(872, 576, seed=20)
    start = time.perf_counter()
    reps = S.bootstrap_replicates(X, Y, "debiased_cka", n_boot=1000)
    assert time.perf_counter() - start < 30.0  # about 1 s on 2 idle CPU cores; per-replicate recompute takes minutes
    assert reps.shape == (1000,) and np.isfinite(reps).all()


def naive_null(X, Y, name, n_perm, seed):
    r = np.random.default_rng(seed)
    return np.array([M.MEASURES[name].fn(X, Y[r.permutation(len(X))]) for _ in range(n_perm)])


@pytest.mark.parametrize("name", list(M.MEASURES))
def test_permutation_null_fast_path_matches_recompute(name):
    X, Y = related(30, 40, seed=21)
    X = X + 2.0
    np.testing.assert_allclose(S.permutation_null(X, Y, name, n_perm=15, seed=7), naive_null(X, Y, name, 15, 7), atol=1e-10)


@pytest.mark.parametrize("name", list(M.MEASURES))
def test_permutation_null_far_below_paired_value_for_near_identical(name):
    r = rng(22)
    X = r.normal(size=(200, 50)) + 1.0
    Y = X + 0.1 * r.normal(size=(200, 50))
    paired = M.MEASURES[name].fn(X, Y)
    null = S.permutation_null(X, Y, name, n_perm=100, seed=0)
    assert null.shape == (100,)
    assert null.max() < paired
    assert paired - null.mean() > 20 * null.std()


# ---------------------------------------------------------------------------------------------
# 3b. Gram reuse: the drift stage's cache (grams.Grams) gives the numbers of the uncached path

GRAM_MEASURES = [name for name, m in M.MEASURES.items() if m.grams]


def measured(name, X, Y, duplicates="distinct"):
    """(point, bootstrap replicates, permutation null) of X, Y (arrays or cached Grams): seeded,
    resamples in several chunks."""
    return (M.MEASURES[name].value(X, Y),
            S.bootstrap_replicates(X, Y, name, n_boot=20, seed=3, duplicates=duplicates, chunk=7),
            S.permutation_null(X, Y, name, n_perm=12, seed=4))


def cached_run(name, X, others, duplicates):
    """X compared with each of ``others`` through one cache, every Gram measure of a pair in turn
    with ``name`` last (it reads the products the others kept): -> ({other index: results}, cache)."""
    grams, out = Grams(), {}
    for i, Y in enumerate(others):
        for m in [m for m in GRAM_MEASURES if m != name] + [name]:
            out[i] = measured(m, grams.get(("base", 0, "masked"), X), grams.get((i, 0, "masked"), Y), duplicates)
    return out, grams


def test_every_gram_measure_is_covered():
    assert GRAM_MEASURES == GRAM


@pytest.mark.parametrize("duplicates", ["distinct", "rows"])
@pytest.mark.parametrize("name", GRAM_MEASURES)
def test_gram_reuse_gives_identical_measures(name, duplicates):
    """A base compared with two models through one cache: the point estimates, the bootstrap
    replicates and the permutation null are exactly those of the uncached path (n < 1.5 d, where
    the uncached path uses the Gram form too)."""
    n, d = 30, 40
    X, Y = related(n, d, seed=30)
    Z = related(n, d, rho=0.3, seed=31)[1] + 5.0
    assert all(len(set(i)) < n for i in S.bootstrap_indices(n, 20, seed=3))  # copies in every resample
    out, grams = cached_run(name, X, [Y, Z], duplicates)
    assert grams.builds == 3  # X, Y, Z: once each
    for i, W in enumerate([Y, Z]):
        point, reps, null = measured(name, X, W, duplicates)
        assert out[i][0] == point
        np.testing.assert_array_equal(out[i][1], reps)
        np.testing.assert_array_equal(out[i][2], null)
    assert out[0][0] != out[1][0]


@pytest.mark.parametrize("name", GRAM_MEASURES)
def test_gram_reuse_where_the_uncached_path_takes_the_feature_form(name):
    """n >= 1.5 d: uncached linear CKA and the original's formula use the d x d feature form, cached
    Grams the Gram form; the point estimates agree to float64 rounding, the rest exactly."""
    n, d = 60, 20
    assert not M._gram_is_cheaper(n, d, d)
    X, Y = related(n, d, seed=32)
    out, _ = cached_run(name, X, [Y], "distinct")
    point, reps, null = measured(name, X, Y)
    assert out[0][0] == pytest.approx(point, rel=1e-12, abs=0)
    np.testing.assert_array_equal(out[0][1], reps)
    np.testing.assert_array_equal(out[0][2], null)


def test_gram_cache_keys_and_counts():
    X, Y = related(20, 30, seed=33)
    grams, before = Grams(), Gram.built
    assert grams.get(("a", 0, "masked"), X) is grams.get(("a", 0, "masked"), X)
    assert grams.get(("a", 0, "last"), Y) is not grams.get(("a", 0, "masked"), X)
    for key, Z in [(("a", 0, "masked"), X), (("a", 0, "last"), Y)]:
        M.linear_cka(grams.get(key, Z), grams.get(key, Z))
    assert grams.builds == 2 and Gram.built - before == 2 and len(grams) == 2
    grams.clear()
    assert len(grams) == 0 and grams.builds == 2
    assert Grams(enabled=False).get(("a", 0, "masked"), X) is X  # no cache: every measure builds its own
    assert grams.get(("b", 0), X[:, :5]) is grams.get(("b", 0), X[:, :5])  # views of the same memory
    with pytest.raises(ValueError, match="already holds another representation"):
        grams.get(("b", 0), Y)


@pytest.mark.parametrize("name", GRAM_MEASURES)
def test_kept_products_follow_the_draw(name):
    """Products kept for one draw are not read for another: other seeds, counts and chunks."""
    X, Y = related(25, 30, seed=34)
    G, H = Grams().get("x", X), Grams().get("y", Y)
    for n_boot, seed, chunk in [(12, 1, 5), (12, 2, 5), (15, 1, 5), (12, 1, 4)]:
        cached = S.bootstrap_replicates(G, H, name, n_boot=n_boot, seed=seed, chunk=chunk)
        np.testing.assert_array_equal(cached, S.bootstrap_replicates(X, Y, name, n_boot=n_boot, seed=seed, chunk=chunk))
    for n_perm, seed in [(6, 1), (6, 2), (8, 1)]:
        np.testing.assert_array_equal(S.permutation_null(G, H, name, n_perm=n_perm, seed=seed),
                                      S.permutation_null(X, Y, name, n_perm=n_perm, seed=seed))


# ---------------------------------------------------------------------------------------------
# 4. across seeds


def test_compare_groups_matches_scipy_welch_and_reports_design():
    a, b = [0.81, 0.84, 0.79, 0.86], [0.70, 0.77, 0.74]
    out = S.compare_groups(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert out["welch_t"] == pytest.approx(ref.statistic)
    assert out["welch_p"] == pytest.approx(ref.pvalue)
    assert out["n_a"] == 4 and out["n_b"] == 3
    assert out["mean_a"] == pytest.approx(np.mean(a)) and out["sd_b"] == pytest.approx(np.std(b, ddof=1))
    assert out["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert out["min_attainable_p"] == pytest.approx(2 / 35)
    assert out["perm_p"] == pytest.approx(2 / 35)  # perfectly separated: the most extreme split


def test_compare_groups_exact_permutation_p_for_three_vs_three():
    out = S.compare_groups([0.9, 0.91, 0.92], [0.5, 0.52, 0.51])
    assert out["perm_p"] == pytest.approx(0.1)
    assert out["min_attainable_p"] == pytest.approx(0.1)  # 2 / C(6, 3): p < 0.05 is unreachable
    assert out["welch_p"] < 0.001  # while Welch happily reports a tiny p
    mixed = S.compare_groups([1.0, 3.0, 5.0], [2.0, 4.0, 6.0])
    # diff = -1; splits with |diff| >= 1: 14 of 20 (enumerated by hand below)
    splits = [s for s in itertools.combinations([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3)]
    diffs = [np.mean(s) - (21 - sum(s)) / 3 for s in splits]
    p_less, p_greater = np.mean([d <= -1 + 1e-9 for d in diffs]), np.mean([d >= -1 - 1e-9 for d in diffs])
    assert mixed["perm_p"] == pytest.approx(min(1.0, 2 * min(p_less, p_greater)))


def test_hedges_g_hand_example():
    # means 2 and 5, both sd 1 -> Cohen's d = -3; df = 4, J = Gamma(2) / (sqrt(2) Gamma(1.5)) = 0.79788
    out = S.compare_groups([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    j = 1.0 / (math.sqrt(2.0) * math.gamma(1.5))
    assert out["hedges_g"] == pytest.approx(-3.0 * j)
    assert out["hedges_g"] == pytest.approx(-3.0 * (1 - 3 / 15), rel=0.01)  # the usual approximation
    assert S.hedges_g([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(3.0 * j)
    # unequal sizes and sds: pooled sd from the definition
    a, b = np.array([1.0, 4.0, 2.0, 7.0]), np.array([0.0, 1.0])
    pooled = math.sqrt((3 * a.var(ddof=1) + 1 * b.var(ddof=1)) / 4)
    assert S.hedges_g(a, b) == pytest.approx(j * (a.mean() - b.mean()) / pooled)


def test_compare_groups_needs_two_per_group():
    with pytest.raises(ValueError):
        S.compare_groups([1.0], [2.0, 3.0])


def test_holm_hand_example_and_properties():
    np.testing.assert_allclose(S.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(S.holm([0.5, 0.01, 0.3, 0.2]), [0.6, 0.04, 0.6, 0.6])  # 4p, 3p, 2p, p capped by cummax
    np.testing.assert_allclose(S.holm([0.9, 0.8]), [1.0, 1.0])
    assert S.holm([]).shape == (0,)
    p = rng(23).uniform(size=12) ** 3
    adj = S.holm(p)
    order = np.argsort(p)
    m = len(p)
    by_definition = [min(1.0, max((m - j) * p[order[j]] for j in range(i + 1))) for i in range(m)]
    np.testing.assert_allclose(adj[order], by_definition)
    assert (adj >= p).all() and (np.diff(adj[order]) >= 0).all()
    with pytest.raises(ValueError):
        S.holm([0.1, np.nan])


# ---------------------------------------------------------------------------------------------
# 5. intruder dimensions


def test_no_intruders_for_identical_or_slightly_perturbed():
    W = rng(24).normal(size=(64, 48))
    same = WS.intruder_dimensions(W, W.copy(), k=10)
    assert same["n_intruders"] == 0
    np.testing.assert_allclose(same["max_sims"], 1.0, atol=1e-10)
    np.testing.assert_allclose(same["singular_values"], np.linalg.svd(W, compute_uv=False)[:10])
    small = WS.intruder_dimensions(W, W + 1e-3 * rng(25).normal(size=W.shape), k=10)
    assert small["n_intruders"] == 0
    assert min(small["max_sims"]) > 0.9


def test_rank_one_update_outside_base_column_space_is_an_intruder():
    r = rng(26)
    W = r.normal(size=(64, 48))  # tall: base left singular vectors span 48 of 64 dimensions
    U = np.linalg.svd(W, full_matrices=False)[0]
    u = r.normal(size=64)
    u -= U @ (U.T @ u)
    u /= np.linalg.norm(u)
    v = r.normal(size=48)
    v /= np.linalg.norm(v)
    out = WS.intruder_dimensions(torch.from_numpy(W), torch.from_numpy(W + 50.0 * np.outer(u, v)), k=5)
    assert out["n_intruders"] >= 1
    assert out["max_sims"][0] < 0.2  # the new top direction resembles nothing in the base (W v mixes in a little)
    assert len(out["max_sims"]) == 5 and len(out["singular_values"]) == 5


def test_rank_one_update_along_random_direction_square_matrix():
    r = rng(27)
    W = r.normal(size=(64, 64))
    u, v = r.normal(size=64), r.normal(size=64)
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    out = WS.intruder_dimensions(W, W + 60.0 * np.outer(u, v), k=10)
    assert out["n_intruders"] >= 1
    assert out["max_sims"][0] < 0.5


def test_wide_matrix_similarity_floor_and_argument_checks():
    r = rng(28)
    W = r.normal(size=(16, 40))  # wide: base left singular vectors are a basis of R^16
    out = WS.intruder_dimensions(W, r.normal(size=(16, 40)), k=16, threshold=0.5)
    assert min(out["max_sims"]) >= 1 / math.sqrt(16) - 1e-12
    with pytest.raises(ValueError):
        WS.intruder_dimensions(W, W[:, :30])
    with pytest.raises(ValueError):
        WS.intruder_dimensions(W, W, k=17)


def test_promoting_a_minor_base_direction_is_not_an_intruder():
    """Similarity is taken over ALL base singular vectors: boosting the base's weakest direction to
    the top changes the ranking but adds nothing new."""
    W = rng(29).normal(size=(40, 30))
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    boosted = W + 100.0 * np.outer(U[:, -1], Vt[-1])
    out = WS.intruder_dimensions(W, boosted, k=5)
    assert out["max_sims"][0] == pytest.approx(1.0, abs=1e-10)
    assert out["n_intruders"] == 0
