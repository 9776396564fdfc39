"""Hidden states of a Llama backbone at every depth, pooled to one vector per example.

Depths: the embedding output, the residual stream after each decoder layer, and the final-norm
output (``L + 2`` depths for ``L`` layers; see `hidden_states`). Poolings (``POOLINGS``): the mean
over the real tokens except attention-sink positions (``masked``; the rule is `sink_positions`'),
the mean over every real token (``masked_all``, sinks included: the pooling before the sink rule),
the last real token, and the original study's unmasked mean over a sample padded to its longest
example (computed cheaply, see `extract`).

The sink rule. A decoder with no BOS token (SmolLM2's tokenizer adds none) makes the first real
token its attention sink: a massive residual stream (base SmolLM2-135M at layer 15: median norm
~23,600 at position 0 against ~160 for the other tokens), which after a plain mean over tokens puts
96-98% of the centred variance of SST-2's layers 12-28 into one coordinate that correlates 0.98 with
1/length. A position is a *sink* if its residual-stream norm, at some decoder layer, exceeds
``sink_ratio`` (profile ``drift.sink_ratio``, 20) times the median norm of the example's real tokens at
that layer. Measured with it on the base model, every SST-2 (872) and MRPC (408) test example:
position 0 is a sink in all of them (111x or more at layer 15); a second one, at position 1 or 2,
in 11 of the 1,280 (a word split at the start, "Aud|rey", or a leading "...": 22-185x, peaking at
layers 12-13), and two weaker ones (9x, 20x) stay under the threshold; no other token reaches 15x
(the largest: layer 3, token-specific activations of " " and " the" that do not persist; at layers
12-28 every other token stays under 3x). Left in, the weak ones do not matter: the top coordinate's
share at layers 15-25 falls to 2-7% (`diagnostics`). With a BOS, the BOS is position 0 and the same
rule finds it. The rule is a norm test, not a position list, so it holds for any tokenizer; the
drift stage finds the sinks on the base model and pools every model of a task over the same tokens
(`extract`'s ``sinks``).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import LoraDriftError

# pooling -> what it is; `extract` computes "masked", "masked_all" and "last" always, "original" on request
POOLINGS = {
    "masked": "mean over the real tokens except attention-sink positions",
    "masked_all": "mean over every real token, attention sinks included (the pooling before the sink rule)",
    "last": "the last real token (what the classifier reads)",
    "original": "the original study's unmasked mean over the sample padded to its longest example",
}


# ------------------------------------------------------------------------------------ pooling
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


def sink_ratios(layers: list[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    """Per position, the largest over ``layers`` (the decoder layers' residual streams, each [N, T, D])
    of its norm over the median norm of its example's real tokens at that layer -> [N, T] (0 at
    padding). The median of an even count is the lower middle value (torch's convention)."""
    mask = _check_mask(attention_mask)
    norms = torch.stack([h.float().norm(dim=-1) for h in layers])  # [layers, N, T]
    median = torch.where(mask, norms, torch.nan).nanmedian(dim=2, keepdim=True).values
    return torch.where(mask, (norms / median).amax(0), torch.zeros((), device=norms.device))


def sink_positions(layers: list[torch.Tensor], attention_mask: torch.Tensor, sink_ratio: float = 20.0) -> torch.Tensor:
    """Attention sinks (module docstring): real positions whose `sink_ratios` exceed ``sink_ratio`` -> [N, T] bool."""
    return attention_mask.bool() & (sink_ratios(layers, attention_mask) > sink_ratio)


def pool_mask(attention_mask: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """The real tokens that are not sinks -> [N, T] bool. An example whose every real token is a sink
    keeps all of them (it has nothing else to pool). A one-token example never loses its token: its
    norm is its own median, so the norm rule cannot make it a sink."""
    mask = _check_mask(attention_mask)
    keep = mask & ~sinks.bool()
    return torch.where(keep.any(dim=1, keepdim=True), keep, mask)


def sink_free_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Mean of hidden [N, T, D] over the real tokens that are not sinks (`pool_mask`), -> [N, D]:
    the ``masked`` pooling. The sinks' hidden states do not enter it at all."""
    return masked_mean_pool(hidden, pool_mask(attention_mask, sinks))


def unmasked_mean_pool(hidden: torch.Tensor) -> torch.Tensor:
    """Mean over all T positions, padding included, -> [N, D].

    This is what the original study did; it is kept only to reproduce its numbers. With padding,
    the result depends on the pad token's hidden states and on how much padding a batch had.
    """
    return _accum_dtype(hidden).mean(dim=1)


# ------------------------------------------------------------------------------------ depths
def depth_names(n_layers: int) -> list[str]:
    """``embedding``, ``layer_1`` ... ``layer_L`` (residual stream after decoder layer i), ``final_norm``."""
    return ["embedding", *[f"layer_{i}" for i in range(1, n_layers + 1)], "final_norm"]


def device() -> torch.device:
    """Where models run: the GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def backbone_of(model):
    """The LlamaModel inside a classifier, a causal LM or a (merged or unmerged) PEFT model."""
    m = model
    if hasattr(m, "peft_config"):  # PeftModel -> LoraModel -> the seq-cls model with LoRA layers injected
        m = m.base_model.model
    return m.model if hasattr(m, "model") and hasattr(m.model, "layers") else m


def hidden_states(backbone, input_ids, attention_mask, position_ids=None) -> list[torch.Tensor]:
    """Embedding output, the residual output of every decoder layer, and the final-norm output.

    With ``output_hidden_states=True`` a Llama backbone (transformers 5.x, ``capture_outputs``)
    returns ``L + 1`` states: index 0 is the embedding output, index i (1 <= i < L) the output of
    decoder layer i, and the LAST entry is overwritten by ``last_hidden_state``, i.e. the output of
    the final RMSNorm, not of decoder layer L. The residual output of layer L is therefore taken
    with a forward hook on the last decoder layer. Result: ``L + 2`` tensors [B, T, D].
    """
    captured = {}

    def hook(module, args, output):
        captured["last_layer"] = output[0] if isinstance(output, tuple) else output

    h = backbone.layers[-1].register_forward_hook(hook)
    try:
        out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       output_hidden_states=True, use_cache=False)
    finally:
        h.remove()
    hs = list(out.hidden_states)
    n_layers = len(backbone.layers)
    if len(hs) != n_layers + 1 or not torch.equal(hs[-1], out.last_hidden_state):
        raise RuntimeError(f"unexpected hidden_states layout: {len(hs)} states for {n_layers} layers; "
                           "this transformers version differs from the one drift/extract.py was written for")
    return [*hs[:-1], captured["last_layer"], out.last_hidden_state]


# ------------------------------------------------------------------------------------ extraction
def _pad_positions(length: int, t_max: int, m: int | None) -> list[int]:
    """Positions of the pad tokens the original's pooling evaluates for one example.

    Padding occupies positions length .. t_max - 1. With m None (or m >= number of pads): all of
    them (exact). Otherwise the midpoints of m equal strata of that range.
    """
    p = t_max - length
    if p <= 0:
        return []
    if m is None or m >= p:
        return list(range(length, t_max))
    return [length + int((j + 0.5) * p / m) for j in range(m)]


def _batches(row_len: np.ndarray, batch_tokens: int):
    """Index batches of examples sorted by row length: rows x longest row within the budget, and
    rows of similar lengths (little padding is computed)."""
    order = np.argsort(row_len, kind="stable")
    n, start = len(order), 0
    while start < n:
        stop, first = start + 1, row_len[order[start]]
        while (stop < n and (stop + 1 - start) * row_len[order[stop]] <= batch_tokens
               and row_len[order[stop]] <= 1.15 * first + 4):
            stop += 1
        yield order[start:stop]
        start = stop


def _batch_tensors(idx, enc, pos, row_len, pad_id: int, t_max: int):
    """input ids, mask and positions of one batch: real tokens, then the sampled pad positions."""
    T = int(row_len[idx].max())
    ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), T), dtype=torch.long)
    position = torch.zeros((len(idx), T), dtype=torch.long)
    for r, i in enumerate(idx):
        L, p = len(enc[i]), pos[i]
        ids[r, :L] = torch.tensor(enc[i])
        mask[r, :L] = 1
        position[r, :L] = torch.arange(L)
        if p:
            position[r, L:L + len(p)] = torch.tensor(p)
        position[r, L + len(p):] = t_max  # unused filler positions (masked, never pooled)
    return ids, mask, position


def _pool_original(h: torch.Tensor, idx, lengths, pos, t_max: int) -> torch.Tensor:
    """The original's pooling from real tokens plus the sampled pads standing for all the padding."""
    h = h.float()
    rows = []
    for r, i in enumerate(idx):
        L, p = int(lengths[i]), pos[i]
        s = h[r, :L].sum(0)
        if p:
            s = s + h[r, L:L + len(p)].mean(0) * (t_max - L)
        rows.append(s / t_max)
    return torch.stack(rows)


def _given_sinks(sinks, idx, T: int, dev) -> torch.Tensor:
    """[B, T] bool of the given sink positions (one list per text) for the batch's rows ``idx``."""
    out = torch.zeros((len(idx), T), dtype=torch.bool)
    for r, i in enumerate(idx):
        if len(sinks[i]):
            out[r, torch.as_tensor(sinks[i], dtype=torch.long)] = True
    return out.to(dev)


def _pool_batch(hs, m, idx, lengths, pos, t_max, sinks, sink_ratio, original: bool) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The poolings of one batch ({pooling: [depths of [B, D]]}), its own sinks and their ratios [B, T]."""
    ratios = sink_ratios(hs[1:-1] or hs, m)
    found = m.bool() & (ratios > sink_ratio)
    use = found if sinks is None else _given_sinks(sinks, idx, m.shape[1], m.device)
    pooled = {"masked": [sink_free_mean_pool(h, m, use) for h in hs],
              "masked_all": [masked_mean_pool(h, m) for h in hs],
              "last": [last_token_pool(h, m).float() for h in hs]}
    if original:
        pooled["original"] = [_pool_original(h, idx, lengths, pos, t_max) for h in hs]
    return pooled, found.cpu(), ratios.cpu()


def sink_summary(found: list[list[int]], ratios: list[np.ndarray], sink_ratio: float, given=None) -> dict:
    """What the sink rule found in a sample: how many examples have a sink at position 0 only, one
    elsewhere, none, or only sinks; the lowest sink ratio and the highest non-sink ratio (the gap the
    threshold sits in); with ``given`` (the sinks pooled), how many examples' own sinks differ from them."""
    sinks = [r[f] for r, f in zip(ratios, found) if len(f)]
    others = [np.delete(r, f) for r, f in zip(ratios, found)]
    out = {"sink_ratio": sink_ratio, "examples": len(found), "sinks": int(sum(len(f) for f in found)),
           "first_only": sum(f == [0] for f in found), "elsewhere": sum(any(p > 0 for p in f) for f in found),
           "none": sum(not f for f in found), "all_real_tokens": sum(len(f) == len(r) for f, r in zip(found, ratios)),
           "min_sink_ratio": float(min(x.min() for x in sinks)) if sinks else None,
           "max_other_ratio": float(max((x.max() for x in others if len(x)), default=0.0))}
    if given is not None:
        out["differ_from_pooled"] = sum(list(f) != list(g) for f, g in zip(found, given))
    return out


@torch.no_grad()
def extract(backbone, tokenizer, texts: list[str], max_length: int, batch_tokens: int = 4096,
            original: bool = True, pad_positions: int | None = 8, t_max: int | None = None,
            precision: str = "fp32", sinks: list | None = None, sink_ratio: float = 20.0) -> dict:
    """Pooled hidden states of ``texts`` at every depth of ``backbone`` (a LlamaModel).

    Returns {"masked", "masked_all", "last": [depths, N, D], and with ``original`` also
    "original": [depths, N, D]} as float32 numpy arrays, rows in the order of ``texts``, plus
    "lengths" (real tokens per text), "tokens" (their sum), "tokens_run" (positions actually
    computed), "t_max", "sinks" (this model's sink positions per text, by the module's rule with
    ``sink_ratio``) and "sink_summary" (`sink_summary`).

    - ``masked`` leaves out the sink positions: ``sinks`` (one list of positions per text, e.g. the
      base model's: every model is then pooled over the same tokens) or, if None, this model's own.
    - Texts are tokenised as in training (truncation at ``max_length``, no padding), sorted by
      length and batched with per-batch right padding; masked and last-token pooling ignore padding,
      so they do not depend on batching.
    - "original" reproduces the original study's pooling: every example right-padded (pad id, mask
      0) to the longest example of the sample (``t_max``, default: that longest length), then the
      mean over all ``t_max`` positions, pads included. Under a causal mask with pad keys masked, a
      pad position attends to the real tokens only, never to another pad, so each pad's hidden
      state depends only on the real tokens and its position. Instead of running every pad, each
      example is followed by ``pad_positions`` pad tokens placed (via ``position_ids``) at the
      midpoints of equal strata of its padding range, and their mean stands for the mean over the
      padding. ``pad_positions=None`` evaluates every pad position: exactly the original quantity.
    - ``precision="bf16"`` runs the forward passes under bf16 autocast (pooling stays in float32).
    """
    import contextlib
    dev = next(backbone.parameters()).device
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(x) for x in enc])
    if (lengths == 0).any():
        raise LoraDriftError("an example tokenised to zero tokens; check the input texts")
    if sinks is not None and len(sinks) != len(enc):
        raise LoraDriftError(f"sinks: one list of positions per text needed, got {len(sinks)} for {len(enc)} texts")
    n, t_max = len(enc), int(t_max or lengths.max())
    pos = [_pad_positions(int(lengths[i]), t_max, pad_positions) if original else [] for i in range(n)]
    row_len = np.array([lengths[i] + len(pos[i]) for i in range(n)])
    out = {k: None for k in ("masked", "masked_all", "last", *(("original",) if original else ()))}
    found, ratios, tokens_run = [None] * n, [None] * n, 0
    for idx in _batches(row_len, batch_tokens):
        ids, mask, position = _batch_tensors(idx, enc, pos, row_len, tokenizer.pad_token_id, t_max)
        tokens_run += ids.numel()
        with (torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()):
            hs = hidden_states(backbone, ids.to(dev), mask.to(dev), position.to(dev))
        pooled, own, rat = _pool_batch(hs, mask.to(dev), idx, lengths, pos, t_max, sinks, sink_ratio, original)
        for r, i in enumerate(idx):
            found[i], ratios[i] = torch.nonzero(own[r]).flatten().tolist(), rat[r, :lengths[i]].numpy()
        for k in out:
            arr = torch.stack(pooled[k]).cpu().numpy().astype(np.float32)  # [depths, B, D]
            if out[k] is None:
                out[k] = np.empty((arr.shape[0], n, arr.shape[2]), dtype=np.float32)
            out[k][:, idx] = arr
    return {**out, "lengths": lengths, "tokens": int(lengths.sum()), "tokens_run": int(tokens_run), "t_max": t_max,
            "sinks": found, "sink_summary": sink_summary(found, ratios, sink_ratio, sinks)}
