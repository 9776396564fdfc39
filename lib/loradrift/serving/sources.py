"""Where the served models come from: a *model source* loads what a mode's ``load`` names (base, full,
adapter, merged, resident, routed, routed_adapters, batched), sets each request's token count and gives
the cost model its shapes. ``TrainedSource`` loads a profile's trained units (adapters are
checked before they are served); ``arch.RandomSource`` builds random models of a named architecture.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from .. import LoraDriftError

_REFIT = "delete the folder and its result JSON (data/<profile>/runs/<id>.json), then re-train the unit"


def check_adapter(path: Path) -> Path:
    """Check a saved LoRA adapter before serving it: readable config and weights, LoRA A/B tensors, and
    the trained ``score`` head (modules_to_save). Raises LoraDriftError saying what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise LoraDriftError(f"no adapter at {path}: train the LoRA unit first (`python -m loradrift train ...`)")
    cfg_file, w_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not cfg_file.exists() or not w_file.exists():
        raise LoraDriftError(f"adapter {path} is incomplete (needs adapter_config.json and "
                             f"adapter_model.safetensors): {_REFIT}")
    try:
        json.loads(cfg_file.read_text())
    except ValueError as e:
        raise LoraDriftError(f"adapter {path}: adapter_config.json is not valid JSON ({e}): {_REFIT}") from e
    try:
        from safetensors import safe_open
        with safe_open(str(w_file), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # truncated or overwritten file
        raise LoraDriftError(f"adapter {path}: cannot read adapter_model.safetensors "
                             f"({type(e).__name__}: {e}); it is corrupt: {_REFIT}") from e
    if not any("lora_A" in k for k in keys) or not any("lora_B" in k for k in keys):
        raise LoraDriftError(f"adapter {path} holds no LoRA A/B weights: {_REFIT}")
    if not any(".score." in k or k.endswith("score.weight") for k in keys):
        raise LoraDriftError(f"adapter {path} holds no trained `score` head (modules_to_save); serving it "
                             f"would use an untrained head: {_REFIT}")
    return path


def _wrap_load(path, fn):
    try:
        return fn()
    except LoraDriftError:
        raise
    except Exception as e:
        raise LoraDriftError(f"could not load the adapter at {path} ({type(e).__name__}: {e}); it may be "
                             "corrupt or made for another base model: delete the folder and its result "
                             "JSON, then re-train") from e


def load_multi_adapter(base_model, adapters: dict[str, Path]):
    """One PeftModel holding every task's adapter (named by task), the first one active."""
    from peft import PeftModel
    names = list(adapters)
    for p in adapters.values():
        check_adapter(p)
    first = names[0]
    model = _wrap_load(adapters[first], lambda: PeftModel.from_pretrained(base_model, str(adapters[first]),
                                                                          adapter_name=first))
    for t in names[1:]:
        _wrap_load(adapters[t], lambda t=t: model.load_adapter(str(adapters[t]), adapter_name=t))
    model.set_adapter(first)
    return model.eval()


class ModelSource:
    """What the modes load. Each method returns ``(model, extra)``: the model (or ``{task: model}``),
    in eval mode on the device, and what its loading records beside the memory row."""

    encode: Callable

    def base(self, task: str):
        raise NotImplementedError

    def full(self, task: str):
        raise NotImplementedError

    def adapter(self, task: str):
        """The task's adapter alone on the base, unmerged."""
        raise NotImplementedError

    def resident(self, tasks: list[str]):
        """One base with every task's adapter resident, the first one active."""
        raise NotImplementedError

    def merged(self, task: str):
        """The task's adapter merged into the weights (the merge is timed)."""
        model, extra = self.adapter(task)
        t0 = time.perf_counter()
        model = model.merge_and_unload().eval()
        return model, {**extra, "merge_s": time.perf_counter() - t0}

    def routed(self, tasks: list[str]):
        """One merged model per task, all resident."""
        return {t: self.merged(t)[0] for t in tasks}, {"models_resident": len(tasks)}

    def routed_adapters(self, tasks: list[str]):
        """One unmerged single-adapter model per task, all resident."""
        return {t: self.adapter(t)[0] for t in tasks}, {"models_resident": len(tasks)}

    def batched(self, tasks: list[str]):
        """Every task's adapter stacked for the batched LoRA path (``batched.batched_model``)."""
        from .batched import batched_model
        model, extra = self.resident(tasks)
        return batched_model(model), extra

    def shape(self) -> dict:
        """The dimensions the cost model needs (``costmodel.llama_shape``)."""
        raise NotImplementedError

    def requests(self, reqs: list) -> list:
        """The requests with their token counts set (what the schedulers bucket by)."""
        for r, n in zip(reqs, self.encode.lengths(reqs)):
            r.length = int(n)
        return reqs


class TrainedSource(ModelSource):
    """The trained units of a profile: ``dirs`` {task: {kind: model folder}}, ``methods`` {kind: method}."""

    def __init__(self, prof: dict, dirs: dict, methods: dict, device: str, max_length: int):
        from ..models import base_model_path, load_tokenizer
        from .servers import TextEncoder
        self.prof, self.dirs, self.methods, self.device = prof, dirs, methods, device
        self.base_path = base_model_path(prof)
        self.tok = load_tokenizer(self.base_path)
        self.encode = TextEncoder(self.tok, max_length, device)

    def _ready(self, model, extra=None):
        return model.to(self.device).eval(), extra or {}

    def _base_classifier(self):
        from ..models import load_classifier
        torch.manual_seed(0)  # the untrained score head of `base` / of the resident multi-adapter model
        return load_classifier(self.base_path, self.prof["model"].get("dtype", "float32"), self.tok.pad_token_id)

    def _unit(self, task: str, kind: str):
        from ..models import load_finetuned
        if kind == "lora":
            check_adapter(self.dirs[task][kind])
        return load_finetuned(self.prof, self.dirs[task][kind], self.methods[kind])[0]

    def base(self, task):
        return self._ready(self._base_classifier())

    def full(self, task):
        return self._ready(self._unit(task, "full"))

    def adapter(self, task):
        return self._ready(self._unit(task, "lora"))

    def shape(self):
        if getattr(self, "_shape", None) is None:
            from transformers import AutoConfig

            from .costmodel import llama_shape
            lora = next((d["lora"] for d in self.dirs.values() if "lora" in d), None)
            adapter = json.loads((Path(lora) / "adapter_config.json").read_text()) if lora else {}
            dtype = self.prof["model"].get("dtype", "float32")
            lora = {"r": adapter.get("r", 0), "targets": sorted(adapter.get("target_modules") or [])}
            self._shape = llama_shape(AutoConfig.from_pretrained(self.base_path), lora,
                                      dtype_bytes=4 if dtype in ("float32", "fp32") else 2)
        return self._shape

    def resident(self, tasks):
        model = load_multi_adapter(self._base_classifier(), {t: self.dirs[t]["lora"] for t in tasks})
        return self._ready(model, {"adapters_resident": len(tasks)})
