"""The deployment benchmark: identity of the multi-adapter paths, switching inside the clock, the vLLM
path's pure parts, corrupt adapters, and end-to-end runs on tiny models (no training: adapters are
built with peft and given random non-zero weights)."""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from loradrift import LoraDriftError, serving
from loradrift.config import load_profile, run_id
from loradrift.serving import vllm as vllm_serving

TASKS = ["rte", "mrpc", "sst2"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a loaded machine (the study's
    training on every core) multi-threaded barriers make each tiny forward wait for time slices."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
LORA = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _tok(model_dir):
    from loradrift.models import load_tokenizer
    return load_tokenizer(str(model_dir))


def _adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A tiny SEQ_CLS adapter with random non-zero A/B and its own random score head, saved like a unit's."""
    from peft import get_peft_model

    from loradrift.methods import LoRA
    from loradrift.models import load_classifier
    tok = _tok(model_dir)
    torch.manual_seed(123)
    m = load_classifier(str(model_dir), "float32", tok.pad_token_id)
    pm = get_peft_model(m, LoRA.peft_config(LORA))
    serving.randomize_adapter(pm, "default", seed, std=0.3)
    with torch.no_grad():  # a head clearly different per task, so a head mix-up changes predictions
        pm.base_model.model.score.modules_to_save["default"].weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed))
    pm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {t: _adapter(tiny_model, root / t, 10 + i) for i, t in enumerate(TASKS)}


def _requests(tok_dir, n=6):
    from conftest import NEG, POS
    rng = np.random.default_rng(0)
    words = POS + NEG + ["the", "movie", "was", "very", "[SEP]"]
    out = {}
    for t in TASKS:
        out[t] = [serving.Request(uid=f"{t}:{i}", task=t, label=i % 2,
                                  text=" ".join(rng.choice(words, size=int(rng.integers(2, 12)))))
                  for i in range(n)]
    return out


def _single_peft(tiny_model, path):
    from peft import PeftModel

    from loradrift.models import load_classifier
    tok = _tok(tiny_model)
    return PeftModel.from_pretrained(load_classifier(str(tiny_model), "float32", tok.pad_token_id), str(path)).eval()


def _multi(tiny_model, adapters):
    from loradrift.models import load_classifier
    tok = _tok(tiny_model)
    torch.manual_seed(0)
    return serving.load_multi_adapter(load_classifier(str(tiny_model), "float32", tok.pad_token_id), adapters)


def _logits_by_uid(server, batches):
    out = {}
    for b in batches:
        for r, row in zip(b, server(b).numpy()):
            out[r.uid] = row
    return out


# ------------------------------------------------------------------------------ identity
def test_multi_mixed_merged_match_single_adapter(tiny_model, adapters):
    enc = serving.TextEncoder(_tok(tiny_model), 32)
    reqs = _requests(tiny_model)
    single, merged = {}, {}
    for t in TASKS:
        pm = _single_peft(tiny_model, adapters[t])
        single.update(_logits_by_uid(serving.Server(pm, enc), serving.single_batches(reqs[t], 4, 6)))
        merged.update(_logits_by_uid(serving.Server(pm.merge_and_unload().eval(), enc),
                                     serving.single_batches(reqs[t], 4, 6)))
    # the heads really differ: serving task B's request with task A's adapter changes predictions
    pa = _single_peft(tiny_model, adapters["rte"])
    cross = _logits_by_uid(serving.Server(pa, enc), serving.single_batches(reqs["mrpc"], 4, 6))
    assert max(np.abs(cross[u] - single[u]).max() for u in cross) > 1e-2

    model = _multi(tiny_model, adapters)
    sw = serving.SwitchServer(model, enc)
    multi = _logits_by_uid(sw, serving.multi_batches(reqs, 4, 18))
    assert sw.switches == len(serving.multi_batches(reqs, 4, 18))  # the task changes every batch
    mixed_b = serving.mixed_batches(reqs, 4, 18)
    assert any(len({r.task for r in b}) > 1 for b in mixed_b)
    mixed = _logits_by_uid(serving.MixedServer(model, enc), mixed_b)
    assert set(multi) == set(mixed) <= set(single)
    for u in multi:
        np.testing.assert_array_equal(multi[u], single[u])          # same batches: bit-identical
        np.testing.assert_allclose(mixed[u], single[u], atol=1e-5)  # other padding: numerics only
        assert mixed[u].argmax() == single[u].argmax()
        np.testing.assert_allclose(merged[u], single[u], atol=1e-4)


def test_correctness_rows_flag_a_head_mixup():
    a = {"rte:0": np.array([1.0, 0.0]), "rte:1": np.array([0.0, 1.0])}
    logits = {("lora", "rte", 1, 0): a, ("multi", "multi", 1, 0): dict(a),
              ("mixed", "multi", 1, 0): {"rte:0": np.array([0.0, 1.0]), "rte:1": np.array([0.0, 1.0])}}
    rows = {r["mode"]: r for r in serving.correctness_rows(logits)}
    assert rows["multi"]["passed"] and rows["multi"]["max_abs_dlogit"] == 0
    assert not rows["mixed"]["passed"] and rows["mixed"]["prediction_agreement"] == 0.5


# ------------------------------------------------------------------------------ timing
def test_adapter_switch_is_inside_the_timed_region(tiny_model, adapters):
    """A set_adapter that advances a fake clock by 1 s must add 1 s to every switching batch."""
    enc = serving.TextEncoder(_tok(tiny_model), 32)
    model = _multi(tiny_model, adapters)
    clock = {"t": 0.0}
    orig = model.set_adapter

    def slow_set_adapter(name, *a, **kw):
        clock["t"] += 1.0
        return orig(name, *a, **kw)

    model.set_adapter = slow_set_adapter
    batches = serving.multi_batches(_requests(tiny_model), 2, 12)
    res = serving.time_stream(serving.SwitchServer(model, enc), batches, warmup_batches=0,
                              clock=lambda: clock["t"], sync=lambda: None)
    np.testing.assert_allclose(res["latency_s"], 1.0)       # every batch switched, every switch counted
    assert res["wall_s"] == pytest.approx(len(batches))
    # and with the real clock, a 30 ms switch shows up in the measured latency
    import time
    model.set_adapter = lambda name, *a, **kw: (time.sleep(0.03), orig(name, *a, **kw))
    res = serving.time_stream(serving.SwitchServer(model, enc), batches, warmup_batches=0)
    assert res["latency_s"].min() >= 0.03
    s = serving.latency_summary(res["latency_s"], res["sizes"], res["wall_s"])
    assert s["n_requests"] == sum(len(b) for b in batches) and s["latency_p50_ms"] >= 30
    assert s["throughput_rps"] == pytest.approx(s["n_requests"] / res["wall_s"])


def test_batches_and_ratio_ci():
    reqs = {t: [serving.Request(uid=f"{t}:{i}", task=t) for i in range(10)] for t in TASKS}
    assert len(serving.single_batches(reqs["rte"], 8, 20)) == 3          # 24 requests, cycling
    mb = serving.multi_batches(reqs, 2, 12)
    assert [b[0].task for b in mb[:3]] == TASKS and all(len({r.task for r in b}) == 1 for b in mb)
    assert [r.uid for r in mb[0]] == [r.uid for r in serving.single_batches(reqs["rte"], 2, 4)[0]]
    xb = serving.mixed_batches(reqs, 2, 12)
    assert sorted(r.uid for b in xb for r in b) == sorted(r.uid for b in mb for r in b)
    assert all(len({r.task for r in b}) == 2 for b in xb)  # round robin: every batch of 2 mixes tasks
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 2, 50)
    est, lo, hi = serving.ratio_ci(1.5 * base, np.ones(50), base, np.ones(50), paired=True, n_boot=200)
    assert est == pytest.approx(1.5) and lo == pytest.approx(1.5) and hi == pytest.approx(1.5)
    est, lo, hi = serving.ratio_ci(1.5 * base, np.ones(50), base[::-1].copy(), np.ones(50), paired=False, n_boot=200)
    assert lo < est < hi


# ------------------------------------------------------------------------------ corrupt adapters
def test_corrupt_adapter_gives_a_clear_error(tiny_model, adapters, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(adapters["rte"], bad)
    w = bad / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(LoraDriftError, match="corrupt"):
        serving.check_adapter(bad)
    with pytest.raises(LoraDriftError, match="corrupt"):
        _multi(tiny_model, {"rte": adapters["rte"], "mrpc": bad})
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(LoraDriftError, match="not valid JSON"):
        serving.check_adapter(bad)
    # an adapter without its trained score head would silently serve an untrained head
    from safetensors.torch import load_file, save_file
    nohead = tmp_path / "nohead"
    shutil.copytree(adapters["rte"], nohead)
    sd = {k: v for k, v in load_file(str(nohead / "adapter_model.safetensors")).items() if "score" not in k}
    save_file(sd, str(nohead / "adapter_model.safetensors"))
    with pytest.raises(LoraDriftError, match="score"):
        serving.check_adapter(nohead)
    with pytest.raises(LoraDriftError, match="no adapter"):
        serving.check_adapter(tmp_path / "missing")


# ------------------------------------------------------------------------------ vLLM pure parts
def test_vllm_split_adapter_and_host_head_reproduce_peft(tiny_model, adapters, tmp_path):
    from safetensors import safe_open
    heads = {t: vllm_serving.split_adapter(adapters[t], tmp_path / t) for t in TASKS}
    with safe_open(str(tmp_path / "rte" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    cfg = json.loads((tmp_path / "rte" / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] is None and cfg["r"] == LORA["lora_r"]
    assert heads["rte"]["score_weight"].shape == (2, 32)

    # the host-side head on LAST-token hidden states == the PEFT classifier's logits
    tok = _tok(tiny_model)
    reqs = _requests(tiny_model, 4)
    flat = [r for t in TASKS for r in reqs[t]]
    table = vllm_serving.adapter_table(TASKS, {t: heads[t]["path"] for t in TASKS})
    assert [table[t][1] for t in TASKS] == [1, 2, 3]
    specs = vllm_serving.build_requests(flat, table, tok, 32)
    hidden, want = [], []
    for t in TASKS:
        pm = _single_peft(tiny_model, adapters[t])
        for s in (s for s in specs if s["task"] == t):
            ids = torch.tensor([s["prompt"]["prompt_token_ids"]])
            out = pm(input_ids=ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-1][0, -1].detach().numpy())
            want.append(out.logits[0].detach().numpy())
    # a fake vLLM result list (EmbeddingRequestOutput-like objects)
    fake = [types.SimpleNamespace(outputs=types.SimpleNamespace(embedding=h.tolist())) for h in hidden]
    got = vllm_serving.head_logits(vllm_serving.parse_embed_outputs(fake), [s["task"] for s in specs], heads)
    np.testing.assert_allclose(got, np.stack(want), atol=1e-5)
    # token ids equal what the benchmark's encoder feeds the PEFT model (no padding)
    enc = serving.TextEncoder(tok, 32)(flat[:1])
    assert specs[0]["prompt"]["prompt_token_ids"] == enc["input_ids"][0].tolist()
    probs = [types.SimpleNamespace(outputs=types.SimpleNamespace(probs=[0.2, 0.8]))]
    assert vllm_serving.parse_classify_outputs(probs).argmax(1).tolist() == [1]
    with pytest.raises(LoraDriftError, match="no adapter"):
        vllm_serving.build_requests([serving.Request(uid="x:0", task="qnli", text="a")], table)


def test_vllm_is_reported_unavailable_without_cuda():
    ok, why = vllm_serving.vllm_available()
    if not torch.cuda.is_available():
        assert not ok and why
        with pytest.raises(LoraDriftError, match="vLLM"):
            vllm_serving.run_vllm({"tasks": ["rte"]})


# ------------------------------------------------------------------------------ end to end
def _fake_units(prof, tiny_model, adapters, tasks, seed):
    """Place tiny adapters and 'full' models where trained units would be."""
    import shutil

    from loradrift.models import load_classifier
    from loradrift.train import model_dir
    tok = _tok(tiny_model)
    for i, t in enumerate(tasks):
        shutil.copytree(adapters[t], model_dir(prof["name"], run_id(t, "lora", seed)))
        torch.manual_seed(50 + i)
        full = load_classifier(str(tiny_model), "float32", tok.pad_token_id)
        full.save_pretrained(model_dir(prof["name"], run_id(t, "full", seed)))
        tok.save_pretrained(model_dir(prof["name"], run_id(t, "full", seed)))


def test_run_deploy_end_to_end(tiny_profile, tiny_model, adapters):
    prof = load_profile(str(tiny_profile))
    _fake_units(prof, tiny_model, adapters, TASKS, prof["seeds"][0])
    kw = dict(n_requests=6, batch_sizes=[1, 4], warmup_batches=1, repeats=1, bootstrap=50, modes=list(serving.MODES))
    res = serving.run_deploy(str(tiny_profile), **kw)
    out = res["out_dir"]
    assert not res["skipped"]
    for name in serving.FILES:
        assert (out / f"deployment_{name}.csv").exists(), name
    lat = pd.read_csv(out / "deployment_latency.csv")
    assert set(lat["mode"]) == set(serving.MODES)
    assert (lat["n_requests"] >= 6).all() and (lat["throughput_rps"] > 0).all()
    assert set(lat[lat["mode"] == "lora"]["stream"]) == set(TASKS)
    corr = pd.read_csv(out / "deployment_correctness.csv")
    assert set(corr["mode"]) == {"multi", "mixed", "merged", "routed-merged"} and corr["passed"].all()
    acc = pd.read_csv(out / "deployment_accuracy.csv")
    assert {"full", "lora", "merged", "multi", "mixed"} <= set(acc["mode"])
    a = acc.set_index(["mode", "task"])["accuracy_common"]  # on the requests every mode served
    for t in TASKS:  # the resident multi-adapter model predicts what each single adapter predicts
        assert a[("multi", t)] == a[("lora", t)] == a[("mixed", t)]
    ratios = pd.read_csv(out / "deployment_ratios.csv")
    assert {("lora", "merged"), ("multi", "routed-merged")} <= set(zip(ratios["numerator"], ratios["denominator"]))
    assert (ratios["ci_low"] <= ratios["ratio"]).all() and (ratios["ratio"] <= ratios["ci_high"]).all()
    mem = pd.read_csv(out / "deployment_memory.csv")
    assert (mem["load_s"] > 0).all() and (mem["model_mb"] > 0).all()
    sto = pd.read_csv(out / "deployment_storage.csv")
    ad = sto[sto["artifact"].str.startswith("LoRA")]["bytes"]
    assert len(ad) == 3 and (ad < sto[sto["artifact"] == "full fine-tuned model"]["bytes"].min()).all()
    meta = json.loads((out / "deployment_meta.json").read_text())
    assert meta["environment"]["cpu_count"] and meta["config"]["n_requests"] == 6
    assert serving.run_deploy(str(tiny_profile), **kw)["skipped"]  # current results are not recomputed


def test_run_deploy_without_models_says_what_to_do(tiny_profile):
    with pytest.raises(LoraDriftError, match="train them first"):
        serving.run_deploy(str(tiny_profile), n_requests=2, batch_sizes=[1])


def test_run_arch_tiny(book_root, monkeypatch):
    monkeypatch.setitem(serving.ARCHS, "tiny-test", dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0))
    res = serving.run_arch("tiny-test", device="cpu", n_requests=4, batch_sizes=[1, 2], warmup_batches=1,
                           modes=list(serving.MODES), single_tasks=["rte", "mrpc", "sst2"], lengths="fallback",
                           max_length=64, bootstrap=50)
    out = res["out_dir"]
    assert out.name == "arch-tiny-test-cpu"
    corr = pd.read_csv(out / "deployment_correctness.csv")
    assert corr["passed"].all() and set(corr["mode"]) == {"multi", "mixed", "merged", "routed-merged"}
    # the random adapters are not no-ops: the LoRA model's logits differ from the plain model's
    B = pd.read_csv(out / "deployment_latency.csv")
    assert set(B["mode"]) == set(serving.MODES)
    meta = json.loads((out / "deployment_meta.json").read_text())
    assert "random" in meta["kind"] and meta["length_source"]["rte"].startswith("log-normal")
    sto = pd.read_csv(out / "deployment_storage.csv")
    assert sto["source"].eq("parameter count").all()


def test_random_adapters_are_not_noops():
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=100, max_position_embeddings=128)
    cfg = {"seed": 0, "lora_r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    base = serving.random_classifier(kw, torch.float32, 0, "cpu")
    lm = serving.random_lora_model(kw, torch.float32, "cpu", ["a", "b"], cfg)
    ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        yb = base(input_ids=ids).logits
        ya = lm(input_ids=ids).logits
        lm.base_model.model.score.modules_to_save["a"].weight.copy_(base.score.weight)  # same head, LoRA only
        yl = lm(input_ids=ids).logits
    assert not torch.allclose(ya, yb) and not torch.allclose(yl, yb, atol=1e-4)


def test_memory_meter_sees_a_transient_peak():
    """The peak mark is reset at entry, so a buffer allocated and freed inside still shows up."""
    with serving.MemoryMeter() as meter:
        x = torch.ones(24 * 2**20)  # 96 MiB, touched
        x.add_(1)
        del x
        m = meter.read()
    assert m["rss_peak_increase_mb"] >= 80, m


def test_timing_error_reads_the_two_controls():
    import math

    import pandas as pd
    rat = pd.DataFrame([
        {"numerator": "merged", "denominator": "full", "stream": "rte", "batch_size": 1, "ratio": 1.05, "ci_low": 0.97, "ci_high": 1.16},
        {"numerator": "merged", "denominator": "full", "stream": "sst2", "batch_size": 1, "ratio": 0.90, "ci_low": 0.89, "ci_high": 0.92},
        {"numerator": "lora", "denominator": "merged", "stream": "rte", "batch_size": 1, "ratio": 0.80, "ci_low": 0.73, "ci_high": 0.87},
        {"numerator": "lora", "denominator": "merged", "stream": "mrpc", "batch_size": 1, "ratio": 0.98, "ci_low": 0.95, "ci_high": 1.01},
        {"numerator": "lora", "denominator": "merged", "stream": "sst2", "batch_size": 32, "ratio": 1.07, "ci_low": 1.04, "ci_high": 1.10},
    ])
    e = serving.timing_error(rat)
    assert e["same"] == pytest.approx(0.10)
    assert list(e["below"].stream) == ["rte"]          # mrpc's interval reaches 1: not counted
    assert e["floor"] == pytest.approx(0.20)
    only_same = serving.timing_error(rat[rat.numerator == "merged"])
    assert only_same["floor"] == pytest.approx(0.10) and only_same["below"].empty
    assert math.isnan(serving.timing_error(None)["floor"]) and math.isnan(serving.timing_error(rat.iloc[:0])["floor"])


# ------------------------------------------------------------------------------ wiring
def _deploy(tiny_profile, tiny_model, adapters, tasks=("rte",), **kw):
    """run_deploy on the tiny profile with tiny units in place, small settings."""
    prof = load_profile(str(tiny_profile))
    _fake_units(prof, tiny_model, adapters, list(tasks), prof["seeds"][0])
    kw = {"n_requests": 4, "batch_sizes": [2], "warmup_batches": 1, "repeats": 1, "bootstrap": 20, **kw}
    res = serving.run_deploy(str(tiny_profile), tasks=list(tasks), log=lambda *a: None, **kw)
    return res, serving.load_results(res["out_dir"])


def test_correctness_check_fails_when_merged_predictions_differ(tiny_profile, tiny_model, adapters, monkeypatch):
    """A merged copy whose weights differ from the unmerged adapter's must be reported as a failure."""
    merged = serving.ModelSource.merged

    def wrong_merge(self, task):
        model, extra = merged(self, task)
        with torch.no_grad():
            model.score.weight.mul_(-1)  # a weight of the merged copy only: its predictions flip
        return model, extra

    monkeypatch.setattr(serving.ModelSource, "merged", wrong_merge)
    _, D = _deploy(tiny_profile, tiny_model, adapters, modes=["lora", "merged"])
    rows = D["correctness"][D["correctness"]["mode"] == "merged"]
    assert len(rows) and not rows["passed"].any() and (rows["prediction_agreement"] < 1).all()
    c = serving.correctness_summary(D)
    assert c["passed"] < c["n"] and c["merged_agreement"] < 1


def test_a_new_serving_mode_is_one_table_entry(tiny_profile, tiny_model, adapters, monkeypatch):
    """Registering an A/A copy of `merged` (same load, same server) is all it takes: it is loaded with
    `merged`, timed at every batch size, divided by `merged` (paired) and checked against it."""
    monkeypatch.setitem(serving.MODES, "merged-aa", serving.Mode(
        "merged-aa", "merged, served a second time (A/A control)", "task", "lora", "merged",
        over=("merged",), check=("merged", "identical")))
    _, D = _deploy(tiny_profile, tiny_model, adapters, ("rte", "mrpc"), modes=["lora", "merged", "merged-aa"],
                   batch_sizes=[1, 2])
    lat = D["latency"][D["latency"]["mode"] == "merged-aa"]
    assert sorted(zip(lat["stream"], lat["batch_size"])) == [("mrpc", 1), ("mrpc", 2), ("rte", 1), ("rte", 2)]
    assert (lat["n_requests"] >= 4).all() and (lat["throughput_rps"] > 0).all()
    rat = D["ratios"][D["ratios"]["numerator"] == "merged-aa"]
    assert len(rat) == 4 and set(rat["denominator"]) == {"merged"} and rat["paired"].all()
    corr = D["correctness"][D["correctness"]["mode"] == "merged-aa"]
    assert len(corr) == 4 and corr["passed"].all() and (corr["max_abs_dlogit"] == 0).all()
    assert set(D["memory"]["modes"]) == {"lora", "merged+merged-aa"}   # one loaded object, two modes


def _record(root, unit, config_hash="h0", finished_at="2026-01-01T00:00:00Z"):
    from loradrift.store import write_json
    write_json(root / "data" / "tiny" / "runs" / f"{unit}.json",
               {"test": {"accuracy": 0.5, "f1": 0.5, "n": 16}, "config_hash": config_hash, "finished_at": finished_at})


def test_deployment_key_holds_every_setting(tiny_profile, book_root):
    prof = load_profile(str(tiny_profile))
    for t in TASKS:
        for m in ("full", "lora"):
            _record(book_root, run_id(t, m, 1))
    key = lambda **kw: serving.plan_deploy(prof, device="cpu", **kw)["key"]  # noqa: E731
    base = key()
    assert key() == base                                          # stable
    changed = [dict(modes=["lora", "merged"]), dict(batch_sizes=[1, 8]), dict(n_requests=7),
               dict(repeats=2), dict(warmup_batches=3), dict(bootstrap=100), dict(seed=2),
               dict(batch_sizes_by_mode={"full": [1]})]
    keys = [key(**kw) for kw in changed] + [serving.plan_deploy(prof, device="cuda")["key"],
                                            serving.plan_deploy(prof, ["rte"], device="cpu")["key"]]
    assert base not in keys and len(set(keys)) == len(keys)
    _record(book_root, run_id("mrpc", "lora", 1), config_hash="h1")  # a re-trained served unit
    assert key() != base
    _record(book_root, run_id("mrpc", "lora", 1))
    assert key() == base
    _record(book_root, run_id("mrpc", "lora", 1), finished_at="2026-02-01T00:00:00Z")
    assert key() != base


def test_served_units_are_chosen_by_method_kind():
    lora = {"kind": "lora", "lora_r": 8}
    prof = {"name": "p", "methods": {"ft": {"kind": "full"}, "adapter": lora}}
    assert serving.served_methods(prof) == {"full": "ft", "lora": "adapter"}
    prof["methods"].update({"lora": lora, "lora-r64": {**lora, "lora_r": 64}})
    assert serving.served_method(prof, "lora") == "lora"          # several: the one named like the kind
    assert serving.served_method({**prof, "deploy": {"methods": {"lora": "lora-r64"}}}, "lora") == "lora-r64"
    with pytest.raises(LoraDriftError, match="no method of kind lora"):
        serving.served_method({**prof, "deploy": {"methods": {"lora": "ft"}}}, "lora")
    del prof["methods"]["lora"]
    with pytest.raises(LoraDriftError, match="deploy.methods.lora"):
        serving.served_method(prof, "lora")
    with pytest.raises(LoraDriftError, match="has none"):
        serving.served_method({"name": "p", "methods": {"ft": {"kind": "full"}}}, "lora")


def test_committed_deployment_results_are_current():
    """The committed benchmark's key is the one the cpu profile and its committed units give now."""
    from loradrift.store import is_current, result_path
    path = result_path("cpu-v1", "deploy_meta")
    if not path.exists():
        pytest.skip("no committed deployment results")
    prof = load_profile("cpu-v1")
    meta = json.loads(path.read_text())
    assert is_current(path, serving.plan_deploy(prof, device=meta["device"])["key"])
    assert serving.outdated_units(prof, meta) == []
