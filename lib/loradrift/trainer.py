"""What the study adds to transformers' Trainer: real/padded token counts and step time, the choice of
precision (bf16 autocast with fp32 master weights), the best evaluation's weights kept in memory and
written into resume checkpoints, and the sanity check's early stop. transformers is imported only
when a unit trains."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import LoraDriftError


def counting_trainer_class():
    """transformers' Trainer that also counts the real and padded tokens it trains on."""
    from transformers import Trainer

    class CountingTrainer(Trainer):
        tokens_real = 0
        tokens_padded = 0
        step_seconds = 0.0  # forward, backward and optimizer step only: no evaluation, no checkpointing

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(_StepTimer(self))

        def _save_checkpoint(self, model, trial):
            best = getattr(self, "best", None)  # the BestWeights callback, when the unit keeps best weights
            if best is not None:
                best.save_into(Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}")
            return super()._save_checkpoint(model, trial)

        def training_step(self, model, inputs, *args, **kw):
            m = inputs.get("attention_mask")
            if m is not None:
                self.tokens_real += int(m.sum())
                self.tokens_padded += int(m.numel())
            return super().training_step(model, inputs, *args, **kw)
    return CountingTrainer


def _StepTimer(trainer):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            trainer.step_seconds += time.perf_counter() - self.t
    return StepTimer()


def cpu_supports_bf16() -> bool:
    """Does this CPU have native bf16 matrix instructions (AVX512-BF16 or AMX), which oneDNN uses?"""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def precision(cfg: dict) -> str:
    """How a unit computes: ``bf16-autocast`` (bf16 matrix products, fp32 master weights and optimizer
    states) or ``fp32``. ``training.precision`` chooses (bf16, fp32 or auto: bf16 where the device
    has it); without it, CUDA uses bf16 autocast and a CPU fp32 (the committed cpu study)."""
    want = cfg["training"].get("precision")
    cuda = torch.cuda.is_available()
    if want is None:
        return "bf16-autocast" if cuda else "fp32"
    if want not in ("bf16", "fp32", "auto"):
        raise LoraDriftError(f"training.precision {want!r}: use bf16, fp32 or auto")
    native = cuda or cpu_supports_bf16()
    if want == "bf16" and not native:
        raise LoraDriftError("training.precision is bf16 but this CPU has no native bf16 (AVX512-BF16/AMX): "
                             "set it to auto or fp32 in the profile")
    return "bf16-autocast" if want == "bf16" or (want == "auto" and native) else "fp32"


class _BestWeights:
    """Keeps the trainable weights of the best evaluation in memory (no checkpoint per evaluation),
    writes them into each resume checkpoint, and puts them back into the model at the end."""
    FILE = "best_weights.safetensors"

    def __init__(self, model, metric: str, greater_is_better: bool = True):
        self.model, self.metric, self.greater = model, f"eval_{metric}", greater_is_better
        self.weights, self.best, self.step, self.dirty = None, None, None, False

    def _better(self, value: float) -> bool:
        return self.best is None or (value > self.best if self.greater else value < self.best)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        value = (metrics or {}).get(self.metric)
        if value is not None and self._better(value):
            self.best, self.step, self.dirty = float(value), state.global_step, True
            self.weights = {n: p.detach().to("cpu", copy=True).contiguous()
                            for n, p in self.model.named_parameters() if p.requires_grad}

    def save_into(self, folder: Path) -> None:
        """Write the best weights into a resume checkpoint's folder (before the Trainer writes the rest)."""
        from safetensors.torch import save_file
        if self.weights is not None:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(self.weights, str(folder / self.FILE), metadata={"best": repr(self.best), "step": str(self.step)})

    def resume(self, checkpoint: str | None) -> None:
        """Take the best weights recorded in the checkpoint a run resumes from."""
        from safetensors import safe_open
        path = Path(checkpoint or "") / self.FILE
        if checkpoint and path.exists():
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
                self.weights = {k: f.get_tensor(k) for k in f.keys()}
            self.best, self.step = float(meta["best"]), int(meta["step"])

    def restore(self) -> None:
        """Load the best weights into the model (nothing to do when no evaluation ran)."""
        if self.weights is not None:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for n, w in self.weights.items():
                    params[n].copy_(w)


def best_weights(model, metric: str, greater_is_better: bool = True) -> "_BestWeights":
    """A Trainer callback (transformers is imported only when a unit trains) keeping the best weights."""
    from transformers import TrainerCallback
    cls = type("BestWeights", (_BestWeights, TrainerCallback), {})
    return cls(model, metric, greater_is_better)


def _stop_when_fit(threshold: float, window: int = 3):
    """A callback that ends the sanity check once the last ``window`` losses are all below ``threshold``:
    the check has passed, and the remaining steps would only confirm it."""
    from transformers import TrainerCallback

    class StopWhenFit(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            losses = [r["loss"] for r in state.log_history if "loss" in r]
            if len(losses) >= window and max(losses[-window:]) < threshold:
                control.should_training_stop = True
    return StopWhenFit()
