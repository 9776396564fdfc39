"""Forgetting (after Biderman et al. 2024): perplexity on a fixed slice of WikiText-2 of each
fine-tuned backbone read through the *base* model's LM head."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .. import LoraDriftError
from ..store import repo_root
from .stats import mean_interval


def wikitext_path(cfg: dict | None = None) -> Path:
    """The forgetting text: the drift setting, else $LORADRIFT_WIKITEXT, else the shared WikiText-2 test file."""
    p = (cfg or {}).get("wikitext") or os.environ.get("LORADRIFT_WIKITEXT")
    path = Path(p) if p else repo_root().parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
    if not path.is_file():
        raise LoraDriftError(f"forgetting text {path} does not exist: set LORADRIFT_WIKITEXT (or the profile's "
                             "drift.wikitext) to a plain-text file, e.g. WikiText-2's wiki.test.raw")
    return path


def wikitext_chunks(tokenizer, path: Path, n_chunks: int, chunk_len: int) -> torch.Tensor:
    """The first ``n_chunks`` non-overlapping chunks of ``chunk_len`` tokens of a text file -> [K, L].

    The text is tokenised without special tokens; only as much of it as needed is read.
    """
    need = n_chunks * chunk_len
    with open(path, encoding="utf-8") as f:
        text = f.read()
    n_chars = min(len(text), need * 8)
    while True:
        ids = tokenizer(text[:n_chars], add_special_tokens=False)["input_ids"]
        if len(ids) >= need + 1 or n_chars >= len(text):
            break
        n_chars = min(len(text), n_chars * 2)
    if len(ids) < need:
        raise LoraDriftError(f"{path} holds only {len(ids)} tokens, fewer than {n_chunks} x {chunk_len}: "
                             "lower drift.ppl_chunks or use a longer text")
    return torch.tensor(ids[:need]).view(n_chunks, chunk_len)


@torch.no_grad()
def chunk_nll(backbone, head_weight: torch.Tensor, chunks: torch.Tensor, batch: int = 4) -> np.ndarray:
    """Mean next-token negative log-likelihood per chunk of ``backbone`` read through ``head_weight``.

    ``head_weight`` is the base model's LM head [V, D] (Llama: logits = h_final @ W^T, no bias, no
    scaling). Perplexity = exp(mean of these), chunks having equal length.
    """
    device = next(backbone.parameters()).device
    out = []
    for s in range(0, len(chunks), batch):
        x = chunks[s:s + batch].to(device)
        h = backbone(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).last_hidden_state
        logits = h[:, :-1].float() @ head_weight.float().T
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                reduction="none").view(len(x), -1).mean(1)
        out.extend(nll.cpu().tolist())
    return np.array(out)


def forgetting_rows(base_nll, models: list[tuple[str, str, int, list]], cfg: dict) -> list[dict]:
    """Per fine-tuned model (id, method, seed, its chunk losses): perplexity, the base's, and the change
    in mean loss against the base with a bootstrap interval over chunks."""
    base_nll = np.array(base_nll)
    rows = []
    for rid, method, seed, nll in models:
        nll = np.array(nll)
        diff = nll - base_nll
        lo, hi = mean_interval(diff, alpha=cfg["alpha"], seed=cfg["boot_seed"])
        rows.append({"model": rid, "method": method, "seed": seed, "ppl": float(np.exp(nll.mean())),
                     "base_ppl": float(np.exp(base_nll.mean())), "delta_nll": float(diff.mean()),
                     "delta_nll_lo": lo, "delta_nll_hi": hi, "ppl_ratio": float(np.exp(diff.mean()))})
    return rows
