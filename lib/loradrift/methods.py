"""Method kinds: how a base classifier is adapted for training, saved and loaded again.

A profile's ``methods:`` names the methods of its study; each has a ``kind`` registered here
(peft-style) and its settings (learning rate, LoRA rank, ...). Two kinds exist: ``full`` (every
weight trains; the whole model is saved) and ``lora`` (a peft LoRA adapter on the frozen base, the
classification head trainable; only the adapter is saved).
"""
from __future__ import annotations

from pathlib import Path

from . import LoraDriftError
from .registry import Registry


class MethodKind:
    name: str = ""
    required: tuple[str, ...] = ()     # settings a method of this kind must have
    adapter: bool = False              # saved as an adapter on the base (servable unmerged and merged)

    def prepare(self, model, settings: dict):
        """The base classifier made ready to train with this method."""
        return model

    def load(self, prof: dict, model_dir: Path, merge: bool = False):
        raise NotImplementedError


class FullFineTuning(MethodKind):
    name = "full"

    def load(self, prof, model_dir, merge=False):
        from .models import load_classifier, load_tokenizer
        tok = load_tokenizer(str(model_dir))
        return load_classifier(str(model_dir), prof["model"].get("dtype", "float32"), tok.pad_token_id), tok


class LoRA(MethodKind):
    name = "lora"
    required = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")
    adapter = True

    @staticmethod
    def peft_config(settings: dict):
        from peft import LoraConfig, TaskType
        return LoraConfig(r=int(settings["lora_r"]), lora_alpha=settings["lora_alpha"],
                          lora_dropout=float(settings["lora_dropout"]),
                          target_modules=list(settings["target_modules"]), bias="none",
                          task_type=TaskType.SEQ_CLS)  # SEQ_CLS: the score head is trained and saved

    def prepare(self, model, settings):
        from peft import get_peft_model
        model = get_peft_model(model, self.peft_config(settings))
        if settings.get("gradient_checkpointing"):
            model.enable_input_require_grads()
        return model

    def load(self, prof, model_dir, merge=False):
        from peft import PeftModel

        from .models import base_model_path, load_classifier, load_tokenizer
        base = base_model_path(prof)
        tok = load_tokenizer(base)
        model = load_classifier(base, prof["model"].get("dtype", "float32"), tok.pad_token_id)
        try:
            model = PeftModel.from_pretrained(model, str(model_dir))
        except Exception as e:
            raise LoraDriftError(f"could not load the adapter at {model_dir} ({type(e).__name__}: {e}); "
                                 "it may be corrupt: delete the folder and its result JSON, then re-train") from e
        return (model.merge_and_unload() if merge else model), tok


KINDS: Registry = Registry("method kind", "loradrift/methods.py")
register_kind = KINDS.register


register_kind(FullFineTuning())
register_kind(LoRA())


def kind_of(prof: dict, method: str) -> MethodKind:
    """The registered kind of one of the profile's methods."""
    return KINDS.lookup(method_settings(prof, method)["kind"])


def method_settings(prof: dict, method: str) -> dict:
    """A method's resolved settings (its ``extends`` chain applied), ``kind`` included."""
    try:
        return prof["methods"][method]
    except KeyError:
        raise LoraDriftError(f"unknown method {method!r} for profile {prof.get('name')!r}: "
                             f"choose one of {list(prof.get('methods') or {})}") from None


def methods_of_kind(prof: dict, kind: str) -> list[str]:
    return [m for m in prof["methods"] if prof["methods"][m]["kind"] == kind]
