"""Gram matrices of representations, built once and reused: `Gram` (one representation and what the
Gram measures derive from it) and `Grams` (a cache of them, keyed by (model, depth, pooling)).

Every Gram measure (linear CKA, debiased CKA, the original's formula) and their fast paths (the
bootstrap over examples, the permutation null) start from the centred Gram matrix K = Xc Xc^T
[n, n] of each side. Computed per call, one drift task of the cpu profile (6 models and the base,
32 depths, 3 poolings, two or three measures each, a bootstrap and a permutation null) builds
3,904 of them; cached, one per (model, depth, pooling): 672. A `Gram` computes each derived
quantity on first use and keeps it: K, its diagonal and zero-diagonal form (with row sums, total
and self-HSIC for debiased CKA), its products with the bootstrap counts (`Resamples`: the same
draws serve every comparison of a task), and, per pair of Grams, the cross terms that the measures
of that pair share (bootstrap and permutation null). Each quantity is the same numpy expression on
the same arrays as when computed afresh, so cached and uncached numbers are identical.
"""
from __future__ import annotations

import itertools
from functools import cached_property

import numpy as np
import torch

_SERIAL = itertools.count()


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


class Resamples:
    """Bootstrap resamples of n examples: row indices ``idx`` [B, n] and, per chunk of ``chunk``
    rows, the counts W [rows, n] (W[b, i]: how often example i is drawn in resample b).

    ``key`` names the draw ((n, n_boot, seed, chunk) when `stats.resamples` drew it): a Gram's
    products with W are kept under it and reused by every measure and comparison that uses the same
    draw. Without a key (any other ``idx``) they are computed each time.
    """

    def __init__(self, idx: np.ndarray, n: int, chunk: int = 250, key: tuple | None = None):
        self.idx, self.n, self.chunk, self.key = idx, n, chunk, key

    @cached_property
    def counts(self) -> list[tuple[int, np.ndarray]]:
        """(first row, W) per chunk."""
        out = []
        for start in range(0, len(self.idx), self.chunk):
            rows = self.idx[start:start + self.chunk]
            flat = (rows + self.n * np.arange(len(rows))[:, None]).ravel()
            W = np.bincount(flat, minlength=len(rows) * self.n).reshape(len(rows), self.n).astype(np.float64)
            W.flags.writeable = False  # shared by every comparison under the draw's key
            out.append((start, W))
        return out


class Permutations:
    """Permutations of the examples (a list of [n] index arrays); ``key`` as in `Resamples`."""

    def __init__(self, perms: list, key: tuple | None = None):
        self.perms, self.key = perms, key


class Gram:
    """One representation X [n, d] and what the Gram measures derive from it, each on first use.

    ``cached``: the Gram comes from a `Grams` cache, so its K is reused and the measures use the
    Gram form (an uncached one lets linear CKA use the cheaper d x d feature form when n >= 1.5 d).
    ``Gram.built`` counts the n x n Gram matrices built by any Gram (cached or not).
    """

    built = 0

    def __init__(self, X, cached: bool = False, on_build=None):
        X64 = as64(X)
        self.X, self.n, self.d = X, X64.shape[0], X64.shape[1]  # X as given: for non-Gram measures
        # Centring at the full-sample mean changes none of the measures but keeps the expanded
        # formulas of the fast paths free of cancellation when the representations have a large mean.
        self.Xc = X64 - X64.mean(0)
        self.cached, self._on_build, self._memo = cached, on_build, {}
        self.serial = next(_SERIAL)

    @cached_property
    def K(self) -> np.ndarray:
        """The centred Gram matrix Xc Xc^T [n, n]."""
        Gram.built += 1
        if self._on_build is not None:
            self._on_build()
        return self.Xc @ self.Xc.T

    @cached_property
    def standardized(self) -> Gram:
        """The representation with every coordinate z-scored (centred, unit variance), as a `Gram` of
        the same kind (a cached Gram's is kept with it and counted by its cache). A coordinate whose
        standard deviation is below 1e-10 of the largest (constant up to rounding) becomes 0."""
        sd = np.sqrt((self.Xc ** 2).mean(0))
        keep = sd > 1e-10 * sd.max() if sd.size and sd.max() > 0 else np.zeros_like(sd, dtype=bool)
        Z = np.where(keep, self.Xc / np.where(keep, sd, 1.0), 0.0)
        return Gram(Z, cached=self.cached, on_build=self._on_build)

    @cached_property
    def fro2(self) -> float:  # ||Kc||_F^2
        return float((self.K * self.K).sum())

    @cached_property
    def sq(self):  # ||Xc||_F^2
        return (self.Xc ** 2).sum()

    @cached_property
    def trace(self):
        return np.trace(self.K)

    @cached_property
    def diag(self) -> np.ndarray:
        return np.diag(self.K)

    @cached_property
    def zero(self) -> np.ndarray:
        """K with its diagonal set to 0: the pairs of different examples."""
        K = self.K.copy()
        np.fill_diagonal(K, 0.0)
        return K

    @cached_property
    def zero_rows(self) -> np.ndarray:
        return self.zero.sum(1)

    @cached_property
    def zero_total(self):
        return self.zero.sum()

    @cached_property
    def hsic_self(self):
        return hsic_unbiased(self, self)

    # --------------------------------------------------------------------------- kept products
    def _kept(self, name: str, draw_key, compute, *key):
        """compute(), kept under (name, draw_key, *key) unless the draw has no key."""
        if draw_key is None:
            return compute()
        k = (name, draw_key, *key)
        if k not in self._memo:
            self._memo[k] = compute()
        return self._memo[k]

    def weighted(self, draws: Resamples, c: int) -> np.ndarray:
        """W @ K~ for chunk c of the draws: the resampled row sums over pairs of different examples."""
        return self._kept("w", draws.key, lambda: draws.counts[c][1] @ self.zero, c)

    def weighted_sq(self, draws: Resamples, c: int) -> np.ndarray:
        """W @ (K~ o K~): the self-trace terms of the resampled Grams."""
        return self._kept("ww", draws.key, lambda: draws.counts[c][1] @ (self.zero * self.zero), c)

    def weighted_cross(self, other: Gram, draws: Resamples, c: int) -> np.ndarray:
        """W @ (K~ o L~) with L the other Gram: the cross-trace terms, shared by the pair's measures."""
        return self._kept("wx", draws.key, lambda: draws.counts[c][1] @ (self.zero * other.zero), c, other.serial)

    def permuted_cross(self, other: Gram, perms: Permutations) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per permutation p of the other side's examples: (<K, L[p][:, p]>, <K~, L~[p][:, p]>,
        k~ . l~[p]) with k~, l~ the row sums of K~, L~. One gather of L per permutation serves every
        Gram measure's null (a permutation maps the diagonal onto itself, and K~ is 0 there)."""
        def compute():
            n, full, zero, rows = self.n, [], [], []
            for p in perms.perms:
                Lp = other.K.take((p[:, None] * n + p).ravel()).reshape(n, n)
                full.append((self.K * Lp).sum())
                zero.append((self.zero * Lp).sum())
                rows.append(self.zero_rows @ other.zero_rows[p])
            return np.array(full), np.array(zero), np.array(rows)
        return self._kept("p", perms.key, compute, other.serial)


def hsic_unbiased(G: Gram, H: Gram):
    """Unbiased HSIC estimator (Song et al. 2012) of two Grams (from their zero-diagonal forms)."""
    n = G.n
    trace_kl = (G.zero * H.zero).sum()  # tr(K~ L~), both symmetric
    cross = G.zero_rows @ H.zero_rows  # 1^T K~ L~ 1
    return (trace_kl + G.zero_total * H.zero_total / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def _same_array(a, b) -> bool:
    """The same representation: the same object, or views of the same memory with the same layout."""
    if a is b:
        return True
    return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and a.strides == b.strides
            and a.dtype == b.dtype and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


class Grams:
    """A cache of `Gram`s keyed by (model id, depth, pooling) (any hashable key): each is built once
    and reused by every measure, point estimate, bootstrap replicate and permutation that reads it.

    ``builds``: Gram matrices built through this cache. ``clear()`` drops the kept Grams (e.g. after
    each (depth, pooling), to bound the memory) and keeps the count. ``enabled=False``: no cache,
    `get` returns the representation itself and every measure builds its own Grams (the path before
    the cache, kept for comparison).
    """

    def __init__(self, enabled: bool = True):
        self.enabled, self.builds, self._grams = enabled, 0, {}

    def _count(self) -> None:
        self.builds += 1

    def get(self, key, X):
        """The cached `Gram` of representation X under ``key`` (X itself when the cache is disabled)."""
        if not self.enabled:
            return X
        if key not in self._grams:
            self._grams[key] = Gram(X, cached=True, on_build=self._count)
        elif not _same_array(self._grams[key].X, X):
            raise ValueError(f"Grams key {key!r} already holds another representation: the key must name "
                             "everything the representation depends on (model, depth, pooling)")
        return self._grams[key]

    def clear(self) -> None:
        self._grams.clear()

    def __len__(self) -> int:
        return len(self._grams)
