"""One model's contribution to a task's drift, cached: pooled states, forgetting losses, weight change.

Pooled states are cached per (task, model) in ``artifacts/<profile>/drift/<task>/`` (``<id>.npz``
with the arrays, ``<id>.json`` with the record), under the key of what they depend on
(`currency.extract_settings`, the sample, the trained unit), so a stage re-run computes only what
changed.
"""
from __future__ import annotations

import json
import resource
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import LoraDriftError
from ..methods import kind_of
from ..store import read_json, write_json, write_npz
from .currency import unit_fingerprint
from .extract import backbone_of, device, extract
from .forgetting import chunk_nll
from .weights import weight_change


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextmanager
def timed(rec: dict, name: str):
    """Record the wall and CPU seconds of the block as ``rec[name]``."""
    t0, c0 = time.perf_counter(), _cpu_s()
    yield
    rec[name] = {**rec.get(name, {}), "wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s() - c0}


# ------------------------------------------------------------------------------------ the cache files
def save_reps(path: Path, reps: dict, meta: dict) -> Path:
    """Pooled states (float32 arrays) + meta, atomically, as an uncompressed .npz."""
    arrays = {k: v for k, v in reps.items() if isinstance(v, np.ndarray)}
    return write_npz(path, meta=np.array(json.dumps(meta)), **arrays)


def load_reps(path: Path) -> tuple[dict, dict]:
    """(arrays, meta) of a cached representation file; a clear error if it is unreadable."""
    fix = "delete the file and re-run `python -m loradrift drift` (it is recomputed)"
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise LoraDriftError(f"cached representations {path} are unreadable or corrupt "
                             f"({type(e).__name__}: {e}); {fix}") from e
    for k, ndim in (("masked", 3), ("last", 3), ("lengths", 1)):
        if k not in arrays or arrays[k].ndim != ndim:
            raise LoraDriftError(f"cached representations {path} lack a valid {k!r} array; {fix}")
    return arrays, meta


# ------------------------------------------------------------------------------------ the base model
class Base:
    """The base causal LM, loaded on first use: backbone for extraction, untied LM head for perplexity."""

    def __init__(self, prof):
        self.prof, self._lm, self._tok = prof, None, None
        self.svd = {}  # (layer, matrix) -> the base weight's left singular vectors

    def load(self):
        if self._lm is None:
            from transformers import AutoModelForCausalLM

            from ..models import DTYPES, base_model_path, load_tokenizer
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


class TaskContext:
    """What the per-model work of one task shares: settings, sample, base model, forgetting text."""

    def __init__(self, prof, cfg, task, base: Base, sample: dict, settings: dict, cache_dir: Path, wikitext: Path):
        self.prof, self.cfg, self.task, self.base, self.sample = prof, cfg, task, base, sample
        self.settings, self.cache_dir, self.wikitext = settings, cache_dir, wikitext
        self.chunks = self.t_max = None
        self.sinks = None  # the base model's sink positions per example: every model is pooled without them
        self.max_length = int(prof["data"]["max_length"])

    def prepare(self):
        """The forgetting chunks and the sample's longest example (loads the base tokenizer)."""
        if self.chunks is None:
            from .forgetting import wikitext_chunks
            tok = self.base.load().tok
            self.chunks = wikitext_chunks(tok, self.wikitext, self.cfg["ppl_chunks"], self.cfg["ppl_chunk_len"])
            self.t_max = max(len(x) for x in tok(self.sample["texts"], truncation=True,
                                                 max_length=self.max_length)["input_ids"])

    def extract(self, backbone, tok, texts, **kw):
        return extract(backbone, tok, texts, max_length=self.max_length, batch_tokens=self.cfg["batch_tokens"],
                       t_max=self.t_max, precision=self.cfg.get("precision", "fp32"), sink_ratio=self.cfg["sink_ratio"],
                       **kw)

    def extract_sample(self, backbone, tok, base: bool = False) -> dict:
        """The sample's pooled states; a fine-tuned model's ``masked`` pooling leaves out the base's sinks."""
        if not base and self.sinks is None:
            raise RuntimeError("the base model's record must be read before a fine-tuned model's (its sinks)")
        return self.extract(backbone, tok, self.sample["texts"], original="original" in self.cfg["poolings"],
                            pad_positions=self.cfg["original_pad_positions"], sinks=None if base else self.sinks)


# ------------------------------------------------------------------------------------ one model
def _merge_check(ctx: TaskContext, model, tok) -> tuple[object, dict]:
    """An adapter model read unmerged and merged on the first examples: (merged model, the differences)."""
    k = ctx.cfg["merge_check_examples"]
    sub, sinks = ctx.sample["texts"][:k], ctx.sinks[:k]
    un = ctx.extract(backbone_of(model), tok, sub, original=False, sinks=sinks)
    model = model.merge_and_unload().eval()
    me = ctx.extract(backbone_of(model), tok, sub, original=False, sinks=sinks)
    return model, {"n_examples": len(sub),
                   **{f"max_abs_diff_{k}": float(np.abs(un[k] - me[k]).max()) for k in ("masked", "last")},
                   **{f"max_rel_diff_{k}": float(np.abs(un[k] - me[k]).max() / np.abs(me[k]).max())
                      for k in ("masked", "last")}}


def model_record(ctx: TaskContext, rid: str, method: str) -> tuple[dict, dict]:
    """Load one fine-tuned unit; its pooled states, forgetting losses and weight change."""
    from ..models import load_finetuned
    from ..train import model_dir
    rec, cfg = {"id": rid, "method": method}, ctx.cfg
    with timed(rec, "extract"):  # loading and the merge check count as extraction
        model, tok = load_finetuned(ctx.prof, model_dir(ctx.prof["name"], rid), method, merge=False)
        model = model.to(device())
        if kind_of(ctx.prof, method).adapter:
            model, rec["merge_check"] = _merge_check(ctx, model, tok)
        bb = backbone_of(model)
        reps = ctx.extract_sample(bb, tok)
    rec["extract"].update(tokens=reps["tokens"], tokens_run=reps["tokens_run"])
    rec["sink_summary"] = reps["sink_summary"]
    with timed(rec, "ppl_time"):
        rec["chunk_nll"] = chunk_nll(bb, ctx.base.head, ctx.chunks).tolist()
    with timed(rec, "weights_time"):
        rec["weights"] = weight_change(ctx.base.backbone, bb, cfg["intruder_modules"], cfg["intruder_k"],
                                       cfg["intruder_thresholds"], ctx.base.svd)
    return reps, rec


def _pooling_check(ctx: TaskContext, reps: dict) -> dict:
    """How good is the sampled padding? Exact (every pad position) vs sampled, on the most-padded examples."""
    base, texts = ctx.base, ctx.sample["texts"]
    lengths = np.array([len(x) for x in base.tok(texts, truncation=True, max_length=ctx.max_length)["input_ids"]])
    pick = np.argsort(lengths, kind="stable")[: ctx.cfg["original_check_examples"]]
    exact = ctx.extract(base.backbone, base.tok, [texts[i] for i in pick], pad_positions=None)["original"]
    err = np.linalg.norm(reps["original"][:, pick] - exact, axis=2) / np.linalg.norm(exact, axis=2)  # [depths, n]
    return {"n_examples": len(pick), "pad_positions": ctx.cfg["original_pad_positions"], "t_max": ctx.t_max,
            "max_rel_error": float(err.max()), "median_rel_error": float(np.median(err)),
            "max_rel_error_per_depth": err.max(1).tolist()}


def base_record(ctx: TaskContext) -> tuple[dict, dict]:
    """The base model's pooled states, the check of the sampled padding, and its forgetting losses."""
    rec = {"id": "base", "method": "base"}
    with timed(rec, "extract"):
        reps = ctx.extract_sample(ctx.base.backbone, ctx.base.tok, base=True)
    rec["extract"].update(tokens=reps["tokens"], tokens_run=reps["tokens_run"])
    rec["sinks"], rec["sink_summary"] = reps["sinks"], reps["sink_summary"]
    if "original" in reps and ctx.cfg["original_pad_positions"] is not None and ctx.cfg["original_check_examples"]:
        rec["original_pooling_check"] = _pooling_check(ctx, reps)
    with timed(rec, "ppl_time"):
        rec["chunk_nll"] = chunk_nll(ctx.base.backbone, ctx.base.head, ctx.chunks).tolist()
    return reps, rec


def ensure_model(ctx: TaskContext, rid: str, method: str) -> tuple[dict, dict]:
    """The cached pooled states and record of one model of a task, computed if missing or stale."""
    npz, js = ctx.cache_dir / f"{rid}.npz", ctx.cache_dir / f"{rid}.json"
    key = {"settings": ctx.settings, "sample": ctx.sample["hash"],
           "unit": unit_fingerprint(ctx.prof, rid) if rid != "base" else "base"}
    if npz.exists() and js.exists():
        arrays, meta = load_reps(npz)
        try:
            rec = read_json(js)
        except LoraDriftError as e:
            raise LoraDriftError(f"cached record {js} is corrupt ({e}): delete it and {npz.name}, then re-run "
                                 "`python -m loradrift drift`") from e
        if meta.get("key") == key and rec.get("key") == key:
            print(f"[drift {ctx.task}] {rid}: cached")
            ctx.sinks = rec["sinks"] if rid == "base" else ctx.sinks
            return arrays, rec
        print(f"[drift {ctx.task}] {rid}: cache is stale (model, sample or settings changed); recomputing")
    ctx.prepare()
    print(f"[drift {ctx.task}] {rid}: extracting {len(ctx.sample['texts'])} examples", flush=True)
    r, rec = base_record(ctx) if rid == "base" else model_record(ctx, rid, method)
    rec["key"], rec["t_max"] = key, r["t_max"]
    ctx.sinks = rec["sinks"] if rid == "base" else ctx.sinks
    # the base also keeps `masked_all` (sinks included), for the diagnostic's before-and-after (`diagnostics`)
    keep = [*ctx.cfg["poolings"], *(["masked_all"] if rid == "base" else [])]
    arrays = {**{k: r[k] for k in dict.fromkeys(keep)}, "lengths": r["lengths"]}
    save_reps(npz, arrays, {"key": key, "t_max": r["t_max"]})
    write_json(js, rec)
    return arrays, rec
