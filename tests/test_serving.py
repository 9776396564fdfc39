"""The deployment benchmark: the schedulers, the batched LoRA path against peft, identity of the
multi-adapter paths, paired and rotated timing with the switch inside the clock, the cost model, the
verdicts, the settings and their key, the vLLM path's pure parts, corrupt adapters, and end-to-end
runs on tiny models (no training: adapters are built with peft and given random non-zero weights)."""
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
    """Each task's requests: random texts of 2-11 words, labelled, their token counts set."""
    from conftest import NEG, POS
    rng = np.random.default_rng(0)
    words = POS + NEG + ["the", "movie", "was", "very", "[SEP]"]
    enc = serving.TextEncoder(_tok(tok_dir), 32)
    out = {}
    for t in TASKS:
        out[t] = [serving.Request(uid=f"{t}:{i}", task=t, label=i % 2,
                                  text=" ".join(rng.choice(words, size=int(rng.integers(2, 12)))))
                  for i in range(n)]
        for r, L in zip(out[t], enc.lengths(out[t])):
            r.length = L
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


def _batches(reqs, bs, how="fifo"):
    """A window's batches as lists of requests, by a named scheduler."""
    return [[reqs[i] for i in b] for b in serving.SCHEDULERS[how](reqs, bs)]


def _req(uid, task, length):
    return serving.Request(uid=uid, task=task, length=length)


# ------------------------------------------------------------------------------ schedulers
def _window(seed=0, n=37):
    rng = np.random.default_rng(seed)
    return [_req(f"{TASKS[k]}:{i}", TASKS[k], int(L)) for i, (k, L) in
            enumerate(zip(rng.integers(0, 3, n), rng.integers(1, 60, n)))]


@pytest.mark.parametrize("how", ["fifo", "task", "mixed"])
@pytest.mark.parametrize("bs", [1, 4, 8])
def test_scheduler_serves_every_request_once_within_the_batch_size(how, bs):
    reqs = _window()
    plan = serving.SCHEDULERS[how](reqs, bs)
    assert sorted(i for b in plan for i in b) == list(range(len(reqs)))
    assert all(1 <= len(b) <= bs for b in plan)


def test_schedulers_sort_by_length_within_a_bucket_and_keep_tasks_apart():
    reqs = _window()
    L = lambda b: [reqs[i].length for i in b]  # noqa: E731
    mixed = serving.SCHEDULERS["mixed"](reqs, 8)
    flat = [x for b in mixed for x in L(b)]
    assert flat == sorted(flat) and any(len({reqs[i].task for i in b}) > 1 for b in mixed)
    by_task = serving.SCHEDULERS["task"](reqs, 8)
    assert all(len({reqs[i].task for i in b}) == 1 for b in by_task)
    for t in TASKS:  # within a task: sorted by length, batches full except each task's last
        tb = [b for b in by_task if reqs[b[0]].task == t]
        lens = [x for b in tb for x in L(b)]
        assert lens == sorted(lens) and all(len(b) == 8 for b in tb[:-1])
    assert [reqs[b[0]].task for b in by_task][:1] == [reqs[0].task]   # tasks in order of first arrival
    assert serving.SCHEDULERS["fifo"](reqs, 8)[0] == list(range(8))   # arrival order
    # bucketing by length pads less than arrival order
    from loradrift.serving.schedule import padding
    assert padding(reqs, mixed)[1] < padding(reqs, serving.SCHEDULERS["fifo"](reqs, 8))[1]


def test_results_come_back_in_request_order():
    from loradrift.serving.schedule import in_request_order
    reqs = _window(1, 11)
    plan = serving.SCHEDULERS["mixed"](reqs, 4)
    outs = [np.array([[float(i), -float(i)] for i in b]) for b in plan]   # each row carries its request's index
    got = in_request_order(plan, outs, len(reqs))
    np.testing.assert_array_equal(got[:, 0], np.arange(len(reqs)))
    with pytest.raises(LoraDriftError, match="unserved"):
        in_request_order(plan[:-1], outs[:-1], len(reqs))
    with pytest.raises(LoraDriftError, match="twice"):
        in_request_order(plan + plan[:1], outs + outs[:1], len(reqs))


def test_streams_and_windows():
    pools = {t: [_req(f"{t}:{i}", t, i + 1) for i in range(5)] for t in TASKS}
    s = serving.interleaved_stream(pools, 30, seed=3)
    assert len(s) == 30 and {t: sum(r.task == t for r in s) for t in TASKS} == dict.fromkeys(TASKS, 10)
    for t in TASKS:   # each task's requests in their order, cycling when too few
        assert [r.uid for r in s if r.task == t] == [f"{t}:{i % 5}" for i in range(10)]
    assert sum(a.task != b.task for a, b in zip(s, s[1:])) > 10             # really interleaved
    assert [r.uid for r in serving.interleaved_stream(pools, 30, seed=3)] == [r.uid for r in s]
    w = serving.windows(s, 4, 2)
    assert len(w) == 3 and all(len(x) == 8 for x in w) and w[1][0] is s[8]  # whole windows only
    assert [r.uid for r in serving.task_stream(pools["rte"], 7)][5:] == ["rte:0", "rte:1"]
    with pytest.raises(LoraDriftError, match="no length"):
        serving.SCHEDULERS["mixed"]([serving.Request(uid="a:0", task="a")], 1)


# ------------------------------------------------------------------------------ the batched LoRA path
def _three_adapter_model(tiny_model, adapters, tmp_path):
    """The resident model of the three task adapters plus a fourth of another rank (r=2)."""
    from peft import LoraConfig, get_peft_model

    from loradrift.models import load_classifier
    tok = _tok(tiny_model)
    torch.manual_seed(1)
    odd = get_peft_model(load_classifier(str(tiny_model), "float32", tok.pad_token_id),
                         LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS"))
    serving.randomize_adapter(odd, "default", 99, std=0.3)
    odd.save_pretrained(tmp_path / "odd")
    return _multi(tiny_model, {**adapters, "odd": tmp_path / "odd"})


def test_batched_lora_equals_peft_unmerged(tiny_model, adapters, tmp_path):
    """One batched matmul per LoRA module gives each request its own adapter and head: the logits of
    peft's unmerged single-adapter models (and of its mixed-batch path), the same predictions."""
    import copy
    enc = serving.TextEncoder(_tok(tiny_model), 32)
    reqs = _requests(tiny_model, 5)
    resident = _three_adapter_model(tiny_model, adapters, tmp_path)
    lora_B = [p for n, p in resident.named_parameters() if "lora_B" in n]
    assert lora_B and all(p.abs().sum() > 0 for p in lora_B)      # non-zero B: the adapters do something
    peft_mixed = serving.MixedServer(copy.deepcopy(resident), enc)
    batched = serving.BatchedServer(serving.batched_model(resident), enc)
    window = serving.interleaved_stream(reqs, 15, seed=0)
    single = {}
    for t in TASKS:
        single.update(_logits_by_uid(serving.Server(_single_peft(tiny_model, adapters[t]), enc), [reqs[t]]))
    for bs in (1, 4, 15):
        plan = _batches(window, bs, "mixed")
        got, ref = _logits_by_uid(batched, plan), _logits_by_uid(peft_mixed, plan)
        for u in got:
            np.testing.assert_allclose(got[u], single[u], atol=1e-5)
            np.testing.assert_allclose(got[u], ref[u], atol=1e-5)
            assert got[u].argmax() == single[u].argmax()
    # the rank-2 adapter (zero-padded to rank 4) is served too, and differs from the others
    odd = [serving.Request(uid=f"odd:{i}", task="odd", text=r.text, length=r.length) for i, r in enumerate(reqs["rte"])]
    o_b, o_p = _logits_by_uid(batched, [odd]), _logits_by_uid(peft_mixed, [odd])
    for u in o_b:
        np.testing.assert_allclose(o_b[u], o_p[u], atol=1e-5)
    assert not np.allclose(o_b["odd:0"], single["rte:0"], atol=1e-3)


def test_batched_model_refuses_what_it_cannot_serve(tiny_model, adapters):
    enc = serving.TextEncoder(_tok(tiny_model), 32)
    server = serving.BatchedServer(serving.batched_model(_multi(tiny_model, adapters)), enc)
    with pytest.raises(LoraDriftError, match="no adapter 'qnli'"):
        server([serving.Request(uid="qnli:0", task="qnli", text="good")])
    from loradrift.models import load_classifier
    from peft import LoraConfig, get_peft_model
    dora = get_peft_model(load_classifier(str(tiny_model), "float32", _tok(tiny_model).pad_token_id),
                          LoraConfig(r=2, target_modules=["q_proj"], use_dora=True, task_type="SEQ_CLS"))
    with pytest.raises(LoraDriftError, match="plain LoRA"):
        serving.batched_model(dora)


# ------------------------------------------------------------------------------ identity
def test_multi_mixed_merged_match_single_adapter(tiny_model, adapters):
    enc = serving.TextEncoder(_tok(tiny_model), 32)
    reqs = _requests(tiny_model)
    single, merged = {}, {}
    for t in TASKS:
        pm = _single_peft(tiny_model, adapters[t])
        single.update(_logits_by_uid(serving.Server(pm, enc), _batches(reqs[t], 4)))
        merged.update(_logits_by_uid(serving.Server(pm.merge_and_unload().eval(), enc), _batches(reqs[t], 4)))
    # the heads really differ: serving task B's request with task A's adapter changes predictions
    pa = _single_peft(tiny_model, adapters["rte"])
    cross = _logits_by_uid(serving.Server(pa, enc), _batches(reqs["mrpc"], 4))
    assert max(np.abs(cross[u] - single[u]).max() for u in cross) > 1e-2

    model = _multi(tiny_model, adapters)
    window = serving.interleaved_stream(reqs, 18, seed=0)
    sw = serving.SwitchServer(model, enc)
    homog = _batches(window, 4, "task")
    multi = _logits_by_uid(sw, homog)
    assert sw.switches == 3  # a task's batches follow each other: one switch per task
    mixed_b = _batches(window, 4, "mixed")
    assert any(len({r.task for r in b}) > 1 for b in mixed_b)
    mixed = _logits_by_uid(serving.MixedServer(model, enc), mixed_b)
    assert set(multi) == set(mixed) == set(single)
    for u in multi:
        np.testing.assert_allclose(multi[u], single[u], atol=1e-5)
        np.testing.assert_allclose(mixed[u], single[u], atol=1e-5)  # other padding: numerics only
        assert mixed[u].argmax() == single[u].argmax()
        np.testing.assert_allclose(merged[u], single[u], atol=1e-4)


def test_correctness_rows_flag_a_head_mixup():
    a = {"rte:0": np.array([1.0, 0.0]), "rte:1": np.array([0.0, 1.0])}
    logits = {("routed-lora", "interleaved", 1): a, ("multi", "interleaved", 1): dict(a),
              ("mixed", "interleaved", 1): {"rte:0": np.array([0.0, 1.0]), "rte:1": np.array([0.0, 1.0])},
              ("lora", "rte", 2): a, ("batched", "interleaved", 2): dict(a)}
    rows = {r["mode"]: r for r in serving.correctness_rows(logits)}
    assert rows["multi"]["passed"] and rows["multi"]["max_abs_dlogit"] == 0
    assert not rows["mixed"]["passed"] and rows["mixed"]["prediction_agreement"] == 0.5
    assert rows["batched"]["reference"] == "lora" and rows["batched"]["passed"]   # the next reference in line
# ------------------------------------------------------------------------------ paired, rotated timing
class FakeServer:
    """Records the order it is called in; its 'time' is its cost per request on a fake clock."""

    def __init__(self, name, log, clock, cost):
        self.name, self.log, self.clock, self.cost, self.switches = name, log, clock, cost, 0

    def __call__(self, batch):
        self.log.append(self.name)
        self.clock["t"] += self.cost * len(batch)
        return torch.zeros(len(batch), 2)


def _fake_timer(clock):
    def timer(fn):
        t0 = clock["t"]
        out = fn()
        return out, clock["t"] - t0
    return timer


def test_every_window_is_served_by_every_mode_in_rotated_order():
    clock, log = {"t": 0.0}, []
    servers = {m: FakeServer(m, log, clock, c) for m, c in (("A", 2.0), ("B", 1.0), ("C", 1.0))}
    wins = serving.windows([_req(f"rte:{i}", "rte", 3) for i in range(12)], 2, 1)   # 6 windows of one batch
    plans = {m: [[[0, 1]] for _ in wins] for m in servers}
    seen = []
    rows = serving.time_point(servers, wins, plans, repeats=2, warmup=1, timer=_fake_timer(clock),
                              on_logits=lambda m, w, lg: seen.append(m))
    assert log[:3] == ["A", "B", "C"]                          # warm-up: every mode, untimed
    timed = log[3:]
    assert [timed[i:i + 3] for i in (0, 3, 6)] == [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"]]
    assert timed[18:21] == ["B", "C", "A"]                    # repeat 1 starts one place later
    df = pd.DataFrame(rows)
    assert len(df) == 3 * 6 * 2 and len(seen) == 3 * 6       # logits of repeat 0 only
    counts = df.groupby(["mode", "position"]).size()
    assert len(counts) == 9 and (counts == 4).all()          # every mode in every place equally often
    assert (df[df["mode"] == "A"]["latency_ms"] == 4000).all()  # 2 requests x 2 s, in ms
    assert (df["done_ms"] == df["latency_ms"]).all()          # one batch per window: done = its own time


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
    window = serving.interleaved_stream(_requests(tiny_model), 12, seed=0)
    plan = serving.SCHEDULERS["task"](window, 2)
    from loradrift.serving.timing import serve_window
    lat, _ = serve_window(serving.SwitchServer(model, enc), window, plan, _fake_timer(clock))
    switched = [i == 0 or window[plan[i][0]].task != window[plan[i - 1][0]].task for i in range(len(plan))]
    np.testing.assert_allclose(lat, np.array(switched, float))   # 1 s exactly where the task changes
    # and with the real clock, a 30 ms switch shows up in the measured latency
    import time
    model.set_adapter = lambda name, *a, **kw: (time.sleep(0.03), orig(name, *a, **kw))
    lat, _ = serve_window(serving.SwitchServer(model, enc), window, plan, serving.timing.WallTimer())
    assert min(x for x, s in zip(lat, switched) if s) >= 0.03


def test_paired_ratio_resamples_pairs_together():
    rng = np.random.default_rng(0)
    drift = rng.uniform(1, 3, 60)               # the machine's speed drifting between windows
    r = serving.paired_ratio(1.05 * drift * rng.normal(1, 0.002, 60), drift, n_boot=500)
    assert r["ratio"] == pytest.approx(1.05, abs=0.002) and r["n_pairs"] == 60
    assert r["ci_high"] - r["ci_low"] < 0.01    # paired: the drift cancels
    assert r["ci_low"] < r["ratio"] < r["ci_high"] and r["gmean_ratio"] == pytest.approx(1.05, abs=0.002)
    exact = serving.paired_ratio(2 * drift, drift, n_boot=100)
    assert exact["ci_low"] == pytest.approx(2) and exact["ci_high"] == pytest.approx(2)
    with pytest.raises(ValueError):
        serving.paired_ratio(drift, drift[:-1])


def test_latency_summary_counts_the_queue_in_a_window():
    from loradrift.serving.timing import latency_summary
    rows = pd.DataFrame({"repeat": [0, 0, 1, 1], "n": [2, 2, 2, 2], "latency_ms": [10.0, 30.0, 10.0, 30.0],
                         "done_ms": [10.0, 40.0, 10.0, 40.0], "tokens_real": [4, 8, 4, 8],
                         "tokens_padded": [4, 10, 4, 10]})
    s = latency_summary(rows)
    assert s["latency_p50_ms"] == pytest.approx(25.0) and s["latency_p99_ms"] == pytest.approx(40.0, abs=0.5)
    assert s["throughput_rps"] == pytest.approx(8 / 0.08) and s["pad_fraction"] == pytest.approx(2 / 14)


# ------------------------------------------------------------------------------ the cost model
def test_cost_model_counts_lora_as_a_small_share_and_its_calls():
    from transformers import LlamaConfig

    from loradrift.serving import costmodel as cm
    shape = cm.llama_shape(LlamaConfig(**serving.ARCHS["smollm2-135m"]), {"r": 8, "targets": ["q_proj", "v_proj"]})
    share = cm.lora_flops(shape, 50) / cm.base_flops(shape, 50)
    assert 0.002 < share < 0.008                                   # ~0.4-0.5% of a forward at r=8 on q/v
    h, kv = 576, 192   # by hand: one layer at L=1, no attention-length term beyond 4*L*attn
    per_layer = 2 * (h * h + 2 * h * kv + h * h + 3 * h * 1536) + 4 * h
    assert cm.base_flops(shape, 1) == 30 * per_layer + 2 * h * 2
    assert cm.lora_flops(shape, 1) == 30 * (2 * 8 * (h + h) + 2 * h + 2 * 8 * (h + kv) + 2 * kv)
    reqs = [_req("a:0", "a", 10), _req("b:0", "b", 4)]
    one = cm.batch_costs(shape, reqs, [[0, 1]], unmerged=True)
    assert one["flops"] == 2 * (cm.base_flops(shape, 10) + cm.lora_flops(shape, 10))   # padded to 10
    assert cm.weight_bytes(shape, 20, 2) > cm.weight_bytes(shape, 20, 0)
    # predicted ratio: the den's time less its calls' cost prices the num's FLOPs
    den = {"flops": 1e9, "ops": 100, "seconds": 0.02}
    assert cm.predict({"flops": 1e9, "ops": 100}, den, 1e-4) == pytest.approx(1.0)
    assert cm.predict({"flops": 1e9, "ops": 120}, den, 1e-4) == pytest.approx(1 + 20 * 1e-4 / 0.02)
    assert cm.predict({"flops": 1.1e9, "ops": 100}, den, 1e-4) == pytest.approx(1 + 0.1 * 0.01 / 0.02)


def test_operator_calls_of_an_unmerged_adapter(tiny_model, adapters):
    from loradrift.serving.costmodel import count_ops, dispatch_cost
    enc = serving.TextEncoder(_tok(tiny_model), 32)
    batch = _requests(tiny_model, 2)["rte"]
    pm = _single_peft(tiny_model, adapters["rte"])
    lora = count_ops(lambda: serving.Server(pm, enc)(batch))
    server = serving.Server(pm.merge_and_unload().eval(), enc)
    merged = count_ops(lambda: server(batch))
    modules = 2 * 2   # 2 layers x q, v: A, B, the scale, the add (and a cast) each
    assert 4 * modules <= lora - merged <= 8 * modules
    assert 0 < dispatch_cost("cpu", calls=200, rounds=3) < 1e-3
# ------------------------------------------------------------------------------ resolution and verdicts
def _ratio(num, den, bs, ratio, lo, hi, stream="sst2", predicted=1.0):
    return {"comparison": "single" if stream != "interleaved" else "adapters", "stream": stream, "batch_size": bs,
            "numerator": num, "denominator": den, "ratio": ratio, "ci_low": lo, "ci_high": hi, "gmean_ratio": ratio,
            "n_pairs": 30, "repeat_min": lo, "repeat_max": hi, "predicted": predicted, "flop_ratio": 1.0,
            "bytes_ratio": 1.0, "extra_ops": 0}


def _results(rows, correctness=()):
    empty = pd.DataFrame()
    return {"meta": {}, "ratios": pd.DataFrame(rows), "latency": pd.DataFrame([{"mode": "lora"}]),
            "correctness": pd.DataFrame(list(correctness), columns=["mode", "kind", "passed", "max_abs_dlogit"]),
            "storage": empty, "memory": empty}


def test_resolution_is_the_aa_interval_at_that_batch_size():
    rat = pd.DataFrame([_ratio("merged-aa", "merged", 1, 1.0, 0.985, 1.012),
                        _ratio("merged-aa", "merged", 32, 1.01, 0.97, 1.05),
                        _ratio("merged", "full", 1, 1.03, 1.02, 1.04)])
    assert serving.resolution(rat, 1) == pytest.approx(0.015)
    assert serving.resolution(rat, 32) == pytest.approx(0.05)
    assert np.isnan(serving.resolution(rat, 8))
    e = serving.timing_error(rat)
    assert e["aa"] == pytest.approx(0.05) and e["same"] == pytest.approx(0.04) and e["floor"] == pytest.approx(0.05)


def test_claims_are_judged_on_the_interval_widened_by_the_resolution():
    aa = _ratio("merged-aa", "merged", 1, 1.0, 0.99, 1.01)
    D = _results([aa, _ratio("lora", "full", 1, 1.031, 1.017, 1.047), _ratio("merged", "full", 1, 1.004, 0.995, 1.012),
                  _ratio("multi", "routed-lora", 1, 1.004, 0.998, 1.009, "interleaved")],
                 [("multi", "identical", True, 0.0), ("mixed", "identical", True, 1e-6)])
    c7, c8, c9 = (serving.claim(D, n) for n in (7, 8, 9))
    assert c7["verdict"] == "refuted" and c7["measured"]["resolution"] == pytest.approx(0.01)
    assert c8["verdict"] == "supported"
    assert c9["verdict"] == "inconclusive"            # 1.009 + 0.01 reaches past 1.01
    D["ratios"].loc[D["ratios"].numerator == "merged-aa", ["ci_low", "ci_high"]] = (0.9995, 1.0005)
    assert serving.claim(D, 9)["verdict"] == "supported"
    D["ratios"].loc[D["ratios"].numerator == "merged-aa", ["ci_low", "ci_high"]] = (0.66, 1.34)
    assert serving.claim(D, 7)["verdict"] == "inconclusive"   # a resolution of 34% can neither refute nor support +37.5%
    assert serving.claim(D, 8)["verdict"] == "inconclusive"
    bad = _results(D["ratios"].to_dict("records"), [("multi", "identical", False, 0.3)])
    assert serving.claim(bad, 9)["verdict"] == "refuted"   # predictions differ
    near = _results([_ratio("merged-aa", "merged", 1, 1.0, 0.99, 1.01), _ratio("lora", "full", 1, 1.37, 1.35, 1.39)])
    assert serving.claim(near, 7)["verdict"] == "supported"   # [1.34, 1.40] lies within 5% of 1.375
    no_aa = _results([_ratio("merged", "full", 1, 1.0, 0.995, 1.005), _ratio("lora", "full", 1, 1.2, 1.1, 1.3)])
    assert serving.claim(no_aa, 8)["verdict"] == "inconclusive"   # no A/A control: no support, ...
    assert serving.claim(no_aa, 7)["verdict"] == "refuted"        # ... but a refutation stands
    multi = [_ratio("merged-aa", "merged", 1, 1.0, 0.9995, 1.0005), _ratio("multi", "routed-lora", 1, 1.0, 0.998, 1.002,
                                                                             "interleaved")]
    assert serving.claim(_results(multi), 9)["verdict"] == "inconclusive"   # no identity check ran
    other = _results(multi, [("multi", "identical", True, 0.0), ("batched", "identical", False, 0.3)])
    assert serving.claim(other, 9)["verdict"] == "supported"   # our batched path failing is not the claim's mode
    none = serving.claim(None, 7)
    assert none["verdict"] == "not measured" and none["measured"] is None


def test_mixed_serving_reads_the_paired_ratio_as_throughput():
    D = _results([_ratio("mixed", "routed-merged", 32, 0.8, 0.78, 0.83, "interleaved", predicted=0.9),
                  _ratio("mixed", "routed-merged", 1, 1.2, 1.1, 1.3, "interleaved")])
    D["latency"] = pd.DataFrame([{"comparison": "adapters", "mode": m, "batch_size": 32, "latency_p50_ms": p,
                                  "latency_p99_ms": 2 * p, "throughput_rps": 100 / p, "pad_fraction": 0.1}
                                 for m, p in (("mixed", 8.0), ("routed-merged", 10.0))])
    m = serving.mixed_serving(D)
    assert m["batch_size"] == 32 and m["throughput_ratio"] == pytest.approx(1.25)
    assert m["ci"] == pytest.approx((1 / 0.83, 1 / 0.78)) and m["goal_met"] and m["p99_mixed"] == 16.0
    assert serving.mixed_serving(D, 1)["goal_met"] is False and m["vs_multi"] is None
    D["ratios"] = pd.concat([D["ratios"], pd.DataFrame([_ratio("mixed", "multi", 32, 0.5, 0.4, 0.625, "interleaved")])])
    assert serving.mixed_serving(D)["vs_multi"] == pytest.approx((2.0, 1.6, 2.5))


# ------------------------------------------------------------------------------ settings and their key
def test_deploy_settings_are_checked():
    prof = {"name": "p", "seeds": [1]}
    cfg = serving.deploy_config(prof, device="cpu")
    assert set(cfg["comparisons"]) == {"single", "adapters", "mixed"} and cfg["repeats"] >= 5
    assert cfg["comparisons"]["single"]["modes"] == ["full", "lora", "merged", "merged-aa"]   # the table's order
    with pytest.raises(LoraDriftError, match="unknown keys"):
        serving.deploy_config({**prof, "deploy": {"n_requests": 5}}, device="cpu")
    wrong = {"x": {"streams": ["interleaved"], "modes": ["lora", "mixed"], "batch_sizes": [1], "window": 1,
                   "windows": {1: 2}}}
    with pytest.raises(LoraDriftError, match="task mode"):
        serving.deploy_config(prof, device="cpu", comparisons=wrong)
    with pytest.raises(LoraDriftError, match="needs exactly"):
        serving.deploy_config(prof, device="cpu", comparisons={"x": {"streams": ["rte"], "modes": ["lora", "merged"]}})
    cpu = serving.deploy_config(load_profile("cpu"), device="cpu")
    assert cpu["threads"] == 2 and cpu["comparisons"]["single"]["streams"] == ["sst2"]
    pairs = {c: {b: n * cpu["repeats"] for b, n in v["windows"].items()} for c, v in cpu["comparisons"].items()}
    assert pairs["single"][32] >= 30 and pairs["mixed"][32] >= 30 and pairs["single"][1] >= 150
    assert set(pairs["adapters"]) == {1}          # a profile's batch_sizes replace the base's (windows merge)
    with pytest.raises(LoraDriftError, match="no windows for batch sizes"):
        serving.deploy_config(prof, device="cpu", comparisons={
            "x": {**wrong["x"], "streams": ["rte"], "modes": ["lora", "merged"], "batch_sizes": [1, 8]}})


def _record(root, unit, config_hash="h0", finished_at="2026-01-01T00:00:00Z", **more):
    from loradrift.store import write_json
    write_json(root / "data" / "tiny" / "runs" / f"{unit}.json",
               {"test": {"accuracy": 0.5, "f1": 0.5, "n": 16}, "config_hash": config_hash, "finished_at": finished_at,
                **more})


def test_deployment_key_holds_every_setting(tiny_profile, book_root):
    import copy
    prof = load_profile(str(tiny_profile))
    for t in TASKS:
        for m in ("full", "lora"):
            _record(book_root, run_id(t, m, 1))
    key = lambda **kw: serving.plan_deploy(prof, device="cpu", **kw)["key"]  # noqa: E731
    base = key()
    assert key() == base                                          # stable
    comps = serving.deploy_config(prof, device="cpu")["comparisons"]

    def comp(name, **kw):
        c = copy.deepcopy(comps)
        c[name].update(kw)
        return c
    changed = [dict(repeats=7), dict(warmup=4), dict(bootstrap=100), dict(seed=2), dict(threads=1),
               dict(comparisons=comp("single", windows={**comps["single"]["windows"], 1: 3})),
               dict(comparisons=comp("mixed", window=2)), dict(comparisons=comp("mixed", batch_sizes=[1, 8])),
               dict(comparisons=comp("single", streams=["rte"])),
               dict(comparisons=comp("adapters", modes=["multi", "mixed"]))]
    keys = [key(**kw) for kw in changed] + [serving.plan_deploy(prof, device="cuda")["key"],
                                            serving.plan_deploy(prof, ["rte"], device="cpu")["key"]]
    assert base not in keys and len(set(keys)) == len(keys)
    _record(book_root, run_id("mrpc", "lora", 1), config_hash="h1")  # a re-trained served unit
    assert key() != base
    _record(book_root, run_id("mrpc", "lora", 1))
    assert key() == base
    _record(book_root, run_id("mrpc", "lora", 1), finished_at="2026-02-01T00:00:00Z")
    assert key() != base    # a result without a model fingerprint is known by when it finished
    # with fingerprints, a unit is its weights: a re-run that reproduces them keeps the key (whatever else it
    # saved), other weights change it; a result with only the folder's fingerprint is known by that
    _record(book_root, run_id("mrpc", "lora", 1), weights_fingerprint="w1", model_fingerprint="f1")
    with_fp = key()
    _record(book_root, run_id("mrpc", "lora", 1), finished_at="2026-02-01T00:00:00Z", weights_fingerprint="w1",
            model_fingerprint="f2")
    assert key() == with_fp != base
    _record(book_root, run_id("mrpc", "lora", 1), finished_at="2026-02-01T00:00:00Z", weights_fingerprint="w2",
            model_fingerprint="f2")
    assert key() != with_fp
    _record(book_root, run_id("mrpc", "lora", 1), model_fingerprint="f1")
    folder_only = key()
    assert folder_only not in (base, with_fp)
    _record(book_root, run_id("mrpc", "lora", 1), finished_at="2026-02-01T00:00:00Z", model_fingerprint="f1")
    assert key() == folder_only
    _record(book_root, run_id("mrpc", "lora", 1), model_fingerprint="f2")
    assert key() != folder_only


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
        shutil.copytree(adapters[t], model_dir(prof["name"], run_id(t, "lora", seed)), dirs_exist_ok=True)
        torch.manual_seed(50 + i)
        full = load_classifier(str(tiny_model), "float32", tok.pad_token_id)
        full.save_pretrained(model_dir(prof["name"], run_id(t, "full", seed)))
        tok.save_pretrained(model_dir(prof["name"], run_id(t, "full", seed)))


TINY = {"single": {"streams": ["rte", "sst2"], "modes": ["lora", "merged", "merged-aa", "full"], "batch_sizes": [1, 4],
                   "window": 1, "windows": {1: 3, 4: 2}},
        "adapters": {"streams": ["interleaved"], "modes": ["multi", "mixed", "routed-lora"], "batch_sizes": [1, 4],
                     "window": 2, "windows": {1: 2, 4: 2}},
        "mixed": {"streams": ["interleaved"], "modes": ["mixed", "mixed-fifo", "batched", "routed-merged"],
                  "batch_sizes": [1, 4], "window": 2, "windows": {1: 2, 4: 2}}}


def _deploy(tiny_profile, tiny_model, adapters, tasks=("rte",), **kw):
    """run_deploy on the tiny profile with tiny units in place, small settings."""
    prof = load_profile(str(tiny_profile))
    _fake_units(prof, tiny_model, adapters, list(tasks), prof["seeds"][0])
    kw = {"repeats": 2, "warmup": 1, "bootstrap": 20, "comparisons": TINY, **kw}
    res = serving.run_deploy(str(tiny_profile), tasks=list(tasks), log=lambda *a: None, **kw)
    return res, serving.load_results(res["out_dir"])


def chapter_text(D):
    from loradrift.serving import chapter
    return chapter.mixed_paragraph(D)


def test_run_deploy_end_to_end(tiny_profile, tiny_model, adapters):
    res, D = _deploy(tiny_profile, tiny_model, adapters, TASKS)
    out = res["out_dir"]
    assert not res["skipped"] and all((out / f"deployment_{n}.csv").exists() for n in serving.FILES)
    lat = D["latency"]
    assert set(lat["mode"]) == {m for c in TINY.values() for m in c["modes"]}
    assert set(lat[lat["mode"] == "lora"]["stream"]) == {"rte", "sst2"} and (lat["throughput_rps"] > 0).all()
    B = D["batches"]   # every mode served every window of its point in every repeat, the same requests
    per = B.groupby(["comparison", "stream", "batch_size", "mode"]).agg(n=("n", "sum"), w=("window", "nunique"))
    assert (per.groupby(level=[0, 1, 2])["n"].nunique() == 1).all()
    w = per.reset_index().groupby(["comparison", "batch_size"])["w"].agg(set)
    assert all(w[(c, b)] == {n} for c, v in TINY.items() for b, n in v["windows"].items())
    corr = D["correctness"]
    assert corr["passed"].all() and {"multi", "mixed", "mixed-fifo", "batched", "merged", "merged-aa",
                                     "routed-merged"} <= set(corr["mode"])
    rat = D["ratios"]
    have = set(zip(rat.numerator, rat.denominator))
    assert {("lora", "full"), ("merged", "full"), ("merged-aa", "merged"), ("multi", "routed-lora"),
            ("mixed", "routed-merged"), ("batched", "mixed"), ("mixed-fifo", "mixed")} <= have
    assert (rat.ci_low <= rat.ratio).all() and (rat.ratio <= rat.ci_high).all() and (rat.n_pairs >= 4).all()
    aa = rat[rat.numerator == "merged-aa"]
    assert (aa.flop_ratio == 1).all() and (aa.extra_ops == 0).all() and np.allclose(aa.predicted, 1)
    lf = rat[(rat.numerator == "lora") & (rat.denominator == "merged")]
    assert (lf.flop_ratio > 1).all() and (lf.extra_ops > 0).all()
    cost = D["cost"]
    ops = lambda m: cost[cost["mode"] == m]["ops_per_forward"].to_numpy()  # noqa: E731
    assert (ops("lora") > ops("merged")).all()
    pts = D["points"]
    assert (pts["threads"] == 1).all() and pts["load_before"].notna().all()
    assert {"fifo", "task", "mixed"} == set(D["schedules"]["scheduler"])
    mem = D["memory"]
    assert (mem["load_s"] > 0).all() and (mem["model_mb"] > 0).all()
    acc = D["accuracy"]
    assert {"lora", "merged", "mixed"} <= set(acc["mode"])
    meta = D["meta"]
    assert meta["design"] == serving.engine.DESIGN and len(meta["dispatch_s"]) == 2 and meta["shape"]["lora_r"] == 4
    for n in (7, 8, 9):
        assert serving.claim(D, n)["verdict"] in ("supported", "refuted", "inconclusive")
    mx = serving.mixed_serving(D)
    assert mx["batch_size"] == 4 and mx["lookahead"] == TINY["mixed"]["window"]
    assert mx["batches_mixed"] == D["schedules"].query("scheduler == 'mixed' and batch_size == 4 and stream == 'interleaved'").batches_per_window.iloc[0]
    assert f"look-ahead of {TINY['mixed']['window']} batches" in chapter_text(D)
    from loradrift.serving import chapter, findings
    share = findings.call_share(D)
    assert set(share) == set(TINY["single"]["windows"]) and all(0 < v < 1 for v in share.values())
    assert findings.extra_calls(D) == ops("lora")[0] - ops("merged")[0] > 0
    assert "more operator calls per forward" in chapter.cpu_paragraph(D) and "n/a" not in chapter.cpu_paragraph(D)
    assert serving.headline(D, TASKS)
    assert serving.run_deploy(str(tiny_profile), tasks=TASKS, log=lambda *a: None, repeats=2, warmup=1,
                              bootstrap=20, comparisons=TINY)["skipped"]   # current results are not recomputed


def test_run_deploy_without_models_says_what_to_do(tiny_profile):
    with pytest.raises(LoraDriftError, match="train them first"):
        serving.run_deploy(str(tiny_profile), comparisons=TINY)


def test_results_of_the_block_design_are_not_read_as_this_design(tmp_path):
    from loradrift.store import write_json
    write_json(tmp_path / "deployment_meta.json", {"kind": "trained models", "config": {}})
    assert serving.load_results(tmp_path) is None and serving.superseded(tmp_path)
    assert not serving.superseded(tmp_path / "nothing")


TINY_ARCH = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=100, max_position_embeddings=128, rms_norm_eps=1e-5,
                 rope_theta=10000.0)


def test_the_gpu_run_at_tiny_scale(book_root, monkeypatch):
    """The prepared GPU run (``_arch.yaml``'s cuda settings: bf16, the three comparisons at batch 1, 8,
    32) on a tiny architecture on the CPU, with one window per batch size."""
    from loradrift.serving.arch import arch_config
    monkeypatch.setitem(serving.ARCHS, "tiny-test", TINY_ARCH)
    gpu = arch_config("tinyllama-1.1b", device="cuda")
    assert gpu["dtype"] == "bfloat16" and set(gpu["comparisons"]) == {"single", "adapters", "mixed"}
    assert all(set(c["windows"]) == {1, 8, 32} for c in gpu["comparisons"].values())
    comps = {n: {**c, "windows": dict.fromkeys(c["batch_sizes"], 1)} for n, c in gpu["comparisons"].items()}
    res = serving.run_arch("tiny-test", device="cpu", dtype="bfloat16", comparisons=comps, repeats=2, warmup=1,
                           lengths="fallback", max_length=64, bootstrap=20, log=lambda *a: None)
    assert res["out_dir"].name == "arch-tiny-test-cpu"
    D = serving.load_results(res["out_dir"])
    assert D["correctness"]["passed"].all() and set(D["ratios"]["batch_size"]) == {1, 8, 32}
    assert "random" in D["meta"]["kind"] and D["meta"]["dtype"] == "bfloat16"
    assert D["meta"]["length_source"]["rte"].startswith("log-normal")
    assert serving.arch_results() and "arch-tiny-test-cpu" in serving.arch_results()
    assert D["storage"]["source"].eq("parameter count").all()


def test_random_adapters_are_not_noops():
    cfg = {"seed": 0, "lora_r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    kw = {k: TINY_ARCH[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                    "num_key_value_heads", "vocab_size", "max_position_embeddings")}
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


# ------------------------------------------------------------------------------ wiring
SMALL = {"single": {"streams": ["rte"], "modes": ["lora", "merged"], "batch_sizes": [2], "window": 1,
                    "windows": {2: 2}}}


def test_correctness_check_fails_when_merged_predictions_differ(tiny_profile, tiny_model, adapters, monkeypatch):
    """A merged copy whose weights differ from the unmerged adapter's must be reported as a failure."""
    merged = serving.ModelSource.merged

    def wrong_merge(self, task):
        model, extra = merged(self, task)
        with torch.no_grad():
            model.score.weight.mul_(-1)  # a weight of the merged copy only: its predictions flip
        return model, extra

    monkeypatch.setattr(serving.ModelSource, "merged", wrong_merge)
    _, D = _deploy(tiny_profile, tiny_model, adapters, comparisons=SMALL)
    rows = D["correctness"][D["correctness"]["mode"] == "merged"]
    assert len(rows) and not rows["passed"].any() and (rows["prediction_agreement"] < 1).all()
    c = serving.correctness_summary(D)
    assert c["passed"] < c["n"] and c["merged_agreement"] < 1


def test_a_new_serving_mode_is_one_table_entry(tiny_profile, tiny_model, adapters, monkeypatch):
    """Registering a third copy of `merged` (same load, same server) is all it takes: it is loaded on its
    own, timed in the rotation, divided by `merged` (paired) and checked against it."""
    monkeypatch.setitem(serving.MODES, "merged-aa2", serving.Mode(
        "merged-aa2", "merged, a third copy", "task", "fifo", "lora", "merged",
        over=("merged",), check=(("merged",), "identical")))
    comps = {"single": {"streams": ["rte", "mrpc"], "modes": ["lora", "merged", "merged-aa2"], "batch_sizes": [1, 2],
                        "window": 1, "windows": {1: 2, 2: 2}}}
    _, D = _deploy(tiny_profile, tiny_model, adapters, ("rte", "mrpc"), comparisons=comps)
    lat = D["latency"][D["latency"]["mode"] == "merged-aa2"]
    assert sorted(zip(lat["stream"], lat["batch_size"])) == [("mrpc", 1), ("mrpc", 2), ("rte", 1), ("rte", 2)]
    rat = D["ratios"][D["ratios"]["numerator"] == "merged-aa2"]
    assert len(rat) == 4 and set(rat["denominator"]) == {"merged"} and rat["same_batches"].all()
    corr = D["correctness"][D["correctness"]["mode"] == "merged-aa2"]
    assert len(corr) == 4 and corr["passed"].all() and (corr["max_abs_dlogit"] == 0).all()
    assert sorted(D["memory"]["mode"]) == sorted(["lora", "merged", "merged-aa2"] * 2)   # one object per mode


def test_every_mode_gets_its_own_fresh_copy(tiny_profile, tiny_model, adapters, monkeypatch):
    """No two modes of a comparison share a weight tensor, and each is loaded, then deep-copied."""
    import copy

    from loradrift.serving import engine
    from loradrift.serving.engine import Bench, Point
    copied = []
    monkeypatch.setattr(engine, "copy", types.SimpleNamespace(
        deepcopy=lambda x: copied.append(type(x).__name__) or copy.deepcopy(x)))
    from loradrift.serving.sources import TrainedSource
    prof = load_profile(str(tiny_profile))
    _fake_units(prof, tiny_model, adapters, ["rte"], prof["seeds"][0])
    plan = serving.stage.locate_units(prof, serving.plan_deploy(prof, ["rte"], comparisons=SMALL))
    source = TrainedSource(prof, plan["dirs"], plan["methods"], "cpu", 32)
    bench = Bench(source, {}, plan["config"], log=lambda *a: None)
    a, _ = bench.load("merged", "rte")
    b, _ = bench.load("merged", "rte")
    pa = {p.data_ptr() for p in a.parameters()}
    assert not pa & {p.data_ptr() for p in b.parameters()}
    assert copied == [type(a).__name__] * 2
    assert Point("x", "rte", ["lora", "merged"], 1, {1: 1}).modes == ["lora", "merged"]


def test_committed_deployment_results_are_current():
    """The committed benchmark's key is the one the cpu profile and its committed units give now."""
    from loradrift.store import data_dir, is_current, result_path
    path = result_path("cpu", "deploy_meta")
    if not path.exists() or serving.superseded(data_dir("cpu")):
        pytest.skip("no committed deployment results of this design (`python -m loradrift deploy --profile cpu`)")
    prof = load_profile("cpu")
    meta = json.loads(path.read_text())
    assert is_current(path, serving.plan_deploy(prof, device=meta["device"])["key"])
    assert serving.outdated_units(prof, meta) == []


@pytest.mark.parametrize("r,words", [(1.205, "20.5% more time"), (0.97, "3.0% less time"), (1.0004, "the same time")])
def test_a_time_ratio_reads_as_more_or_less_time(r, words):
    from loradrift.serving import chapter
    assert chapter._more(r) == words


@pytest.mark.parametrize("case", ["refuted-7", "supported-7", "no-mixed", "none"])
def test_rq2_answer_reads_for_every_outcome(case):
    """The preface's RQ2 sentences: each claim's verdict in the chapter's words, batch sizes where measured,
    the mixed-serving goal met or not, nothing missing printed as a number."""
    rows = [_ratio("merged-aa", "merged", 1, 1.0, 0.99, 1.01), _ratio("merged", "full", 1, 1.004, 0.995, 1.012),
            _ratio("lora", "full", 1, 1.031, 1.017, 1.047), _ratio("lora", "full", 32, 1.01, 1.0, 1.02),
            _ratio("multi", "routed-lora", 1, 1.004, 0.998, 1.009, "interleaved")]
    if case == "supported-7":
        rows[2] = _ratio("lora", "full", 1, 1.37, 1.36, 1.38)
    if case not in ("no-mixed", "none"):
        rows.append(_ratio("mixed", "routed-merged", 32, 0.8, 0.78, 0.83, "interleaved"))
    D = None if case == "none" else _results(rows, [("multi", "identical", True, 0.0)])
    if D is not None:
        D["meta"] = {"environment": {"cpu": "AMD EPYC", "gpu": None}}
        D["latency"] = pd.DataFrame([{"comparison": "adapters", "mode": m, "batch_size": 32, "latency_p50_ms": 8.0,
                                      "latency_p99_ms": 9.0, "throughput_rps": 1.0, "pad_fraction": 0.1}
                                     for m in ("mixed", "routed-merged")])
    text = serving.rq2_answer(D)
    assert "nan" not in text and "n/a" not in text
    if case == "none":
        assert text.startswith("Not measured yet")
        return
    v7 = "supported" if case == "supported-7" else "refuted"
    assert f"claim 7 (an unmerged adapter adds 37.5%) is {v7}" in text
    assert "claim 8 (merged costs what full costs) is supported" in text and "On an AMD EPYC CPU" in text
    assert "claim 9 (many adapters cost under 1% more, with identical predictions) is inconclusive on this machine" in text
    more = "37.0% more time" if v7 == "supported" else "3.1% more time"
    assert f"took {more} than the fully fine-tuned model at batch size 1" in text
    assert "and 1.0% more time at batch size 32 (1.010× [1.000, 1.020])" in text and "resolve ±1.0%" in text
    assert ("1.25× [1.20, 1.28] the throughput" in text and "the goal of 1.1× at batch size 32 is met" in text) == \
        (case != "no-mixed")
    assert "goal" not in text if case == "no-mixed" else True


@pytest.mark.parametrize("ratio,lo,hi,bs,state", [(0.8, 0.78, 0.83, 32, "met"), (0.9, 0.85, 0.95, 32, "not clearly met"),
                                                  (1.1, 1.05, 1.15, 32, "slower"), (0.97, 0.93, 1.02, 32, "short"),
                                                  (0.8, 0.78, 0.83, 16, "other batch size")])
def test_the_mixed_serving_goal_is_judged_at_its_batch_size(ratio, lo, hi, bs, state):
    """Time ratios in; throughput (their inverse) is judged against 1.1x at batch size 32 only."""
    from loradrift.serving import chapter
    D = _results([_ratio("mixed", "routed-merged", bs, ratio, lo, hi, "interleaved"),
                  _ratio("mixed", "routed-merged", 1, 0.5, 0.4, 0.6, "interleaved")])
    D["latency"] = pd.DataFrame([{"comparison": "adapters", "mode": "mixed", "batch_size": bs, "latency_p50_ms": 1.0,
                                  "latency_p99_ms": 1.0, "throughput_rps": 1.0, "pad_fraction": 0.1}])
    m = serving.mixed_serving(D)
    assert m["batch_size"] == bs and m["goal_state"] == state and m["goal_met"] == (state == "met")
    text = chapter.mixed_paragraph(D)
    assert chapter.GOAL_WORDS[state].format(g="1.1×", b=32) in text and "nan" not in text
    assert "Median" not in text   # the merged models' latency is missing: no sentence half made of n/a
    assert "batched LoRA path was not timed" in text


def test_the_chapter_paragraphs_say_when_nothing_was_measured():
    from loradrift.serving import chapter
    for f in (chapter.claims_paragraph, chapter.mixed_paragraph, chapter.resolution_paragraph, chapter.cost_paragraph,
              chapter.storage_paragraph, chapter.correctness_paragraph):
        text = f(None)
        assert "n/a" not in text and ("not" in text or "No " in text or "nothing" in text), f.__name__


def test_resolution_and_cost_paragraphs_read_the_controls_per_batch_size():
    from loradrift.serving import chapter
    aa1, aa32 = _ratio("merged-aa", "merged", 1, 1.0, 0.99, 1.012), _ratio("merged-aa", "merged", 32, 1.0, 0.97, 1.01)
    D = _results([aa1, aa32, _ratio("lora", "merged", 1, 1.2, 1.15, 1.25, predicted=1.01),
                  _ratio("merged", "full", 32, 0.9, 0.88, 0.92, predicted=1.0),
                  _ratio("lora", "full", 8, 1.0, 0.99, 1.01)])
    text = chapter.resolution_paragraph(D)
    assert "±1.20% at batch size 1 and ±3.00% at batch size 32" in text and text.endswith("Merged against full reached ±12.0% from 1.")
    assert "target of ±2.0%: not met" in text and "excludes 1" not in text
    D["ratios"].loc[(D["ratios"].batch_size == 1) & (D["ratios"].numerator == "merged-aa"), ["ratio", "ci_low", "ci_high"]] = \
        (0.986, 0.98, 0.992)
    assert "At batch size 1 the A/A interval excludes 1: two copies of one model, loaded the same way, differed by 1.4%" in \
        chapter.resolution_paragraph(D)
    D["ratios"].loc[(D["ratios"].batch_size == 1) & (D["ratios"].numerator == "merged-aa"), ["ratio", "ci_low", "ci_high"]] = \
        (1.0, 0.99, 1.012)
    D["ratios"].loc[(D["ratios"].batch_size == 32) & (D["ratios"].numerator == "merged-aa"), "ci_low"] = 0.995
    assert "±1.20% at batch size 1 and ±1.00% at batch size 32 from 1, against a target of ±2.0%: met." in \
        chapter.resolution_paragraph(D)
    cost = chapter.cost_paragraph(D)
    assert "under-predicts lora / merged (batch size 1):" in cost and "over-predicts merged / full (batch size 32):" in cost
    assert "1 ratio has no A/A control" in cost
    assert chapter._grouped([("a", 1), ("a", 1), ("a", 32), ("b", 1)]) == "a (batch sizes 1 and 32) and b (batch size 1)"
    claims = chapter.claims_paragraph(D)
    assert all(f"Claim {n} is not measured on this profile." in claims for n in (7, 8, 9))   # none at batch size 1
