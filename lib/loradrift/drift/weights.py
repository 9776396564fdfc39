"""Weight space: intruder dimensions (Shuttleworth et al. 2024) and the relative weight change."""
from __future__ import annotations

import numpy as np

from .measures import as64


def _max_sims(U_base: np.ndarray, W_ft: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(max_j |u_i . v_j| for the top-k left singular vectors u_i of W_ft over the base's v_j, top-k singular values)."""
    U_ft, s_ft, _ = np.linalg.svd(W_ft, full_matrices=False)
    return np.abs(U_ft[:, :k].T @ U_base).max(axis=1), s_ft[:k]


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
    A, B = as64(W_base), as64(W_ft)
    if A.shape != B.shape:
        raise ValueError(f"W_base and W_ft must have the same shape: {A.shape} vs {B.shape}")
    if not 1 <= k <= min(A.shape):
        raise ValueError(f"k must be in [1, {min(A.shape)}], got {k}")
    max_sims, s_ft = _max_sims(np.linalg.svd(A, full_matrices=False)[0], B, k)
    return {"n_intruders": int((max_sims < threshold).sum()), "max_sims": max_sims.tolist(),
            "singular_values": s_ft.tolist()}


def weight_change(base_backbone, ft_backbone, modules=("q_proj", "v_proj"), k: int = 10,
                  thresholds=(0.3, 0.5, 0.7, 0.9), base_svd: dict | None = None) -> list[dict]:
    """Intruder dimensions over a sweep of thresholds, and the relative change ||W_ft - W_base||_F /
    ||W_base||_F, per layer and matrix: one row per (layer, matrix, threshold).

    Intruders as in `intruder_dimensions` (same definition; a test checks they agree), with the
    base matrices' left singular vectors computed once and kept in ``base_svd`` (a dict the caller
    may reuse across fine-tuned models). ``min_max_sim`` and ``rel_change`` do not depend on the
    threshold (repeated on each of the matrix's rows); the SVDs are computed once per matrix.
    """
    base_svd = {} if base_svd is None else base_svd
    rows = []
    for i, (lb, lf) in enumerate(zip(base_backbone.layers, ft_backbone.layers), start=1):
        for name in modules:
            wb = getattr(lb.self_attn, name).weight.detach().double().cpu().numpy()
            wf = getattr(lf.self_attn, name).weight.detach().double().cpu().numpy()
            if wb.shape != wf.shape or not 1 <= k <= min(wb.shape):
                raise ValueError(f"layer {i} {name}: shapes {wb.shape} vs {wf.shape}, k={k}")
            if (i, name) not in base_svd:
                base_svd[(i, name)] = np.linalg.svd(wb, full_matrices=False)[0]
            max_sims, _ = _max_sims(base_svd[(i, name)], wf, k)
            rel = float(np.linalg.norm(wf - wb) / np.linalg.norm(wb))
            rows += [{"layer": i, "matrix": name, "threshold": float(t), "n_intruders": int((max_sims < t).sum()),
                      "min_max_sim": float(max_sims.min()), "rel_change": rel} for t in thresholds]
    return rows
