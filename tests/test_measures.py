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


def zscore(X):
    """Every column centred and scaled to unit (population) variance."""
    Xc = X - X.mean(0)
    return Xc / Xc.std(0)


def naive_procrustes(X, Y):
    """Half the squared Procrustes distance, from scipy's orthogonal Procrustes solution."""
    from scipy.linalg import orthogonal_procrustes
    A, B = X - X.mean(0), Y - Y.mean(0)
    A, B = A / np.linalg.norm(A), B / np.linalg.norm(B)
    R, _ = orthogonal_procrustes(B, A)  # the orthogonal R minimising ||B R - A||_F
    return np.linalg.norm(A - B @ R) ** 2 / 2


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


def test_sink_free_pool_ignores_the_sink_positions_hidden_states():
    """``masked`` pooling: the mean over the real tokens that are not sinks; whatever the sink
    positions hold (even inf) does not reach the pooled vector; left and right padding agree."""
    hidden, mask, lengths = padded_batch("right")
    sinks = torch.zeros_like(mask, dtype=torch.bool)
    sinks[0, 0] = sinks[0, 3] = sinks[2, 0] = True  # two sinks in example 0, one in example 2
    pooled = E.sink_free_mean_pool(hidden, mask, sinks)
    keep = mask.bool() & ~sinks
    torch.testing.assert_close(pooled, torch.stack([hidden[i][keep[i]].mean(0) for i in range(3)]))
    torch.testing.assert_close(pooled[1], hidden[1, :2].mean(0))  # no sink: the mean over every real token
    poked = hidden.clone()
    poked[sinks] = torch.tensor(float("inf"), dtype=torch.float64)
    torch.testing.assert_close(E.sink_free_mean_pool(poked, mask, sinks), pooled)
    assert not torch.allclose(E.masked_mean_pool(hidden, mask)[0], pooled[0])  # masked_all keeps them
    T = hidden.shape[1]
    left_h, left_m, left_s = torch.zeros_like(hidden), torch.zeros_like(mask), torch.zeros_like(sinks)
    for i, n in enumerate(lengths):
        left_h[i, T - n:], left_m[i, T - n:], left_s[i, T - n:] = hidden[i, :n], 1, sinks[i, :n]
    torch.testing.assert_close(E.sink_free_mean_pool(left_h, left_m, left_s), pooled)


def test_sink_free_pool_of_an_example_that_is_all_sinks_keeps_its_tokens():
    hidden, mask, _ = padded_batch("right")
    sinks = mask.bool().clone()
    sinks[0] = False  # example 0 has no sink; examples 1 and 2 are sinks everywhere
    torch.testing.assert_close(E.sink_free_mean_pool(hidden, mask, sinks), E.masked_mean_pool(hidden, mask))
    assert E.pool_mask(mask, sinks).tolist() == mask.bool().tolist()


def planted_layers(ratio, position=1, n_layers=3, T=6, D=8, seed=0):
    """Decoder-layer states [1, T, D] with unit-norm tokens, one position scaled to ``ratio`` x
    at the middle layer (so its norm there is ``ratio`` x the example's median)."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for k in range(n_layers):
        h = torch.randn(1, T, D, generator=g, dtype=torch.float64)
        h = h / h.norm(dim=-1, keepdim=True)
        if k == n_layers // 2:
            h[0, position] *= ratio
        layers.append(h)
    return layers


def test_sink_rule_is_the_norm_ratio_at_any_decoder_layer():
    mask = torch.ones(1, 6, dtype=torch.long)
    ratios = E.sink_ratios(planted_layers(30.0), mask)
    assert ratios[0, 1].item() == pytest.approx(30.0)  # its norm over the median norm (the others: 1)
    assert torch.allclose(ratios[0, [0, 2, 3, 4, 5]], torch.ones(5))
    for ratio, found in ((21.0, [1]), (19.0, []), (500.0, [1])):
        sinks = E.sink_positions(planted_layers(ratio), mask, sink_ratio=20.0)
        assert torch.nonzero(sinks[0]).flatten().tolist() == found, ratio
    # position 4 planted instead: the rule names positions by norm, not by place
    assert torch.nonzero(E.sink_positions(planted_layers(50.0, position=4), mask)[0]).flatten().tolist() == [4]


def test_sink_rule_reads_real_tokens_only():
    """Padding never is a sink and does not enter the median; a one-token example has no sink."""
    layers = planted_layers(1.0)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    for h in layers:
        h[0, 4:] *= 1e6  # huge padding
    assert not E.sink_positions(layers, mask).any()
    assert E.sink_ratios(layers, mask)[0, 4:].eq(0).all()
    one = torch.tensor([[1, 0, 0, 0, 0, 0]])
    assert not E.sink_positions(planted_layers(1000.0, position=0), one).any()


def test_sink_summary_counts():
    found = [[0], [0, 1], [], [0, 1, 2]]
    ratios = [np.array([150.0, 1.0, 1.2]), np.array([120.0, 40.0, 1.1]), np.array([3.0, 1.0]),
              np.array([25.0, 30.0, 21.0])]
    out = E.sink_summary(found, ratios, 20.0, given=[[0], [0], [], [0, 1, 2]])
    assert out == {"sink_ratio": 20.0, "examples": 4, "sinks": 6, "first_only": 1, "elsewhere": 2, "none": 1,
                   "all_real_tokens": 1, "min_sink_ratio": 21.0, "max_other_ratio": 3.0, "differ_from_pooled": 1}


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


def test_unmatched_cosine_is_the_mean_over_pairs_of_different_examples():
    r = rng(40)
    X = r.normal(size=(15, 6)) + 2.0
    Y = X + 0.3 * r.normal(size=X.shape)
    brute = np.mean([M.per_example_cosine(X[[i]], Y[[j]])[0] for i in range(15) for j in range(15) if i != j])
    assert M.unmatched_cosine(X, Y) == pytest.approx(brute, abs=1e-12)
    assert M.MEASURES["cosine"].unmatched_value(X, Y) == pytest.approx(brute, abs=1e-12)
    assert M.mean_cosine(X, Y) > M.unmatched_cosine(X, Y) > 0.5  # a shared direction: unrelated examples agree too
    assert M.MEASURES["cka"].unmatched_value(X, Y) is None


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_standardized_cka_is_cka_of_zscored_features(n, d1, d2):
    r = rng(41)
    X = r.normal(size=(n, d1)) * r.uniform(0.01, 100, size=d1) + 5.0
    k = min(d1, d2)
    Y = r.normal(size=(n, d2))
    Y[:, :k] += X[:, :k] * r.uniform(0.1, 10, size=k)
    assert M.standardized_cka(X, Y) == pytest.approx(naive_cka(zscore(X), zscore(Y)), abs=1e-10)
    assert M.standardized_debiased_cka(X, Y) == pytest.approx(kornblith_debiased_cka(zscore(X), zscore(Y)), abs=1e-10)


@pytest.mark.parametrize("fn", [M.standardized_cka, M.standardized_debiased_cka])
def test_standardized_cka_invariances(fn):
    """Per-coordinate scaling and shifts, and permuting coordinates, leave it unchanged (linear CKA
    moves under the scaling); a rotation is not one of its invariances."""
    r = rng(42)
    X, Y = related(120, 20, seed=43)
    base = fn(X, Y)
    scale = r.uniform(0.001, 1000, size=20)
    assert fn(X * scale + r.normal(size=20), Y) == pytest.approx(base, abs=1e-10)
    assert fn(X[:, r.permutation(20)], Y) == pytest.approx(base, abs=1e-10)
    assert abs(M.linear_cka(X * scale, Y) - M.linear_cka(X, Y)) > 0.05
    assert fn(X, X) == pytest.approx(1.0, abs=1e-10)
    X[:, 3] = 7.0  # a constant coordinate is left out, not divided by zero
    assert np.isfinite(fn(X, Y))


def dominated_pair(n=400, d=60, seed=44):
    """X whose first coordinate holds ~97% of the centred variance, and Y: X's top coordinate kept,
    every other coordinate replaced by independent noise of the same variance."""
    r = rng(seed)
    X = r.normal(size=(n, d))
    X[:, 0] *= 45.0
    Y = r.normal(size=(n, d)) * X.std(0)
    Y[:, 0] = X[:, 0]
    return X, Y


def test_standardized_cka_does_not_collapse_onto_one_large_coordinate():
    X, Y = dominated_pair()
    Xc = X - X.mean(0)
    assert (Xc ** 2).sum(0).max() / (Xc ** 2).sum() > 0.95
    assert M.linear_cka(X, Y) > 0.99 and M.debiased_cka(X, Y) > 0.99  # blind to the other 59 coordinates
    assert M.standardized_debiased_cka(X, Y) < 0.1  # they are noise: 1/60 of the standardised variance agrees
    assert M.procrustes(X, Y) < 0.05  # Procrustes weighs by singular values: it collapses too (less)


@pytest.mark.parametrize("n,d1,d2", [(60, 30, 30), (40, 12, 20), (30, 50, 45)])
def test_procrustes_matches_scipy_orthogonal_procrustes(n, d1, d2):
    r = rng(45)
    X = r.normal(size=(n, d1)) + 1.0
    Y = r.normal(size=(n, d2))
    Y[:, :5] += 3 * X[:, :5]
    d = max(d1, d2)
    pad = lambda A: np.hstack([A, np.zeros((n, d - A.shape[1]))])  # noqa: E731
    assert M.procrustes(X, Y) == pytest.approx(naive_procrustes(pad(X), pad(Y)), abs=1e-10)
    assert 0 < M.procrustes(X, Y) < 1
    assert M.procrustes(X, Y) == pytest.approx(M.procrustes(Y, X), abs=1e-12)


def test_procrustes_invariances():
    r = rng(46)
    X = r.normal(size=(80, 25)) * r.uniform(0.1, 10, size=25)
    Q = np.linalg.qr(r.normal(size=(25, 25)))[0]
    assert M.procrustes(X, 3.0 * X @ Q + 11.0) == pytest.approx(0.0, abs=1e-12)  # rotation, scale, shift: 0
    assert M.procrustes(X, X) == pytest.approx(0.0, abs=1e-12)
    stretch = np.ones(25)
    stretch[:3] = 10.0
    assert M.procrustes(X, X * stretch) > 0.01  # not invariant to per-coordinate scaling
    assert np.isnan(M.procrustes(X, np.ones_like(X)))
    assert M.MEASURES["procrustes"].drift(0.2) == 0.2  # a distance


def test_registry_and_input_checks():
    assert set(M.MEASURES) == {"cka", "debiased_cka", "original_study_similarity", "cosine", "standardized_cka",
                               "standardized_debiased_cka", "procrustes"}
    X = rng(13).normal(size=(10, 4))
    assert M.linear_cka(torch.from_numpy(X).float(), X) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        M.linear_cka(X, X[:9])
    with pytest.raises(ValueError):
        M.linear_cka(X[0], X[0])


# ---------------------------------------------------------------------------------------------
# 3. uncertainty

GRAM = ["cka", "debiased_cka", "original_study_similarity", "standardized_cka", "standardized_debiased_cka"]
NAIVE_GRAM = {"cka": naive_cka_gram, "debiased_cka": naive_debiased_gram, "original_study_similarity": naive_original_gram,
              "standardized_cka": naive_cka_gram, "standardized_debiased_cka": naive_debiased_gram}
STANDARDIZED = {"standardized_cka": "cka", "standardized_debiased_cka": "debiased_cka"}


def features(name, X):
    """What a Gram measure's Gram is built from: the centred X, or z-scored for the standardised ones
    (their bootstrap keeps the full sample's standardisation)."""
    return zscore(X) if name in STANDARDIZED else X - X.mean(0)


@pytest.mark.parametrize("name", GRAM)
@pytest.mark.parametrize("duplicates", ["rows", "distinct"])
def test_weighted_fast_path_with_unit_weights_is_the_measure(name, duplicates):
    X, Y = related(40, 25, seed=14)
    draws = Resamples(np.arange(40)[None], 40)  # every example drawn once
    value = M.MEASURES[name].resampled(X, Y, draws, duplicates)[0]
    assert value == pytest.approx(M.MEASURES[name].fn(X, Y), abs=1e-12)


@pytest.mark.parametrize("name", GRAM)
def test_bootstrap_rows_mode_equals_recomputing_on_resampled_rows(name):
    """The standardised measures: recomputed on the resampled rows of the full sample's z-scores."""
    X, Y = related(25, 35, seed=15)
    reps = S.bootstrap_replicates(X, Y, name, n_boot=30, seed=4, duplicates="rows", chunk=7)
    idx = S.bootstrap_indices(25, 30, seed=4)
    fn, A, B = M.MEASURES[STANDARDIZED.get(name, name)].fn, features(name, X), features(name, Y)
    naive = [fn(A[i], B[i]) for i in idx]
    np.testing.assert_allclose(reps, naive, atol=1e-10)


@pytest.mark.parametrize("name", GRAM)
def test_bootstrap_distinct_mode_equals_naive_on_resampled_gram_without_copy_pairs(name):
    n = 12
    X, Y = related(n, 6, seed=16)
    Xc, Yc = features(name, X), features(name, Y)
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
    sign = 1 if M.MEASURES[name].similarity else -1  # a distance: the null lies above
    paired = sign * M.MEASURES[name].fn(X, Y)
    null = sign * S.permutation_null(X, Y, name, n_perm=100, seed=0)
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
    assert grams.builds == 6  # X, Y, Z: once each, and once each standardised
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
    # Welch's 95% interval of a - b by hand: Welch-Satterthwaite degrees of freedom
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    assert (out["diff_low"], out["diff_high"]) == pytest.approx((out["diff"] - half, out["diff"] + half))


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


def test_compare_groups_when_models_do_not_move():
    """Both methods constant (e.g. models that never left the base): no nan reaches Holm."""
    same = S.compare_groups([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert same["no_variance"] and same["welch_p"] == 1.0 and same["perm_p"] == 1.0 and same["hedges_g"] == 0.0
    apart = S.compare_groups([0.2, 0.2, 0.2], [0.1, 0.1, 0.1])
    assert apart["no_variance"] and apart["welch_t"] == math.inf and apart["welch_p"] == 0.0
    assert apart["perm_p"] == pytest.approx(apart["min_attainable_p"])  # the honest p: the best the design allows
    one = S.compare_groups([0.0, 0.0, 0.0], [0.1, 0.3, 0.2])  # one method constant: Welch is defined
    assert not one["no_variance"] and 0 < one["welch_p"] < 1
    with pytest.raises(ValueError, match="finite"):
        S.compare_groups([0.1, np.nan, 0.2], [0.1, 0.2])


def test_compare_groups_ten_seeds_exact():
    out = S.compare_groups(np.arange(10.0) + 100, np.arange(10.0))
    assert out["min_attainable_p"] == pytest.approx(2 / math.comb(20, 10))
    assert out["perm_p"] == pytest.approx(out["min_attainable_p"])  # every relabeling enumerated


def test_holm_over_a_registered_family_with_missing_tests():
    np.testing.assert_allclose(S.holm_family([0.01, 0.04, 0.03]), S.holm([0.01, 0.04, 0.03]))
    out = S.holm_family([0.01, np.nan], m=3)  # 3 registered, one without results, one not listed at all
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.03)
    with pytest.raises(ValueError):
        S.holm_family([0.1, 0.2], m=1)


def test_bh_matches_scipy_and_keeps_nan():
    p = np.array([0.01, 0.2, np.nan, 0.03, 0.04])
    out = S.bh(p)
    np.testing.assert_allclose(out[[0, 1, 3, 4]], stats.false_discovery_control([0.01, 0.2, 0.03, 0.04]))
    np.testing.assert_allclose(out[[0, 3, 4, 1]], [0.04, 0.16 / 3, 0.16 / 3, 0.2])  # by hand: min over k >= i of m p_(k) / k
    assert np.isnan(out[2])


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
