"""The drift stage (RQ1): representational drift, weight-space change and forgetting.

For every task whose six training units are done, and for the base model and each fine-tuned model:

1. **Representations.** A fixed, seeded sample of the task's test split (the same examples for
   the base and every fine-tuned model) goes through the model's *backbone* (``LlamaModel``). Every
   depth is kept: the embedding output, the residual stream after each decoder layer, and the
   final-norm output (``L + 2`` depths for ``L`` layers; see `extract`). Each depth is pooled three
   ways: masked mean over the real tokens, last real token, and the original study's unmasked mean
   over a sample padded to its longest example (see `extract` for how that is computed cheaply).
   LoRA models are read merged; a subset is also read unmerged and the two are compared.
   Pooled states are cached per (task, model) in ``artifacts/<profile>/drift/<task>/``.
2. **Measures** per depth and pooling: linear CKA, debiased CKA, mean cosine, and the original's
   formula on the original's pooling, each with a bootstrap interval over examples; a permutation
   null; seed-vs-seed similarities within and across methods.
3. **Weight space.** Intruder dimensions (Shuttleworth et al. 2024) of the adapted matrices.
4. **Forgetting.** Perplexity on a fixed WikiText-2 slice of each fine-tuned backbone read through
   the *base* model's LM head (after Biderman et al. 2024).
5. **Across seeds.** Drift (1 - similarity) per seed, FT vs LoRA with Welch's t, an exact
   permutation test and Hedges' g, Holm-adjusted over the chapter's claims.

Results: ``data/<profile>/drift_<task>.json`` (+ ``_layers.csv``, ``_pairs.csv``, ``_null.csv``,
``_intruders.csv``), ``drift_summary.json``, ``drift_timing.json``. Everything is resumable: a task
whose inputs (models, profile, drift settings) did not change is skipped without loading a model.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from . import LoraDriftError, measures
from .config import environment, load_profile, run_id
from .store import artifacts_dir, data_dir, read_json, repo_root, write_csv, write_json

# ------------------------------------------------------------------------------------ settings
DEFAULTS = {
    "sample_seed": 0,
    # examples per task from the test split; None = all (RTE 277, MRPC 408, SST-2 872)
    "max_examples": {"rte": None, "mrpc": None, "sst2": None},
    "batch_tokens": 4096,        # padded tokens per forward batch
    "n_boot": 200,               # bootstrap replicates per interval (over examples); 200 to fit the time budget
    "n_perm": 50,                # permutation-null draws per depth
    "alpha": 0.05,
    "boot_seed": 0,
    "merge_check_examples": 16,  # LoRA merged vs unmerged compared on this many examples
    # The original's pooling: pad positions evaluated per example (stratified over the padding);
    # None = every pad position (exact, 2-4x the cost of the real tokens).
    "original_pad_positions": 8,
    "original_check_examples": 8,  # base model: exact vs sampled padding compared on these
    "intruder_k": 10,
    "intruder_threshold": 0.5,
    "intruder_modules": ["q_proj", "v_proj"],
    "ppl_chunks": 12,            # forgetting: the first K non-overlapping chunks of the text...
    "ppl_chunk_len": 256,        # ...of this many tokens
    "wikitext": None,            # None: $LORADRIFT_WIKITEXT, else ../shared/data/wikitext-2-raw/wiki.test.raw
}
POOLINGS = ("masked", "last", "original")
MEASURES = {  # pooling -> measures with a bootstrap interval
    "masked": ("cka", "debiased_cka", "cosine"),
    "last": ("cka", "debiased_cka", "cosine"),
    "original": ("original_study_similarity", "cosine"),  # only to reproduce the original's numbers
}
DRIFT_CLAIMS = (("masked", "cka"), ("masked", "debiased_cka"))  # tested FT vs LoRA, per task x summary

# The original study's headline drift numbers, typed in from METHODS.md section 7.2 (computed there
# from drift_analysis/drift_analysis_results.json of benc61116/NLP at eef92c5): mean over its 22
# layers of 1 - "CKA" (its formula, unmasked mean pooling), per seed 42 / 1337 / 2024, and the mean
# cosine over layers.
ORIGINAL_SOURCE = ("benc61116/NLP @ eef92c5, drift_analysis/drift_analysis_results.json "
                   "(as summarised in METHODS.md, section 7.2)")
ORIGINAL_RESULTS = {
    ("mrpc", "full"): {"mean_drift": [0.7739, 0.7803, 0.7778], "mean_cosine": [0.9661, 0.9670, 0.9607]},
    ("mrpc", "lora"): {"mean_drift": [0.7671, 0.7668, 0.7613], "mean_cosine": [0.9898, 0.9811, 0.9824]},
    ("sst2", "full"): {"mean_drift": [0.9153, 0.8735, 0.9078], "mean_cosine": [0.6556, 0.8373, 0.8280]},
    ("sst2", "lora"): {"mean_drift": [0.6374, 0.6326, 0.6542], "mean_cosine": [0.9775, 0.9790, 0.9676]},
    ("rte", "full"): {"mean_drift": [0.6031, 0.5968, 0.6050], "mean_cosine": [0.9975, 0.9966, 0.9916]},
    ("rte", "lora"): {"mean_drift": [0.6046, 0.5992, 0.5988], "mean_cosine": [0.9966, 0.9963, 0.9946]},
}
# its RTE full-FT result at layer 0 (METHODS.md section 5): identical representations by cosine, "CKA" far below 1
ORIGINAL_RTE_LAYER0 = {"cosine": 1.000, "cka": 0.595}
ORIGINAL_REDUCTION = {"mrpc": 1.57, "sst2": 28.63, "rte": 0.13}  # "drift reduction %", mean over seeds


def drift_config(prof: dict) -> dict:
    """DEFAULTS, updated by the profile's optional ``drift:`` section."""
    cfg = json.loads(json.dumps(DEFAULTS))
    for k, v in (prof.get("drift") or {}).items():
        if k not in cfg:
            raise LoraDriftError(f"unknown drift setting {k!r} in profile {prof['name']}: known {sorted(cfg)}")
        cfg[k] = {**cfg[k], **v} if isinstance(cfg[k], dict) else v
    return cfg


def wikitext_path(cfg: dict | None = None) -> Path:
    """The forgetting text: the drift setting, else $LORADRIFT_WIKITEXT, else the shared WikiText-2 test file."""
    p = (cfg or {}).get("wikitext") or os.environ.get("LORADRIFT_WIKITEXT")
    path = Path(p) if p else repo_root().parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
    if not path.is_file():
        raise LoraDriftError(f"forgetting text {path} does not exist: set LORADRIFT_WIKITEXT (or the profile's "
                             "drift.wikitext) to a plain-text file, e.g. WikiText-2's wiki.test.raw")
    return path


def depth_names(n_layers: int) -> list[str]:
    """``embedding``, ``layer_1`` ... ``layer_L`` (residual stream after decoder layer i), ``final_norm``."""
    return ["embedding", *[f"layer_{i}" for i in range(1, n_layers + 1)], "final_norm"]


def device() -> torch.device:
    """Where models run: the GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------------ extraction
def _hidden_states(backbone, input_ids, attention_mask, position_ids=None) -> list[torch.Tensor]:
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
                           "this transformers version differs from the one drift.py was written for")
    return [*hs[:-1], captured["last_layer"], out.last_hidden_state]


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


@torch.no_grad()
def extract(backbone, tokenizer, texts: list[str], max_length: int, batch_tokens: int = 4096,
            original: bool = True, pad_positions: int | None = 8, t_max: int | None = None) -> dict:
    """Pooled hidden states of ``texts`` at every depth of ``backbone`` (a LlamaModel).

    Returns {"masked": [depths, N, D], "last": [depths, N, D], and with ``original`` also
    "original": [depths, N, D]} as float32 numpy arrays, rows in the order of ``texts``, plus
    "tokens" (real tokens) and "tokens_run" (positions actually computed).

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
    """
    device = next(backbone.parameters()).device
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(x) for x in enc])
    if (lengths == 0).any():
        raise LoraDriftError("an example tokenised to zero tokens; check the input texts")
    n = len(enc)
    t_max = int(t_max or lengths.max())
    pad_id = tokenizer.pad_token_id
    pos = [(_pad_positions(int(lengths[i]), t_max, pad_positions) if original else []) for i in range(n)]
    row_len = np.array([lengths[i] + len(pos[i]) for i in range(n)])
    order = np.argsort(row_len, kind="stable")
    out = {k: None for k in (("masked", "last", "original") if original else ("masked", "last"))}
    tokens_run = 0
    start = 0
    while start < n:
        # grow the batch (examples sorted by row length) while rows x longest row fits the budget
        # and the rows have similar lengths (little padding is computed)
        stop, first = start + 1, row_len[order[start]]
        while (stop < n and (stop + 1 - start) * row_len[order[stop]] <= batch_tokens
               and row_len[order[stop]] <= 1.15 * first + 4):
            stop += 1
        idx = order[start:stop]
        T = int(row_len[idx].max())
        ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        position = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):
            L = int(lengths[i])
            ids[r, :L] = torch.tensor(enc[i])
            mask[r, :L] = 1
            position[r, :L] = torch.arange(L)
            p = pos[i]
            if p:
                position[r, L:L + len(p)] = torch.tensor(p)
            position[r, L + len(p):] = t_max  # unused filler positions (masked, never pooled)
        tokens_run += len(idx) * T
        hs = _hidden_states(backbone, ids.to(device), mask.to(device), position.to(device))
        m = mask.to(device)
        pooled = {"masked": [measures.masked_mean_pool(h, m) for h in hs],
                  "last": [measures.last_token_pool(h, m).float() for h in hs]}
        if original:
            orig = []
            for h in hs:
                h = h.float()
                rows = []
                for r, i in enumerate(idx):
                    L, p = int(lengths[i]), pos[i]
                    s = h[r, :L].sum(0)
                    if p:
                        s = s + h[r, L:L + len(p)].mean(0) * (t_max - L)
                    rows.append(s / t_max)
                orig.append(torch.stack(rows))
            pooled["original"] = orig
        for k in out:
            arr = torch.stack(pooled[k]).cpu().numpy().astype(np.float32)  # [depths, B, D]
            if out[k] is None:
                out[k] = np.empty((arr.shape[0], n, arr.shape[2]), dtype=np.float32)
            out[k][:, idx] = arr
        start = stop
    out["tokens"] = int(lengths.sum())
    out["tokens_run"] = int(tokens_run)
    out["t_max"] = t_max
    return out


def backbone_of(model):
    """The LlamaModel inside a classifier, a causal LM or a (merged or unmerged) PEFT model."""
    m = model
    if hasattr(m, "peft_config"):  # PeftModel -> LoraModel -> the seq-cls model with LoRA layers injected
        m = m.base_model.model
    return m.model if hasattr(m, "model") and hasattr(m.model, "layers") else m


# ------------------------------------------------------------------------------------ forgetting
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


# ------------------------------------------------------------------------------------ weight space
def weight_change(base_backbone, ft_backbone, modules=("q_proj", "v_proj"), k: int = 10,
                  threshold: float = 0.5, base_svd: dict | None = None) -> list[dict]:
    """Intruder dimensions and relative change ||W_ft - W_base||_F / ||W_base||_F per layer and matrix.

    Intruders as in `measures.intruder_dimensions` (same definition; a test checks they agree), with
    the base matrices' left singular vectors computed once and kept in ``base_svd`` (a dict the
    caller may reuse across fine-tuned models).
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
            u_ft = np.linalg.svd(wf, full_matrices=False)[0][:, :k]
            max_sims = np.abs(u_ft.T @ base_svd[(i, name)]).max(axis=1)
            rows.append({"layer": i, "matrix": name, "n_intruders": int((max_sims < threshold).sum()),
                         "min_max_sim": float(max_sims.min()),
                         "rel_change": float(np.linalg.norm(wf - wb) / np.linalg.norm(wb))})
    return rows


# ------------------------------------------------------------------------------------ caching
def _task_dir(profile: str, task: str) -> Path:
    return artifacts_dir(profile) / "drift" / task


def save_reps(path: Path, reps: dict, meta: dict) -> Path:
    """Pooled states (float32 arrays) + meta, atomically, as an uncompressed .npz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    arrays = {k: v for k, v in reps.items() if isinstance(v, np.ndarray)}
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)
    return path


def load_reps(path: Path) -> tuple[dict, dict]:
    """(arrays, meta) of a cached representation file; a clear error if it is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise LoraDriftError(f"cached representations {path} are unreadable or corrupt ({type(e).__name__}: {e}); "
                             f"delete the file and re-run `python -m loradrift drift` (it is recomputed)") from e
    for k in ("masked", "last"):
        if k not in arrays or arrays[k].ndim != 3:
            raise LoraDriftError(f"cached representations {path} lack a valid {k!r} array; "
                                 "delete the file and re-run `python -m loradrift drift` (it is recomputed)")
    return arrays, meta


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _unit_fingerprint(prof: dict, rid: str) -> dict:
    from .train import result_path
    rec = read_json(result_path(prof["name"], rid))
    return {"id": rid, "config_hash": rec.get("config_hash"), "finished_at": rec.get("finished_at")}


def _task_rids(prof: dict, task: str) -> list[tuple[str, str, int]]:
    return [(run_id(task, m, s), m, int(s)) for m in prof["methods"] for s in prof["seeds"]]


def task_fingerprint(prof: dict, task: str, cfg: dict | None = None) -> str:
    """What a task's drift results depend on: the drift settings and the trained units they read."""
    cfg = cfg or drift_config(prof)
    return _fingerprint({"settings": _extract_settings(prof, cfg, task), "cfg": cfg,
                         "units": [_unit_fingerprint(prof, r) for r, _, _ in _task_rids(prof, task)]})


def is_current(prof: dict, task: str, fp: str | None = None) -> bool:
    """Were the task's committed drift results computed from its current trained units and settings?
    False when they are absent, unreadable, or made from units that have since been re-trained."""
    d = data_dir(prof["name"])
    if not ((d / f"drift_{task}.json").exists() and (d / f"drift_{task}_layers.csv").exists()):
        return False
    try:
        return read_json(d / f"drift_{task}.json").get("fingerprint") == (fp or task_fingerprint(prof, task))
    except (ValueError, FileNotFoundError, KeyError):
        return False


def _extract_settings(prof: dict, cfg: dict, task: str) -> dict:
    return {"task": task, "model": prof["model"], "data": {k: v for k, v in prof["data"].items() if k != "source"},
            "max_examples": cfg["max_examples"].get(task), "sample_seed": cfg["sample_seed"],
            "original_pad_positions": cfg["original_pad_positions"], "ppl": [cfg["ppl_chunks"], cfg["ppl_chunk_len"]],
            "intruders": [cfg["intruder_k"], cfg["intruder_threshold"], cfg["intruder_modules"]],
            "merge_check_examples": cfg["merge_check_examples"]}


# ------------------------------------------------------------------------------------ sample
def drift_sample(prof: dict, task: str, cfg: dict, glue_source=None) -> dict:
    """The task's fixed drift sample: test-split indices (seeded subsample if capped), texts, labels."""
    from .data import study_splits, texts
    test = study_splits(prof, task, glue_source)["test"]
    n = len(test)
    cap = cfg["max_examples"].get(task)
    idx = np.arange(n) if not cap or cap >= n else np.sort(
        np.random.default_rng(cfg["sample_seed"]).choice(n, int(cap), replace=False))
    sub = test.select(idx.tolist())
    t = texts(task, sub)
    return {"indices": idx.tolist(), "texts": t, "labels": list(sub["label"]), "n_test": n,
            "hash": hashlib.sha256("\n".join(t).encode()).hexdigest()[:16]}


# ------------------------------------------------------------------------------------ the stage
def task_units_done(prof: dict, task: str) -> tuple[bool, list[str]]:
    """(all units of the task done?, the ones that are not, with their status)."""
    from .train import unit_status
    bad = [f"{run_id(task, m, s)} ({st})" for m in prof["methods"] for s in prof["seeds"]
           if (st := unit_status(prof, task, m, s)) != "done"]
    return not bad, bad


class _Base:
    """The base causal LM, loaded on first use: backbone for extraction, untied LM head for perplexity."""

    def __init__(self, prof):
        self.prof, self._lm, self._tok = prof, None, None
        self.svd = {}  # (layer, matrix) -> the base weight's left singular vectors

    def load(self):
        if self._lm is None:
            from transformers import AutoModelForCausalLM

            from .models import DTYPES, base_model_path, load_tokenizer
            path = base_model_path(self.prof)
            self._tok = load_tokenizer(path)
            self._lm = AutoModelForCausalLM.from_pretrained(
                path, dtype=DTYPES[self.prof["model"].get("dtype", "float32")]).eval().to(device())
            self.head = self._lm.lm_head.weight.detach().clone()  # a copy: untied from any embedding
        return self

    @property
    def backbone(self):
        return self.load()._lm.model

    @property
    def tok(self):
        return self.load()._tok


def _model_record(prof, cfg, task, rid, method, base: _Base, sample, chunks, t_max, settings) -> tuple[dict, dict]:
    """Load one fine-tuned unit, extract its pooled states, forgetting and weight change."""
    from .models import load_finetuned
    from .train import model_dir
    rec = {"id": rid, "method": method}
    t0, c0 = time.perf_counter(), _cpu_s()
    model, tok = load_finetuned(prof, model_dir(prof["name"], rid), method, merge=False)
    model = model.to(device())
    max_len = int(prof["data"]["max_length"])
    kw = dict(max_length=max_len, batch_tokens=cfg["batch_tokens"], t_max=t_max)
    if method == "lora":
        sub = sample["texts"][: cfg["merge_check_examples"]]
        un = extract(backbone_of(model), tok, sub, original=False, **kw)
        model = model.merge_and_unload().eval()
        me = extract(backbone_of(model), tok, sub, original=False, **kw)
        rec["merge_check"] = {
            "n_examples": len(sub),
            **{f"max_abs_diff_{k}": float(np.abs(un[k] - me[k]).max()) for k in ("masked", "last")},
            **{f"max_rel_diff_{k}": float(np.abs(un[k] - me[k]).max() / np.abs(me[k]).max()) for k in ("masked", "last")}}
    bb = backbone_of(model)
    reps = extract(bb, tok, sample["texts"], original=True, pad_positions=cfg["original_pad_positions"], **kw)
    rec["extract"] = {"tokens": reps["tokens"], "tokens_run": reps["tokens_run"],
                      "wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s() - c0}
    t1, c1 = time.perf_counter(), _cpu_s()
    rec["chunk_nll"] = chunk_nll(bb, base.head, chunks).tolist()
    rec["ppl_time"] = {"wall_s": time.perf_counter() - t1, "cpu_s": _cpu_s() - c1}
    t2, c2 = time.perf_counter(), _cpu_s()
    rec["weights"] = weight_change(base.backbone, bb, cfg["intruder_modules"], cfg["intruder_k"],
                                   cfg["intruder_threshold"], base.svd)
    rec["weights_time"] = {"wall_s": time.perf_counter() - t2, "cpu_s": _cpu_s() - c2}
    del model
    return reps, rec


def _base_record(prof, cfg, base: _Base, sample, chunks, t_max) -> tuple[dict, dict]:
    t0, c0 = time.perf_counter(), _cpu_s()
    max_len = int(prof["data"]["max_length"])
    kw = dict(max_length=max_len, batch_tokens=cfg["batch_tokens"], t_max=t_max)
    reps = extract(base.backbone, base.tok, sample["texts"], original=True,
                   pad_positions=cfg["original_pad_positions"], **kw)
    rec = {"id": "base", "method": "base",
           "extract": {"tokens": reps["tokens"], "tokens_run": reps["tokens_run"],
                       "wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s() - c0}}
    # how good is the sampled padding? exact (every pad position) vs sampled on the examples with most padding
    m = cfg["original_pad_positions"]
    if m is not None and cfg["original_check_examples"]:
        lengths = np.array([len(x) for x in base.tok(sample["texts"], truncation=True, max_length=max_len)["input_ids"]])
        pick = np.argsort(lengths, kind="stable")[: cfg["original_check_examples"]]
        sub = [sample["texts"][i] for i in pick]
        exact = extract(base.backbone, base.tok, sub, pad_positions=None, **kw)["original"]
        approx = reps["original"][:, pick]
        err = np.linalg.norm(approx - exact, axis=2) / np.linalg.norm(exact, axis=2)  # [depths, n]
        rec["original_pooling_check"] = {"n_examples": len(pick), "pad_positions": m, "t_max": t_max,
                                         "max_rel_error": float(err.max()), "median_rel_error": float(np.median(err)),
                                         "max_rel_error_per_depth": err.max(1).tolist()}
    t1, c1 = time.perf_counter(), _cpu_s()
    rec["chunk_nll"] = chunk_nll(base.backbone, base.head, chunks).tolist()
    rec["ppl_time"] = {"wall_s": time.perf_counter() - t1, "cpu_s": _cpu_s() - c1}
    return reps, rec


def run_drift(prof: dict | str, tasks=None, glue_source=None) -> dict:
    """The drift stage for the profile's tasks (or ``tasks``); skips tasks whose units are not all
    done, and tasks whose results are current. Returns {task: "computed" | "current" | "skipped: ..."}."""
    prof = load_profile(prof) if isinstance(prof, str) else prof
    cfg = drift_config(prof)
    status = {}
    base = _Base(prof)
    for task in tasks or prof["tasks"]:
        ok, bad = task_units_done(prof, task)
        if not ok:
            status[task] = "skipped: units not done: " + ", ".join(bad)
            print(f"[drift {task}] skipped: not all training units are done: {', '.join(bad)}")
            continue
        rids = _task_rids(prof, task)
        settings = _extract_settings(prof, cfg, task)
        fp = task_fingerprint(prof, task, cfg)
        if is_current(prof, task, fp):
            status[task] = "current"
            print(f"[drift {task}] results are current: drift_{task}.json (skipped)")
            continue
        _run_task(prof, cfg, task, rids, settings, fp, base, glue_source)
        status[task] = "computed"
    if any(v == "computed" for v in status.values()) or not (data_dir(prof["name"]) / "drift_summary.json").exists():
        summarise(prof)
    return status


class _TaskCtx:
    """What the per-model work of one task shares: sample, base model, forgetting text, sample length."""

    def __init__(self, prof, cfg, task, base: _Base, glue_source=None):
        self.prof, self.cfg, self.task, self.base = prof, cfg, task, base
        self.settings = _extract_settings(prof, cfg, task)
        self.tdir = _task_dir(prof["name"], task)
        self.sample = drift_sample(prof, task, cfg, glue_source)
        self.chunks = self.t_max = None

    def prepare(self):
        if self.chunks is None:
            tok = self.base.load().tok
            self.chunks = wikitext_chunks(tok, wikitext_path(self.cfg), self.cfg["ppl_chunks"], self.cfg["ppl_chunk_len"])
            self.t_max = max(len(x) for x in tok(self.sample["texts"], truncation=True,
                                                 max_length=int(self.prof["data"]["max_length"]))["input_ids"])


def _ensure_model(ctx: _TaskCtx, rid: str, method: str) -> tuple[dict, dict]:
    """The cached pooled states and record of one model of a task, computed if missing or stale."""
    npz, js = ctx.tdir / f"{rid}.npz", ctx.tdir / f"{rid}.json"
    key = {"settings": ctx.settings, "sample": ctx.sample["hash"],
           "unit": _unit_fingerprint(ctx.prof, rid) if rid != "base" else "base"}
    if npz.exists() and js.exists():
        arrays, meta = load_reps(npz)
        try:
            rec = read_json(js)
        except ValueError as e:
            raise LoraDriftError(f"cached record {js} is corrupt ({e}): delete it and {npz.name}, then re-run "
                                 "`python -m loradrift drift`") from e
        if meta.get("key") == key and rec.get("key") == key:
            print(f"[drift {ctx.task}] {rid}: cached")
            return arrays, rec
        print(f"[drift {ctx.task}] {rid}: cache is stale (model, sample or settings changed); recomputing")
    ctx.prepare()
    print(f"[drift {ctx.task}] {rid}: extracting {len(ctx.sample['texts'])} examples", flush=True)
    if rid == "base":
        r, rec = _base_record(ctx.prof, ctx.cfg, ctx.base, ctx.sample, ctx.chunks, ctx.t_max)
    else:
        r, rec = _model_record(ctx.prof, ctx.cfg, ctx.task, rid, method, ctx.base, ctx.sample, ctx.chunks,
                               ctx.t_max, ctx.settings)
    rec["key"], rec["t_max"] = key, r["t_max"]
    arrays = {k: r[k] for k in POOLINGS}
    save_reps(npz, arrays, {"key": key, "t_max": r["t_max"]})
    write_json(js, rec)
    return arrays, rec


def cache_models(prof: dict | str, task: str, ids: list[str], glue_source=None) -> None:
    """Compute (or confirm) the cached pooled states of some models of a task ("base" or run ids whose
    unit is done), e.g. while the task's other units are still training; `run_drift` reuses them."""
    prof = load_profile(prof) if isinstance(prof, str) else prof
    from .train import unit_status
    ctx = _TaskCtx(prof, drift_config(prof), task, _Base(prof), glue_source)
    for rid in ids:
        if rid == "base":
            _ensure_model(ctx, "base", "base")
            continue
        t, method, seed = rid.split("-")
        if unit_status(prof, t, method, int(seed[1:])) != "done":
            print(f"[drift {task}] {rid}: unit not done (skipped)")
            continue
        _ensure_model(ctx, rid, method)


def _run_task(prof, cfg, task, rids, settings, fp, base: _Base, glue_source):
    t_task, c_task = time.perf_counter(), _cpu_s()
    ctx = _TaskCtx(prof, cfg, task, base, glue_source)
    sample, tdir = ctx.sample, ctx.tdir
    reps, recs = {}, {}
    for rid, method, seed in [("base", "base", None)] + rids:
        reps[rid], recs[rid] = _ensure_model(ctx, rid, method)
    t_meas, c_meas = time.perf_counter(), _cpu_s()
    print(f"[drift {task}] measures")
    layers, pairs, null = task_measures(task, reps, rids, cfg)
    meas_time = {"wall_s": time.perf_counter() - t_meas, "cpu_s": _cpu_s() - c_meas}
    n_layers = reps["base"]["masked"].shape[0] - 2
    d = data_dir(prof["name"])
    import pandas as pd
    intr = pd.DataFrame([{"task": task, "model": rid, "method": m, "seed": s, **w}
                         for rid, m, s in rids for w in recs[rid]["weights"]])
    write_csv(d / f"drift_{task}_layers.csv", layers)
    write_csv(d / f"drift_{task}_pairs.csv", pairs)
    write_csv(d / f"drift_{task}_null.csv", null)
    write_csv(d / f"drift_{task}_intruders.csv", intr)
    base_nll = np.array(recs["base"]["chunk_nll"])
    forgetting = []
    for rid, m, s in rids:
        nll = np.array(recs[rid]["chunk_nll"])
        diff = nll - base_nll
        rng = np.random.default_rng(cfg["boot_seed"])
        bs = diff[rng.integers(0, len(diff), (2000, len(diff)))].mean(1)
        lo, hi = np.quantile(bs, [cfg["alpha"] / 2, 1 - cfg["alpha"] / 2])
        forgetting.append({"model": rid, "method": m, "seed": s, "ppl": float(np.exp(nll.mean())),
                           "base_ppl": float(np.exp(base_nll.mean())), "delta_nll": float(diff.mean()),
                           "delta_nll_lo": float(lo), "delta_nll_hi": float(hi),
                           "ppl_ratio": float(np.exp(diff.mean()))})
    cost = {"wall_s": time.perf_counter() - t_task, "cpu_s": _cpu_s() - c_task}
    per_model = {rid: {k: recs[rid].get(k) for k in ("extract", "ppl_time", "weights_time")} for rid in recs}
    # the cost of computing this task from scratch = the per-model records + the measures
    total = {k: sum((v.get(p) or {}).get(k, 0.0) for v in per_model.values() for p in ("extract", "ppl_time", "weights_time"))
             + meas_time[k] for k in ("wall_s", "cpu_s")}
    write_json(d / f"drift_{task}.json", {
        "task": task, "profile": prof["name"], "fingerprint": fp, "config": cfg,
        "sample": {"n": len(sample["indices"]), "n_test": sample["n_test"], "hash": sample["hash"],
                   "indices": sample["indices"], "tokens": recs["base"]["extract"]["tokens"],
                   "t_max": recs["base"].get("t_max")},
        "n_layers": n_layers, "depths": depth_names(n_layers), "hidden_size": int(reps["base"]["masked"].shape[2]),
        "models": [{"id": r, "method": m, "seed": s} for r, m, s in rids],
        "merge_check": {rid: recs[rid]["merge_check"] for rid, m, _ in rids if m == "lora"},
        "original_pooling_check": recs["base"].get("original_pooling_check"),
        "forgetting": {"text": str(wikitext_path(cfg).name), "chunks": cfg["ppl_chunks"],
                       "chunk_len": cfg["ppl_chunk_len"], "base_chunk_nll": recs["base"]["chunk_nll"],
                       "models": forgetting},
        "timing": {"per_model": per_model, "measures": meas_time, "total_from_scratch": total,
                   "this_call": cost, "loadavg": os.getloadavg()},
        "environment": environment(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    print(f"[drift {task}] done in {cost['wall_s']:.0f} s (cpu {cost['cpu_s']:.0f} s) -> {d}")


# ------------------------------------------------------------------------------------ measures
def task_measures(task: str, reps: dict, rids: list, cfg: dict):
    """Per-depth measures of one task -> (layers, pairs, null) DataFrames.

    layers: base vs each model, every pooling x measure with a bootstrap interval (``distinct``
    duplicates: see measures.bootstrap_replicates), plus the base's self-similarity under the
    original's formula. pairs: model vs model (same method different seeds, and across methods),
    masked pooling. null: base vs the first seed of each method with the example pairing shuffled.
    """
    import pandas as pd
    base = reps["base"]
    n_depth = base["masked"].shape[0]
    names = depth_names(n_depth - 2)
    rows, pair_rows, null_rows = [], [], []
    nb, a, bs = cfg["n_boot"], cfg["alpha"], cfg["boot_seed"]
    for rid, method, seed in rids:
        for pooling, ms in MEASURES.items():
            for d in range(n_depth):
                X, Y = base[pooling][d], reps[rid][pooling][d]
                for meas in ms:
                    v, lo, hi = measures.bootstrap_ci(X, Y, meas, n_boot=nb, alpha=a, seed=bs)
                    rows.append({"task": task, "model": rid, "method": method, "seed": seed, "pooling": pooling,
                                 "measure": meas, "depth": d, "depth_name": names[d], "value": v, "lo": lo, "hi": hi})
    for d in range(n_depth):  # the original formula's ceiling: base compared with itself
        X = base["original"][d]
        rows.append({"task": task, "model": "base", "method": "base", "seed": None, "pooling": "original",
                     "measure": "original_study_similarity", "depth": d, "depth_name": names[d],
                     "value": measures.original_study_similarity(X, X), "lo": None, "hi": None})
    by_method = {}
    for rid, m, s in rids:
        by_method.setdefault(m, []).append(rid)
    pairs = []
    for m, ids in by_method.items():
        pairs += [(f"within_{m}", ids[i], ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids))]
    methods = list(by_method)
    if len(methods) == 2:
        pairs += [("across", x, y) for x in by_method[methods[0]] for y in by_method[methods[1]]]
    for kind, x, y in pairs:
        for d in range(n_depth):
            X, Y = reps[x]["masked"][d], reps[y]["masked"][d]
            for meas in ("cka", "debiased_cka"):
                pair_rows.append({"task": task, "kind": kind, "a": x, "b": y, "pooling": "masked", "measure": meas,
                                  "depth": d, "depth_name": names[d], "value": measures.SIMILARITIES[meas](X, Y)})
    for m, ids in by_method.items():
        rid = ids[0]
        for d in range(n_depth):
            X, Y = base["masked"][d], reps[rid]["masked"][d]
            for meas in ("cka", "debiased_cka"):
                nl = measures.permutation_null(X, Y, meas, n_perm=cfg["n_perm"], seed=bs)
                null_rows.append({"task": task, "model": rid, "method": m, "pooling": "masked", "measure": meas,
                                  "depth": d, "depth_name": names[d], "null_mean": float(np.nanmean(nl)),
                                  "null_q95": float(np.nanquantile(nl, 0.95)), "null_max": float(np.nanmax(nl)),
                                  "n_perm": cfg["n_perm"]})
    return pd.DataFrame(rows), pd.DataFrame(pair_rows), pd.DataFrame(null_rows)


# ------------------------------------------------------------------------------------ summary
def seed_drifts(layers, task_metric_of=None):
    """Per (task, method, seed, pooling, measure): drift = 1 - similarity at the final-norm output
    (``last``; what the classifier reads) and averaged over the decoder layers (``mean``)."""
    import pandas as pd
    df = layers[layers["method"] != "base"]
    out = []
    for (task, model, method, seed, pooling, meas), g in df.groupby(
            ["task", "model", "method", "seed", "pooling", "measure"], sort=False):
        g = g.sort_values("depth")
        dec = g[g["depth_name"].str.startswith("layer_")]
        out.append({"task": task, "model": model, "method": method, "seed": int(seed), "pooling": pooling,
                    "measure": meas, "last": 1 - float(g["value"].iloc[-1]),
                    "last_decoder": 1 - float(dec["value"].iloc[-1]), "mean": 1 - float(dec["value"].mean())})
    return pd.DataFrame(out)


def summarise(prof: dict | str) -> dict | None:
    """Across-seed statistics over every task with drift results -> data/<profile>/drift_summary.json
    and drift_timing.json. Cheap: reads the per-task CSV/JSON files only."""
    import pandas as pd

    from .tasks import task_metric
    from .train import result_path
    prof = load_profile(prof) if isinstance(prof, str) else prof
    profile = prof["name"]
    d = data_dir(profile)
    tasks = [t for t in prof["tasks"] if (d / f"drift_{t}_layers.csv").exists()
             and (d / f"drift_{t}.json").exists()]
    if not tasks:
        return None
    layers = pd.concat([pd.read_csv(d / f"drift_{t}_layers.csv") for t in tasks], ignore_index=True)
    pairs = pd.concat([pd.read_csv(d / f"drift_{t}_pairs.csv") for t in tasks], ignore_index=True)
    sd = seed_drifts(layers)
    runs = {m: read_json(result_path(profile, m)) for m in sd["model"].unique() if result_path(profile, m).exists()}
    sd["test_score"] = [runs[m]["test"][task_metric(t)] if m in runs else None for m, t in zip(sd["model"], sd["task"])]
    sd["test_accuracy"] = [runs[m]["test"]["accuracy"] if m in runs else None for m in sd["model"]]
    tests = []
    for task in tasks:
        for pooling, meas in DRIFT_CLAIMS:
            for summary in ("last", "mean"):
                g = sd[(sd["task"] == task) & (sd["pooling"] == pooling) & (sd["measure"] == meas)]
                ft, lo = g[g["method"] == "full"][summary].to_numpy(), g[g["method"] == "lora"][summary].to_numpy()
                if len(ft) < 2 or len(lo) < 2:
                    continue
                tests.append({"task": task, "pooling": pooling, "measure": meas, "summary": summary,
                              "claim": f"FT drift != LoRA drift ({meas}, {summary})",
                              **measures.compare_groups(ft, lo)})
    if tests:
        hw = measures.holm([t["welch_p"] for t in tests])
        hp = measures.holm([t["perm_p"] for t in tests])
        for t, a, b in zip(tests, hw, hp):
            t["welch_p_holm"], t["perm_p_holm"] = float(a), float(b)
    # seed noise vs method difference at the final-norm output: similarity of two models of the same
    # method (different seeds) and of two models of different methods
    last = pairs[pairs["depth"] == pairs.groupby("task")["depth"].transform("max")]
    noise = (last.groupby(["task", "measure", "kind"])["value"].agg(["mean", "min", "max", "count"])
             .reset_index().to_dict("records"))
    per_task = {t: read_json(d / f"drift_{t}.json") for t in tasks}
    timing = {t: per_task[t]["timing"]["total_from_scratch"] for t in tasks}
    tokens = {t: sum(v["extract"]["tokens_run"] for v in per_task[t]["timing"]["per_model"].values()) for t in tasks}
    summary = {"profile": profile, "tasks": tasks, "seed_drifts": sd.to_dict("records"), "tests": tests,
               "holm_family": len(tests), "seed_noise": noise,
               "note": "drift = 1 - similarity (masked-mean pooling); 'last' = final-norm output, 'mean' = "
                       "mean over decoder layers; p-values two-sided; Holm over every test listed"}
    write_json(d / "drift_summary.json", summary)
    write_json(d / "drift_timing.json", {
        "profile": profile, "tasks": tasks, "per_task": timing, "tokens_run": tokens,
        "total_wall_s": sum(v["wall_s"] for v in timing.values()),
        "total_cpu_s": sum(v["cpu_s"] for v in timing.values()),
        "budget_s": 1200, "cores": os.cpu_count(),
        "note": "sum over tasks of the per-model extraction, perplexity and weight-space times plus the measures, "
                "as recorded when each piece was computed (cached pieces keep their original time). wall_s is "
                "inflated when the machine was shared; cpu_s / cores estimates the wall time on an idle machine.",
        "environment": {t: per_task[t].get("environment") for t in tasks}})
    return summary


# ------------------------------------------------------------------------------------ for the chapter
def load_results(profile: dict | str) -> dict:
    """Everything the chapter shows, as DataFrames / dicts; empty frames for what is missing.
    ``profile``: a profile name, a YAML path or a loaded profile."""
    import pandas as pd
    prof = load_profile(profile) if isinstance(profile, str) else profile
    d = data_dir(prof["name"])
    tasks = [t for t in prof["tasks"] if (d / f"drift_{t}_layers.csv").exists() and (d / f"drift_{t}.json").exists()]
    cat = lambda suffix: (pd.concat([pd.read_csv(d / f"drift_{t}_{suffix}.csv") for t in tasks], ignore_index=True)  # noqa: E731
                          if tasks else pd.DataFrame())
    summary = read_json(d / "drift_summary.json") if (d / "drift_summary.json").exists() and tasks else {}
    return {"tasks": tasks, "missing": [t for t in prof["tasks"] if t not in tasks],
            "layers": cat("layers"), "pairs": cat("pairs"), "null": cat("null"), "intruders": cat("intruders"),
            "task_json": {t: read_json(d / f"drift_{t}.json") for t in tasks},
            "summary": summary, "seeds": pd.DataFrame(summary.get("seed_drifts", [])),
            "tests": pd.DataFrame(summary.get("tests", [])),
            "timing": read_json(d / "drift_timing.json") if (d / "drift_timing.json").exists() and tasks else {}}


def replication_table(res: dict):
    """Per task x method: the original's figure, our reproduction of its quantity, and correct measures."""
    import pandas as pd
    sd = res["seeds"]
    rows = []
    for task in res["tasks"]:
        for method in ("full", "lora"):
            g = sd[(sd["task"] == task) & (sd["method"] == method)]
            if g.empty:
                continue
            pick = lambda p, m, col="mean": g[(g["pooling"] == p) & (g["measure"] == m)][col]  # noqa: E731
            orig = ORIGINAL_RESULTS.get((task, method), {})
            rep = pick("original", "original_study_similarity")
            rows.append({"task": task, "method": method,
                         "original: mean drift": float(np.mean(orig["mean_drift"])) if orig else None,
                         "ours, their quantity": float(rep.mean()), "ours, their quantity sd": float(rep.std(ddof=1)),
                         "original: mean cosine": float(np.mean(orig["mean_cosine"])) if orig else None,
                         "ours, their cosine": 1 - float(pick("original", "cosine").mean()),
                         "1 - CKA (masked)": float(pick("masked", "cka").mean()),
                         "1 - debiased CKA (masked)": float(pick("masked", "debiased_cka").mean()),
                         "1 - CKA, final norm": float(pick("masked", "cka", "last").mean()),
                         "1 - debiased CKA, final norm": float(pick("masked", "debiased_cka", "last").mean())})
    return pd.DataFrame(rows)
