"""The drift stage on a tiny random Llama: extraction layout, pooling invariances, LoRA merge,
forgetting perplexity, caching, and the end-to-end stage on trained tiny units.

The trained units are built once per session (one task, two seeds per method, one epoch) in a
book root of their own; tests that use them point LORADRIFT_ROOT at it."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import FILL, make_tiny_llama, tiny_profile_dict, write_tiny_glue
from loradrift import LoraDriftError, drift
from loradrift.drift import extract as E
from loradrift.drift import forgetting as F
from loradrift.drift import weights as W

TEXTS = ["the movie was good", "a very old man said it is bad and the story was dull today", "rain",
         "she said the plot is quite grim", "they and he"]


@pytest.fixture(scope="module")
def base_lm(tiny_model):
    from transformers import AutoModelForCausalLM

    from loradrift.models import load_tokenizer
    return AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval(), load_tokenizer(str(tiny_model))


# ------------------------------------------------------------------------------------ extraction
def test_extract_returns_every_depth(base_lm):
    lm, tok = base_lm
    r = E.extract(lm.model, tok, TEXTS, max_length=32)
    L, D = lm.config.num_hidden_layers, lm.config.hidden_size
    for k in ("masked", "last", "original"):
        assert r[k].shape == (L + 2, len(TEXTS), D) and r[k].dtype == np.float32
    assert E.depth_names(L) == ["embedding", "layer_1", "layer_2", "final_norm"]
    assert r["tokens"] == sum(len(t.split()) for t in TEXTS)


def test_hidden_state_layout(base_lm):
    """embedding, each decoder layer's residual output, final norm: checked against hooks."""
    lm, tok = base_lm
    enc = tok(TEXTS[:2], padding=True, return_tensors="pt")
    seen = []
    hooks = [lm.model.embed_tokens.register_forward_hook(lambda m, a, o: seen.append(o))]
    hooks += [layer.register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
              for layer in lm.model.layers]
    hooks.append(lm.model.norm.register_forward_hook(lambda m, a, o: seen.append(o)))
    with torch.no_grad():
        hs = E.hidden_states(lm.model, enc.input_ids, enc.attention_mask)
    for h in hooks:
        h.remove()
    # one hook output per module, in order: embedding, each decoder layer, final norm
    assert len(hs) == len(seen) == lm.config.num_hidden_layers + 2
    for a, b in zip(hs, seen):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_masked_pooling_invariant_to_padding(base_lm):
    lm, tok = base_lm
    short, longer = TEXTS[0], TEXTS[1]
    alone = E.extract(lm.model, tok, [short], max_length=32, original=False)
    batched = E.extract(lm.model, tok, [short, longer], max_length=32, original=False, batch_tokens=10_000)
    for k in ("masked", "last"):
        np.testing.assert_allclose(alone[k][:, 0], batched[k][:, 0], atol=1e-5, rtol=1e-5)


def test_extract_finds_sinks_on_the_decoder_layers_and_pools_without_them(base_lm, monkeypatch):
    """extract's sinks are the rule applied to the decoder layers' residual streams (read here with
    hooks, one text at a time; lower median): not the embedding, not the final norm. ``masked``
    leaves them out, ``masked_all`` keeps them; given sinks replace the model's own."""
    lm, tok = base_lm
    ratio = 1.3  # the tiny random model has no real sinks: a low ratio gives it some
    seen_layers, rule, outs, states_of = [], E.sink_ratios, [], E.hidden_states
    monkeypatch.setattr(E, "sink_ratios", lambda layers, mask: seen_layers.append(layers) or rule(layers, mask))
    monkeypatch.setattr(E, "hidden_states", lambda *a, **k: outs.append(states_of(*a, **k)) or outs[-1])
    r = E.extract(lm.model, tok, TEXTS, max_length=32, original=False, sink_ratio=ratio, batch_tokens=10_000)
    assert len(outs) == len(seen_layers) > 0  # per batch: the rule read that batch's decoder layers, in order
    for hs, layers in zip(outs, seen_layers):
        assert len(layers) == lm.config.num_hidden_layers and all(a is b for a, b in zip(layers, hs[1:-1]))
    expected, states = [], []
    with torch.no_grad():
        for t in TEXTS:
            seen = []
            hooks = [layer.register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
                     for layer in lm.model.layers]
            out = lm.model(**tok(t, return_tensors="pt"), output_hidden_states=True)
            for h in hooks:
                h.remove()
            norms = torch.stack([h[0].norm(dim=-1) for h in seen])  # [layers, T]
            peak = (norms / norms.median(dim=1, keepdim=True).values).amax(0)
            expected.append(torch.nonzero(peak > ratio).flatten().tolist())
            states.append(out.last_hidden_state[0])
    assert r["sinks"] == expected and 0 < sum(map(len, expected)) < r["tokens"]
    for i, (h, s) in enumerate(zip(states, expected)):
        keep = [p for p in range(len(h)) if p not in s] or list(range(len(h)))
        np.testing.assert_allclose(r["masked"][-1, i], h[keep].mean(0).numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(r["masked_all"][-1, i], h.mean(0).numpy(), atol=1e-5, rtol=1e-5)
    given = [[len(t.split()) - 1] for t in TEXTS]  # the last token of each text instead
    g = E.extract(lm.model, tok, TEXTS, max_length=32, original=False, sink_ratio=ratio, sinks=given)
    assert g["sinks"] == expected and g["sink_summary"]["differ_from_pooled"] == sum(e != x for e, x in zip(expected, given))
    for i, h in enumerate(states):
        keep = list(range(len(h) - 1)) or [0]
        np.testing.assert_allclose(g["masked"][-1, i], h[keep].mean(0).numpy(), atol=1e-5, rtol=1e-5)
    with pytest.raises(LoraDriftError, match="one list of positions per text"):
        E.extract(lm.model, tok, TEXTS, max_length=32, original=False, sinks=given[:2])


def test_original_pooling_exact_and_sampled(base_lm):
    """pad_positions=None is the original's quantity: unmasked mean over the sample padded to its longest."""
    lm, tok = base_lm
    exact = E.extract(lm.model, tok, TEXTS, max_length=32, pad_positions=None, batch_tokens=1)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hs = E.hidden_states(lm.model, enc.input_ids, enc.attention_mask)
    ref = torch.stack([E.unmasked_mean_pool(h) for h in hs]).numpy()
    np.testing.assert_allclose(exact["original"], ref, atol=1e-5, rtol=1e-4)
    sampled = E.extract(lm.model, tok, TEXTS, max_length=32, pad_positions=3, batch_tokens=1)
    assert exact["tokens_run"] == len(TEXTS) * exact["t_max"]  # one example per batch, padded to t_max
    assert sampled["tokens_run"] < exact["tokens_run"]
    np.testing.assert_allclose(sampled["masked"], exact["masked"], atol=1e-5)
    # a stratified estimate of the padding's mean: close, not equal
    rel = np.linalg.norm(sampled["original"] - ref, axis=2) / np.linalg.norm(ref, axis=2)
    assert rel.max() < 0.2


def test_pad_positions():
    assert E._pad_positions(5, 5, 3) == []
    assert E._pad_positions(3, 6, None) == [3, 4, 5]
    assert E._pad_positions(3, 6, 8) == [3, 4, 5]
    p = E._pad_positions(2, 102, 4)
    assert p == [14, 39, 64, 89] and all(2 <= x < 102 for x in p)


# ------------------------------------------------------------------------------------ forgetting
def _text_file(path: Path, n_words=400) -> Path:
    rng = random.Random(0)
    path.write_text(" ".join(rng.choice(FILL) for _ in range(n_words)))
    return path


def test_forgetting_perplexity_matches_direct(base_lm, tmp_path):
    lm, tok = base_lm
    chunks = F.wikitext_chunks(tok, _text_file(tmp_path / "t.txt"), 3, 16)
    assert chunks.shape == (3, 16)
    head = lm.lm_head.weight.detach().clone()
    nll = F.chunk_nll(lm.model, head, chunks, batch=2)
    with torch.no_grad():
        direct = torch.stack([lm(input_ids=c[None], labels=c[None]).loss for c in chunks]).numpy()
    np.testing.assert_allclose(nll, direct, rtol=1e-5)
    # a model identical to the base (a separate copy) gives the same perplexity
    import copy
    same = copy.deepcopy(lm.model)
    np.testing.assert_allclose(F.chunk_nll(same, head, chunks), nll, rtol=1e-6)
    with pytest.raises(LoraDriftError, match="fewer than"):
        F.wikitext_chunks(tok, tmp_path / "t.txt", 1000, 16)


def test_weight_change_of_identical_model(base_lm):
    lm, _ = base_lm
    rows = W.weight_change(lm.model, lm.model, ("q_proj", "v_proj"), k=4, thresholds=[0.3, 0.9])
    assert len(rows) == 2 * lm.config.num_hidden_layers * 2  # layers x matrices x thresholds
    assert all(r["n_intruders"] == 0 and r["rel_change"] == 0 for r in rows)


def test_weight_change_matches_measures(base_lm):
    import copy
    lm, _ = base_lm
    ft = copy.deepcopy(lm.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in ft.layers:
            w = layer.self_attn.q_proj.weight
            w += 0.5 * torch.randn(w.shape, generator=g) * w.std()
    cache, sweep = {}, [0.3, 0.5, 0.7, 0.9]
    rows = W.weight_change(lm.model, ft, ("q_proj", "v_proj"), k=6, thresholds=sweep, base_svd=cache)
    assert len(cache) == 2 * lm.config.num_hidden_layers
    assert [r["threshold"] for r in rows[:4]] == sweep and len(rows) == 4 * len(cache)
    for r in rows:
        a = getattr(lm.model.layers[r["layer"] - 1].self_attn, r["matrix"]).weight.detach().numpy()
        b = getattr(ft.layers[r["layer"] - 1].self_attn, r["matrix"]).weight.detach().numpy()
        ref = W.intruder_dimensions(a, b, k=6, threshold=r["threshold"])
        assert r["n_intruders"] == ref["n_intruders"]
        assert r["min_max_sim"] == pytest.approx(min(ref["max_sims"]), abs=1e-9)
    q = [r["n_intruders"] for r in rows if r["matrix"] == "q_proj"]
    assert all(a <= b for a, b in zip(q[::4], q[3::4])) and sum(q[3::4]) > sum(q[::4])  # more at higher thresholds
    assert any(r["rel_change"] > 0 for r in rows if r["matrix"] == "q_proj")
    assert all(r["rel_change"] == 0 for r in rows if r["matrix"] == "v_proj")
    # cached base SVDs give the same answer
    assert W.weight_change(lm.model, ft, ("q_proj", "v_proj"), k=6, thresholds=sweep, base_svd=cache) == rows


def test_config_rejects_unknown_setting():
    with pytest.raises(LoraDriftError, match="unknown drift setting"):
        drift.drift_config({"name": "x", "drift": {"n_boots": 3}})
    assert drift.drift_config({"name": "x", "drift": {"max_examples": {"rte": 5}}})["max_examples"]["sst2"] is None


# ------------------------------------------------------------------------------------ the stage
DRIFT_SMALL = {"n_boot": 20, "n_perm": 5, "merge_check_examples": 4, "original_check_examples": 2,
               "original_pad_positions": 3, "ppl_chunks": 2, "ppl_chunk_len": 16, "intruder_k": 4,
               "intruder_thresholds": [0.4, 0.8]}


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory):
    """A book root with the RTE units of a 2-seed tiny profile trained (one epoch each)."""
    from loradrift.train import train_unit
    root = tmp_path_factory.mktemp("drift-book")
    (root / "_quarto.yml").write_text("project: {type: book}\n")
    model = make_tiny_llama(root / "model")
    glue = write_tiny_glue(root / "glue")
    prof = tiny_profile_dict(model, glue, seeds=[1, 2], tasks=["rte", "sst2"])
    for m in ("full", "lora"):
        prof["methods"][m]["num_train_epochs"] = 1
    prof["drift"] = {**DRIFT_SMALL, "wikitext": str(_text_file(root / "wiki.txt"))}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(prof))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORADRIFT_ROOT", str(root))
        mp.setenv("LORADRIFT_WANDB", "0")
        for v in ("LORADRIFT_ARTIFACTS", "LORADRIFT_MODEL", "LORADRIFT_GLUE_DIR"):
            mp.delenv(v, raising=False)
        for m in ("full", "lora"):
            for s in (1, 2):
                train_unit(str(path), "rte", m, s)
    return root, path


@pytest.fixture
def tiny_book(trained_root, monkeypatch):
    root, path = trained_root
    monkeypatch.setenv("LORADRIFT_ROOT", str(root))
    monkeypatch.setenv("LORADRIFT_WANDB", "0")
    for v in ("LORADRIFT_ARTIFACTS", "LORADRIFT_MODEL", "LORADRIFT_GLUE_DIR"):
        monkeypatch.delenv(v, raising=False)
    return root, str(path)


def test_run_drift_end_to_end(tiny_book, monkeypatch):
    root, prof = tiny_book
    status = drift.run_drift(prof)
    assert status["rte"] == "computed" and status["sst2"].startswith("skipped")
    d = root / "data" / "tiny"
    for f in ("drift_rte.json", "drift_rte_layers.csv", "drift_rte_pairs.csv", "drift_rte_null.csv",
              "drift_rte_intruders.csv", "drift_rte_diagnostics.csv", "drift_summary.json", "drift_timing.json"):
        assert (d / f).exists(), f
    res = drift.load_results(prof)
    assert res["tasks"] == ["rte"] and res["missing"] == ["sst2"]
    lay = res["layers"]
    # 4 models x (masked's 4 measures + last's 5 + the original's 2) x 4 depths, plus the base's self-similarity
    assert len(lay) == 4 * 11 * 4 + 4
    cos = lay[lay.measure == "cosine"]
    assert cos.unmatched.notna().all() and lay[lay.measure != "cosine"].unmatched.isna().all()
    assert (lay[lay.measure == "procrustes"].lo.isna()).all()  # no interval: one SVD per replicate would be needed
    ok = lay.dropna(subset=["lo"])
    assert ((ok["lo"] <= ok["value"] + 1e-9) | ok["measure"].eq("debiased_cka")).all()
    tj = res["task_json"]["rte"]
    assert tj["sample"]["n"] == 24 and tj["depths"][-1] == "final_norm"
    for rec in tj["merge_check"].values():  # LoRA merged vs unmerged
        assert rec["max_abs_diff_masked"] < 1e-4 and rec["max_abs_diff_last"] < 1e-4
    assert len(tj["forgetting"]["models"]) == 4
    assert set(res["pairs"]["kind"]) == {"within_full", "within_lora", "across"}
    tests = res["tests"]
    prim, expl = tests[tests.family == "primary"], tests[tests.family == "exploratory"]
    assert len(prim) == 3 and (prim.task == "sst2").all() and (prim.status == "too_few_seeds").all()  # no SST-2 yet
    assert len(expl) == 7 * 2 and (expl.task == "rte").all() and np.allclose(expl["min_attainable_p"], 1 / 3)
    assert (expl["perm_p_bh"] >= expl["perm_p"] - 1e-12).all() and expl["perm_p_holm"].isna().all()
    D = res["diagnostics"]
    assert len(D) == (4 + 4 * 3) * 4 and set(D.pooling) == {"masked", "masked_all", "last", "original"}
    assert set(D[D.pooling == "masked_all"].model) == {"base"}  # (base: 3 poolings + masked_all, models: 3) x depths
    assert (D.dominated == (D.top_share > tj["config"]["dominance_threshold"])).all()
    assert tj["sinks"]["base"]["examples"] == 24 and "differ_from_pooled" in tj["sinks"]["models"]["rte-lora-s1"]
    I = res["intruders"]
    assert sorted(I.threshold.unique()) == [0.4, 0.8] and len(I) == 4 * 2 * 2 * 2  # models x layers x matrices x thresholds
    from loradrift.drift import findings
    assert findings.intruder_threshold(res) == 0.4 and findings.intruder_threshold({"config": {"intruder_threshold": 0.5}}) == 0.5
    per = I[I.threshold == 0.8].groupby(["method", "model"]).n_intruders.sum().groupby("method").mean()
    assert findings.intruders(res, "rte", 0.8)["per_model"] == per.to_dict()
    sweep = drift.results.intruder_sweep(res)
    assert len(sweep) == 2 * 2 and sweep[sweep.threshold == 0.8].set_index("method")["mean"].to_dict() == per.to_dict()
    one = drift.results.intruder_sweep(res, models={"rte-lora-s1"})   # a group's own models only
    assert set(one.method) == {"lora"} and (one.models == 1).all()
    matched, unmatched = findings.cosine_null(res, "rte", "full")
    rows = cos[(cos.method == "full") & (cos.pooling == "masked") & (cos.depth_name == "final_norm")]
    assert (matched, unmatched) == (pytest.approx(rows.value.mean()), pytest.approx(rows.unmatched.mean()))
    assert matched > unmatched  # the same example is more alike than different ones
    rep = drift.replication_table(res)
    assert set(rep["method"]) == {"full", "lora"}
    assert (root / "artifacts" / "tiny" / "drift" / "rte" / "base.npz").exists()

    # a second call does no work: no model is loaded
    def boom(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr("loradrift.drift.records.Base.load", boom)
    monkeypatch.setattr("loradrift.models.load_finetuned", boom)
    assert drift.run_drift(prof, tasks=["rte"])["rte"] == "current"


def test_run_drift_reuses_cached_representations(tiny_book, monkeypatch):
    root, prof = tiny_book
    drift.run_drift(prof, tasks=["rte"])
    (root / "data" / "tiny" / "drift_rte.json").unlink()  # results gone, representations cached
    monkeypatch.setattr("loradrift.models.load_finetuned",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("a model was loaded")))
    assert drift.run_drift(prof, tasks=["rte"])["rte"] == "computed"


def test_a_model_recomputed_beside_a_cached_base_uses_the_base_sinks(tiny_book):
    """One fine-tuned model's cache deleted: it is recomputed (the base read from its cache gives
    its sinks) to the same pooled states."""
    root, prof = tiny_book
    drift.run_drift(prof, tasks=["rte"])
    cache = root / "artifacts" / "tiny" / "drift" / "rte"
    with np.load(cache / "rte-lora-s2.npz") as z:
        before = {k: z[k] for k in ("masked", "last")}
    (cache / "rte-lora-s2.npz").unlink()
    (root / "data" / "tiny" / "drift_rte.json").unlink()
    assert drift.run_drift(prof, tasks=["rte"])["rte"] == "computed"
    with np.load(cache / "rte-lora-s2.npz") as z:
        for k, v in before.items():
            np.testing.assert_allclose(z[k], v, rtol=1e-5, atol=1e-6)


def test_corrupt_cache_names_the_fix(tiny_book):
    root, prof = tiny_book
    drift.run_drift(prof, tasks=["rte"])
    f = root / "artifacts" / "tiny" / "drift" / "rte" / "rte-lora-s1.npz"
    good = f.read_bytes()
    try:
        f.write_bytes(good[: len(good) // 3])
        (root / "data" / "tiny" / "drift_rte.json").unlink()
        with pytest.raises(LoraDriftError, match=r"rte-lora-s1\.npz.*delete the file and re-run"):
            drift.run_drift(prof, tasks=["rte"])
    finally:
        f.write_bytes(good)
    assert drift.run_drift(prof, tasks=["rte"])["rte"] == "computed"


def test_load_results_without_results(book_root):
    res = drift.load_results("cpu-v1")
    assert res["tasks"] == [] and res["layers"].empty and res["seeds"].empty
    assert drift.replication_table(res).empty


def test_results_from_retrained_units_are_reported_out_of_date(tiny_book, monkeypatch):
    """Drift results say when a unit they read has since been re-trained (the study re-run in pieces)."""
    from loradrift import findings, report, serving
    from loradrift.config import load_profile
    from loradrift.store import read_json, write_json
    root, prof = tiny_book
    drift.run_drift(prof, tasks=["rte"])
    p = load_profile(prof)
    assert drift.is_current(p, "rte") and findings.outdated(prof)["drift"] == []
    unit = root / "data" / "tiny" / "runs" / "rte-lora-s2.json"
    rec = read_json(unit)
    meta = {"seed": 2, "tasks": ["rte"],  # as run_deploy records them
            "units": {f"{m}/{t}": u for (m, t), u in serving._unit_results(p, ["rte"], 2).items()}}
    assert serving.outdated_units(p, meta) == []
    try:
        # re-run later, reproducing its weights bit for bit: what was made from the model stays current
        assert rec["weights_fingerprint"]
        write_json(unit, {**rec, "finished_at": "2099-01-01T00:00:00Z", "model_fingerprint": "other-files"})
        assert drift.is_current(p, "rte") and serving.outdated_units(p, meta) == []
        # re-trained into other weights
        write_json(unit, {**rec, "finished_at": "2099-01-01T00:00:00Z", "weights_fingerprint": "other-weights"})
        assert not drift.is_current(p, "rte")
        assert findings.outdated(prof)["drift"] == ["rte"]
        assert serving.outdated_units(p, meta) == ["lora/rte"]
        monkey_out = []
        monkeypatch.setattr(report, "note", monkey_out.append)  # capture instead of displaying
        assert report.outdated_note("drift", prof) is None  # a chapter's last line shows nothing
        assert len(monkey_out) == 1 and "RTE" in monkey_out[0] and "drift --profile" in monkey_out[0]
    finally:
        write_json(unit, rec)
    assert drift.is_current(p, "rte")
    assert not drift.is_current(p, "sst2")  # never computed


# ------------------------------------------------------------------------------------ wiring
def _final_norm_states(backbone, tok, texts, max_length=32) -> list[np.ndarray]:
    """Per text, the final RMSNorm's output [T, D] (one text at a time, no padding), read with a hook
    on the norm module itself: independent of drift.extract's layout."""
    out = []
    with torch.no_grad():
        for t in texts:
            seen = []
            h = backbone.norm.register_forward_hook(lambda m, a, o: seen.append(o))
            try:
                backbone(input_ids=tok(t, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"])
            finally:
                h.remove()
            out.append(seen[0][0].double().numpy())
    return out


def _sink_free_means(states, sinks) -> np.ndarray:
    """``masked`` pooling from per-text states: the mean over the positions that are not sinks (all
    of them when every position is one)."""
    keep = [np.setdiff1d(np.arange(len(h)), s) if len(s) < len(h) else np.arange(len(h)) for h, s in zip(states, sinks)]
    return np.stack([h[k].mean(0) for h, k in zip(states, keep)])


def _final_norm_means(backbone, tok, texts, sinks) -> np.ndarray:
    """Masked (sink-free) mean pooled output of the backbone's final RMSNorm."""
    return _sink_free_means(_final_norm_states(backbone, tok, texts), sinks)


def test_headline_drift_is_read_at_the_final_norm(tiny_book):
    """The drift the summary (seed_drifts 'last', the preface's headline) and the chapter's prose
    (findings) quote "at the final norm" is 1 - linear CKA of the final-norm output, recomputed here
    from the models; a wrong depth (the embedding, the last decoder layer) fails."""
    from transformers import AutoModelForCausalLM

    from loradrift.config import load_profile
    from loradrift.drift import findings
    from loradrift.drift.measures import linear_cka
    from loradrift.drift.settings import drift_config
    from loradrift.drift.stage import drift_sample
    from loradrift.models import load_finetuned, load_tokenizer
    from loradrift.store import read_json
    from loradrift.train import model_dir
    root, path = tiny_book
    drift.run_drift(path, tasks=["rte"])
    drift.summarise(path)  # the summary made by this code, whatever an earlier test left
    p = load_profile(path)
    texts = drift_sample(p, "rte", drift_config(p))["texts"]
    sinks = read_json(root / "artifacts" / "tiny" / "drift" / "rte" / "base.json")["sinks"]
    base_path = p["model"]["name_or_path"]
    base = _final_norm_means(AutoModelForCausalLM.from_pretrained(base_path).model.eval(), load_tokenizer(base_path),
                             texts, sinks)
    res = drift.load_results(path)
    S = res["seeds"][(res["seeds"].pooling == "masked") & (res["seeds"].measure == "cka")]
    expected = {}
    for m in ("full", "lora"):
        for s in (1, 2):
            rid = f"rte-{m}-s{s}"
            model, tok = load_finetuned(p, model_dir("tiny", rid), m, merge=True)
            expected[rid] = 1 - linear_cka(base, _final_norm_means(E.backbone_of(model), tok, texts, sinks))
            row = S[S.model == rid].iloc[0]
            assert row["last"] == pytest.approx(expected[rid], rel=1e-3, abs=1e-7), rid
            # the test can tell the depths apart: the embedding's drift is a different number
            emb = res["layers"][(res["layers"].model == rid) & (res["layers"].pooling == "masked")
                                & (res["layers"].measure == "cka") & (res["layers"].depth_name == "embedding")]
            assert abs((1 - emb.value.iloc[0]) - expected[rid]) > 1e-2 * expected[rid] + 1e-6, rid
        prose = findings.drift_at(res, "rte", m, "masked", "cka")[0]
        assert prose == pytest.approx(np.mean([expected[f"rte-{m}-s{s}"] for s in (1, 2)]), rel=1e-3, abs=1e-7)
    assert findings.task_numbers(res, "rte").cka_lora == prose


def test_every_model_is_pooled_without_the_base_models_sinks(tiny_book):
    """``masked`` pooling of a fine-tuned model leaves out the positions that are sinks *in the base
    model* (the same tokens for every model), recomputed here from the final norm's output; a low
    sink_ratio gives the tiny random model sinks, and the fine-tuned model's own differ from them."""
    import copy

    from loradrift.config import load_profile
    from loradrift.drift.settings import drift_config
    from loradrift.drift.stage import drift_sample
    from loradrift.models import load_finetuned
    from loradrift.store import read_json
    from loradrift.train import model_dir
    root, path = tiny_book
    q = copy.deepcopy(load_profile(path))
    q["drift"]["sink_ratio"] = 1.3
    drift.run_drift(q, tasks=["rte"])
    cache = root / "artifacts" / "tiny" / "drift" / "rte"
    sinks = read_json(cache / "base.json")["sinks"]
    rec = read_json(cache / "rte-full-s1.json")
    assert sum(map(len, sinks)) > 0 and rec["sink_summary"]["differ_from_pooled"] > 0  # the test can tell them apart
    texts = drift_sample(q, "rte", drift_config(q))["texts"]
    model, tok = load_finetuned(q, model_dir("tiny", "rte-full-s1"), "full", merge=True)
    states = _final_norm_states(E.backbone_of(model), tok, texts)
    with np.load(cache / "rte-full-s1.npz") as z:
        np.testing.assert_allclose(z["masked"][-1], _sink_free_means(states, sinks), rtol=1e-4, atol=1e-5)
        assert z["lengths"].tolist() == [len(h) for h in states] and "masked_all" not in z.files
    with np.load(cache / "base.npz") as z:
        assert {"masked", "masked_all", "last"} <= set(z.files)


def test_top_coordinate_share_and_its_correlation_with_inverse_length():
    from loradrift.drift.diagnostics import top_coordinate
    r = np.random.default_rng(0)
    lengths = r.integers(3, 60, size=300)
    X = r.normal(size=(300, 30))
    X[:, 7] += 300.0 / lengths  # what a sink does to a mean over tokens
    out = top_coordinate(X, lengths)
    Xc = X - X.mean(0)
    assert out["top_coord"] == 7
    assert out["top_share"] == pytest.approx((Xc[:, 7] ** 2).sum() / (Xc ** 2).sum(), rel=1e-12) and out["top_share"] > 0.9
    assert out["corr_inv_length"] == pytest.approx(np.corrcoef(X[:, 7], 1.0 / lengths)[0, 1], rel=1e-12)
    assert out["corr_inv_length"] > 0.95
    iso = top_coordinate(r.normal(size=(300, 30)), lengths)
    assert iso["top_share"] < 0.1 and abs(iso["corr_inv_length"]) < 0.3
    assert np.isnan(top_coordinate(np.ones((5, 3)), [1, 2, 3, 4, 5])["top_share"])


def test_dominance_flags_reach_the_findings():
    """A coordinate planted in the base's and one model's ``masked_all`` states at one depth: that
    (pooling, depth) and only it is flagged; `findings.sink_fix` reads before (masked_all) and after (masked)."""
    from loradrift.drift import findings
    from loradrift.drift.diagnostics import task_diagnostics
    reps, rids, cfg = synthetic_task()
    lengths = np.random.default_rng(1).integers(3, 40, size=24)
    for rid in ("base", rids[0][0]):
        reps[rid]["masked_all"] = reps[rid]["masked"].copy()
        reps[rid]["masked_all"][2, :, 5] += 500.0 / lengths
    reps[rids[1][0]]["last"][1, :, 3] += 500.0 / lengths  # in one fine-tuned model only
    for rid in reps:
        reps[rid]["lengths"] = lengths
    D = task_diagnostics("rte", reps, rids, cfg)
    assert len(D) == (5 * len(cfg["poolings"]) + 2) * 4
    res = {"diagnostics": D}
    dom = findings.dominance(res, "rte")
    flagged = dom[dom.flagged]
    assert flagged[["pooling", "depth_name"]].values.tolist() == [["last", "layer_1"], ["masked_all", "layer_2"]]
    assert flagged.base_share.iloc[1] > 0.9 and flagged.base_corr.iloc[1] > 0.9
    assert flagged.base_share.iloc[0] < 0.5 < flagged.max_share.iloc[0]  # flagged by the model, not the base
    assert findings.dominated(res, "rte", "masked_all", "layer_2") is True
    assert findings.dominated(res, "rte", "masked", "layer_2") is False
    assert findings.dominated(res, "rte", "masked", "layer_9") is None
    fix = findings.sink_fix(res, "rte", depths=("layer_2",))
    assert fix["before_min"] > 0.9 and fix["after_max"] < 0.5
    assert findings.dominance({}, "rte").empty


# ------------------------------------------------------------------------------------ the measures' Gram cache
def synthetic_task(n=24, d=40, n_layers=2, seeds=(1, 2), seed=0, **drift_settings):
    """Pooled states of a base and 2 methods x ``seeds`` models ([depths, n, d] float32 per pooling),
    the model ids and the default drift settings with small bootstrap and permutation counts."""
    cfg = drift.drift_config({"name": "x", "drift": {"n_boot": 15, "n_perm": 6, **drift_settings}})
    r = np.random.default_rng(seed)
    rids = [(f"rte-{m}-s{s}", m, s) for m in ("full", "lora") for s in seeds]
    base = {p: (r.normal(size=(n_layers + 2, n, d)) + 2.0).astype(np.float32) for p in cfg["poolings"]}
    reps = {"base": base, **{rid: {p: (x + 0.7 * r.normal(size=x.shape)).astype(np.float32) for p, x in base.items()}
                             for rid, _, _ in rids}}
    return reps, rids, cfg


def test_task_measures_build_each_gram_once():
    """One Gram per (model, depth, pooling), the base's shared by every comparison, none outside the cache."""
    from loradrift.drift.grams import Gram, Grams
    from loradrift.drift.tables import task_measures
    reps, rids, cfg = synthetic_task()
    grams, before = Grams(), Gram.built
    layers, pairs, null = task_measures("rte", reps, rids, cfg, grams=grams)
    # (models + base) x depths x (masked and last: raw and standardised; original: raw); masked_all has no measure
    expected = (len(rids) + 1) * 4 * (2 + 2 + 1)
    assert grams.builds == expected and Gram.built - before == expected
    assert len(grams) == 0  # dropped after each (depth, pooling)
    assert len(layers) == 4 * 4 * 11 + 4 and len(null) == 2 * 4 * 2 and len(pairs) == 6 * 4 * 2
    uncached = Gram.built
    task_measures("rte", reps, rids, cfg, grams=Grams(enabled=False))
    # every measure builds its own: per depth, 4 models x (2 poolings x 3 Gram measures x (point 2 + bootstrap 2)
    # + the original's 4) + 2 (the base vs itself) + 6 pairs x 4 + 2 nulls x 4 (Procrustes builds none)
    assert Gram.built - uncached == 4 * (4 * (2 * 12 + 4) + 2 + 24 + 8)


@pytest.mark.parametrize("shape", [(24, 40), (70, 20)])
def test_task_measures_with_and_without_the_gram_cache_agree(shape):
    """Every table is the same with the cache as without: exactly where the uncached path uses the
    Gram form (n < 1.5 d), to float64 rounding where linear CKA and the original's formula take the
    feature form there (n >= 1.5 d)."""
    from loradrift.drift.grams import Grams
    from loradrift.drift.tables import task_measures
    n, d = shape
    reps, rids, cfg = synthetic_task(n, d, seed=1)
    cached = task_measures("rte", reps, rids, cfg)
    uncached = task_measures("rte", reps, rids, cfg, grams=Grams(enabled=False))
    for a, b in zip(cached, uncached):
        pd.testing.assert_frame_equal(a, b, check_exact=n < 1.5 * d, rtol=1e-12, atol=0)
    if n >= 1.5 * d:
        feature_form = cached[0]["measure"].isin(["cka", "original_study_similarity"])
        assert ((cached[0]["value"] == uncached[0]["value"]) | feature_form).all()  # the other measures: exactly
        assert cached[0][["lo", "hi"]].fillna(0).equals(uncached[0][["lo", "hi"]].fillna(0))


def test_measures_benchmark_runs_both_paths():
    from loradrift.drift.bench import measures_speed
    prof = {"name": "x", "methods": {"full": {}, "lora": {}}, "seeds": [1, 2]}
    out = measures_speed(prof, n=20, d=30, depths=2, rounds=1, n_boot=10, n_perm=4)
    assert out["gram_builds"]["after"] == (4 + 1) * 2 * (2 + 2 + 1) < out["gram_builds"]["before"]
    assert out["max_rel_diff"] == 0.0  # n < 1.5 d: the uncached path uses the Gram form too
    assert len(out["runs"]["before"]) == len(out["runs"]["after"]) == 2 and out["speedup"] > 0


# ------------------------------------------------------------------------------------ currency
def test_task_key_holds_every_setting(tiny_profile):
    """The key of a task's drift results changes with the measures, poolings, bootstrap and
    permutation counts and controls; the summary-only claims change the summary's key only."""
    import copy

    from loradrift.config import load_profile
    from loradrift.drift.currency import summary_key, task_key
    p = load_profile(str(tiny_profile))
    base_key, base_summary = task_key(p, "rte"), summary_key(p, ["rte"])
    changes = {
        "measures": {"measures": {"masked": ["cka", "debiased_cka", "standardized_debiased_cka", "procrustes"]}},
        "poolings": {"poolings": ["masked", "last"], "measures": {"original": []}},
        "n_boot": {"n_boot": 999},
        "n_perm": {"n_perm": 7},
        "controls": {"controls": {"measures": ["cka"]}},
        "sample": {"max_examples": {"rte": 5}},
        "sink rule": {"sink_ratio": 10},
        "dominance threshold": {"dominance_threshold": 0.3},
        "intruder sweep": {"intruder_thresholds": [0.5, 0.9]},
    }
    for what, over in changes.items():
        q = copy.deepcopy(p)
        q["drift"] = over
        assert task_key(q, "rte") != base_key, what
    for over in ({"exploratory": [["masked", "cka"]]},
                 {"primary": [{"task": "rte", "pooling": "last", "measure": "cka", "depth": "final_norm"}]}):
        q = copy.deepcopy(p)
        q["drift"] = over
        assert task_key(q, "rte") == base_key and summary_key(q, ["rte"]) != base_summary, over
    assert task_key(p, "rte") == base_key  # nothing above changed the profile itself


def test_config_names_unregistered_measures():
    with pytest.raises(LoraDriftError, match="unknown measure 'nope'.*register"):
        drift.drift_config({"name": "x", "drift": {"measures": {"masked": ["cka", "nope"]}}})
    with pytest.raises(LoraDriftError, match="not in drift.poolings"):
        drift.drift_config({"name": "x", "drift": {"poolings": ["masked", "last"]}})


def test_primary_endpoints_are_checked_when_the_settings_load():
    from loradrift.config import load_profile
    ok = {"task": "sst2", "pooling": "last", "measure": "debiased_cka", "depth": "final_norm"}
    assert ok in drift.drift_config({"name": "x"})["primary"] and drift.drift_config(load_profile("cpu"))["primary"]
    cases = {
        "at most 3": [ok, {**ok, "depth": "decoder_mean"}, {**ok, "pooling": "masked"}, {**ok, "measure": "cka"}],
        "unknown task 'cola'": [{**ok, "task": "cola"}],
        r"\(last, original_study_similarity\) is not among drift.measures": [{**ok, "measure": "original_study_similarity"}],
        "depth 'layer_3'": [{**ok, "depth": "layer_3"}],
        "a mapping of exactly": [{**ok, "extra": 1}],
        "listed twice": [ok, ok],
    }
    for match, primary in cases.items():
        with pytest.raises(LoraDriftError, match=match):
            drift.drift_config({"name": "x", "drift": {"primary": primary}})
    assert drift.drift_config({"name": "x", "drift": {"primary": []}})["primary"] == []


def _seed_frame(spread=0.01, seed=0):
    """Per-seed drift of 3 full and 3 lora models on two tasks for every (pooling, measure) of the
    default settings: full drifts 0.1 more than lora; ``spread``: the seeds' sd."""
    cfg = drift.drift_config({"name": "x"})
    r, rows = np.random.default_rng(seed), []
    for task in ("rte", "sst2"):
        for pooling, meas in {*map(tuple, cfg["exploratory"]), *((e["pooling"], e["measure"]) for e in cfg["primary"])}:
            for m, shift in (("full", 0.1), ("lora", 0.0)):
                for s in range(3):
                    v = 0.2 + shift + spread * r.normal(size=3)
                    rows.append({"task": task, "model": f"{task}-{m}-s{s}", "method": m, "seed": s, "pooling": pooling,
                                 "measure": meas, "last": v[0], "last_decoder": v[1], "mean": v[2]})
    return pd.DataFrame(rows), cfg


def test_seed_tests_holm_over_the_primary_endpoints_only():
    from loradrift.drift.stats import bh, holm
    from loradrift.drift.tables import seed_tests
    sd, cfg = _seed_frame()
    tests = pd.DataFrame(seed_tests(sd, ["rte", "sst2"], cfg))
    prim, expl = tests[tests.family == "primary"], tests[tests.family == "exploratory"]
    assert [tuple(r) for r in prim[["task", "pooling", "measure", "depth"]].to_numpy()] == \
        [tuple(e.values()) for e in cfg["primary"]]
    np.testing.assert_allclose(prim.perm_p_holm, holm(prim.perm_p))  # a family of 3, not of every test
    np.testing.assert_allclose(prim.welch_p_holm, holm(prim.welch_p))
    assert len(expl) == 2 * len(cfg["exploratory"]) * 2 - 3  # tasks x (pooling, measure) x 2 depths, less the primaries
    np.testing.assert_allclose(expl.perm_p_bh, bh(expl.perm_p))
    assert expl.perm_p_holm.isna().all() and prim.perm_p_bh.isna().all()
    one = prim.iloc[0]
    g = sd[(sd.task == "sst2") & (sd.pooling == one.pooling) & (sd.measure == one.measure)]
    assert one["diff"] == pytest.approx(g[g.method == "full"]["last"].mean() - g[g.method == "lora"]["last"].mean())
    assert (prim["diff"] > 0.05).all()  # full drifts more, by construction


def test_seed_tests_when_models_do_not_move_or_a_task_is_missing():
    """The bug: 'holm needs ... p-values without nan' when a method's models all drift the same
    (e.g. they never left the base). Now: p = 1 and status no_variance; a primary endpoint without
    results is listed with nan p-values and still counts in Holm's family."""
    from loradrift.drift.tables import seed_tests
    sd, cfg = _seed_frame(spread=0.0)
    sd.loc[:, ["last", "last_decoder", "mean"]] = 0.0  # nothing moved
    tests = pd.DataFrame(seed_tests(sd, ["rte", "sst2"], cfg))
    assert (tests.status == "no_variance").all() and (tests.perm_p == 1).all() and (tests.welch_p == 1).all()
    assert (tests.perm_p_holm.dropna() == 1).all()
    partial = pd.DataFrame(seed_tests(sd[sd.task == "rte"].assign(last=lambda d: d["last"] + 0.1 * (d.method == "full")
                                                                  + 0.01 * d.seed), ["rte"], cfg))
    prim = partial[partial.family == "primary"]
    assert (prim.status == "too_few_seeds").all() and prim.perm_p.isna().all() and prim.perm_p_holm.isna().all()
    cfg["primary"] = [{"task": "rte", "pooling": "last", "measure": "cka", "depth": "final_norm"}] + cfg["primary"][:2]
    prim = pd.DataFrame(seed_tests(sd[sd.task == "rte"].assign(last=lambda d: 0.1 * (d.method == "full") + 0.01 * d.seed),
                                   ["rte"], cfg)).query("family == 'primary'")
    assert prim.perm_p_holm.iloc[0] == pytest.approx(min(1.0, 3 * prim.perm_p.iloc[0]))  # m = 3 registered


def test_a_new_measure_is_one_registration_and_one_setting(tiny_book, monkeypatch):
    """Adding a measure: register it, name it in the profile's drift.measures. The stage computes it
    (from the cached representations: no model is loaded), the per-seed drift uses it (a distance:
    drift = its value), and the results are out of date until it is computed."""
    import copy

    from loradrift.config import load_profile
    from loradrift.drift import measures as M
    root, path = tiny_book
    drift.run_drift(path, tasks=["rte"])
    p = load_profile(path)
    assert drift.is_current(p, "rte")

    def spread(X, Y):  # a toy distance: mean distance between matching rows, relative to X's scale
        return float(np.linalg.norm(X - Y, axis=1).mean() / np.linalg.norm(X, axis=1).mean())

    monkeypatch.setitem(M.MEASURES, "spread", M.Measure("spread", spread, similarity=False))  # 1: register
    q = copy.deepcopy(p)
    q["drift"]["measures"] = {"masked": [*drift.drift_config(p)["measures"]["masked"], "spread"]}  # 2: the profile names it
    assert not drift.is_current(q, "rte")
    monkeypatch.setattr("loradrift.models.load_finetuned",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("a model was loaded")))
    assert drift.run_drift(q, tasks=["rte"])["rte"] == "computed"
    assert drift.is_current(q, "rte") and not drift.is_current(p, "rte")
    res = drift.load_results(q)
    rows = res["layers"][res["layers"].measure == "spread"]
    assert len(rows) == 4 * 4 and rows["lo"].notna().all()  # 4 models x 4 depths, with intervals
    last = rows[rows.depth_name == "final_norm"].set_index("model")["value"]
    sd = res["seeds"][res["seeds"].measure == "spread"].set_index("model")["last"]
    assert np.allclose(sd[last.index], last)  # a distance's drift is its value, not 1 - value


def test_bf16_extraction_is_a_setting_in_the_key(tiny_profile):
    """drift.precision (absent = fp32) runs extraction under bf16 autocast and makes the results another key."""
    from loradrift.config import load_profile
    from loradrift.drift.currency import task_key
    prof = load_profile(str(tiny_profile))
    before = task_key(prof, "rte")
    prof["drift"] = {"precision": "bf16"}
    assert task_key(prof, "rte") != before
    prof["drift"] = {"precision": "fp16"}
    with pytest.raises(LoraDriftError, match="precision: fp32 or bf16"):
        drift.drift_config(prof)


def test_a_study_with_groups_measures_the_drift_groups_and_compares_only_the_compared_methods(tmp_path, monkeypatch):
    """The redesigned study's wiring on a tiny profile: a rank variant joins the task's drift, a learning-curve
    variant (drift: false) does not; the controls and the seed-level tests are about full vs LoRA only."""
    from loradrift import design, findings
    from loradrift.config import load_profile
    from loradrift.train import train_all
    root = tmp_path
    (root / "_quarto.yml").write_text("project: {type: book}\n")
    monkeypatch.setenv("LORADRIFT_ROOT", str(root))
    monkeypatch.setenv("LORADRIFT_WANDB", "0")
    for v in ("LORADRIFT_ARTIFACTS", "LORADRIFT_MODEL", "LORADRIFT_GLUE_DIR"):
        monkeypatch.delenv(v, raising=False)
    prof = tiny_profile_dict(make_tiny_llama(root / "model"), write_tiny_glue(root / "glue"), seeds=[1, 2], tasks=["rte"])
    prof["data"]["train_subset"] = "seed"
    for m in ("full", "lora"):
        prof["methods"][m]["num_train_epochs"] = 1
    prof["methods"]["lora-r2"] = {"extends": "lora", "lora_r": 2}
    prof["study"] = {"primary": {"methods": ["full", "lora"], "seeds": 2},
                     "rank": {"methods": ["lora-r2", "lora"], "seeds": 1},
                     "curve": {"methods": ["full"], "seeds": 1, "train_sizes": [8], "drift": False}}
    prof["drift"] = {**DRIFT_SMALL, "wikitext": str(_text_file(root / "wiki.txt")),
                     "primary": [{"task": "rte", "pooling": "last", "measure": "cka", "depth": "final_norm"}]}
    path = root / "grouped.yaml"
    path.write_text(yaml.safe_dump(prof, sort_keys=False))
    trained = train_all(str(path))
    assert sorted(r["id"] for r in trained) == ["rte-full-n8-s1", "rte-full-s1", "rte-full-s2", "rte-lora-r2-s1",
                                                "rte-lora-s1", "rte-lora-s2"]
    assert drift.run_drift(str(path))["rte"] == "computed"
    res = drift.load_results(str(path))
    tj = res["task_json"]["rte"]
    assert [m["id"] for m in tj["models"]] == ["rte-full-s1", "rte-full-s2", "rte-lora-s1", "rte-lora-s2", "rte-lora-r2-s1"]
    assert set(res["pairs"].kind) == {"within_full", "within_lora", "across"}
    assert "rte-lora-r2-s1" not in set(res["pairs"].a) | set(res["pairs"].b)
    assert {(t.n_a, t.n_b) for t in res["tests"].itertuples()} == {(2, 2)}
    assert drift.is_current(load_profile(str(path)), "rte")
    runs = findings.runs_frame(str(path))
    pts = design.unit_points(str(path), res, runs, "rte", {"pooling": "last", "measure": "cka", "depth": "final_norm"})
    assert sorted(pts.method) == ["full", "full", "lora", "lora", "lora-r2"] and pts.drift.notna().all()
    assert pts.forgetting.notna().all() and set(pts[pts.method == "lora-r2"].lora_r) == {2}
    _drift_chapter_reads_the_grouped_study(root, path, prof)


def _drift_chapter_reads_the_grouped_study(root, path, prof):
    """The Drift chapter, executed on the grouped study's results (its profile installed in a copy of the
    library, as `quarto render --profile grouped` would see it): it leads with the primary test, reads the
    sweeps, and keeps the rank variant out of the per-depth views."""
    import shutil

    from loradrift.config import PROFILE_DIR
    from test_chapters import ROOT, run_chapter
    lib = root / "lib"
    shutil.copytree(PROFILE_DIR.parent, lib / "loradrift", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(path, lib / "loradrift" / "profiles" / "grouped.yaml")
    nb = run_chapter(ROOT / "chapters" / "drift.qmd", {"PYTHONPATH": str(lib), "LORADRIFT_ROOT": str(root),
                                                      "LORADRIFT_COMPUTE": "never", "QUARTO_PROFILE": "grouped"})
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue") if errors else None
    text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) + str(o.get("text", ""))
                     for c in nb.cells for o in c.get("outputs", []))
    assert "Interim results" not in text                       # its own results, not an earlier run's
    layers = json_dumps_outputs(nb, "fig-layers")
    assert "lora s1" in layers and "lora-r2" not in layers   # the rank variant is not a per-depth curve
    assert "r = 2" in text or "lora-r2" in text                 # the rank sweep's table or sentence


def json_dumps_outputs(nb, label: str) -> str:
    """Every output of the cell labelled ``label``, as one string."""
    import json
    return "".join(json.dumps(c.get("outputs", [])) for c in nb.cells if f"label: {label}" in c.source)
