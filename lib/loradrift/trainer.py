"""What the study adds to transformers' Trainer: real/padded token counts, step time and the training loss
kept in the Trainer's state (so a resumed unit's numbers cover the whole unit), the choice of precision
(bf16 autocast with fp32 master weights), the best evaluation's weights kept in memory and written into
resume checkpoints, the check of a checkpoint before resuming from it, and the sanity check's early
stop. transformers is imported only when a unit trains."""
from __future__ import annotations

import base64
import time
from pathlib import Path

import torch

from . import LoraDriftError


def counting_trainer_class():
    """transformers' Trainer that also counts what a unit records (tokens, step time, loss, time in training),
    in the Trainer's state so that the counts of a resumed unit cover the whole unit: real tokens are the
    Trainer's own ``num_input_tokens_seen`` (``include_num_input_tokens_seen="non_padding"``), the rest a
    stateful callback (``UnitCounters``) saved in every checkpoint and restored on resume
    (``restore_callback_states_from_checkpoint``)."""
    from transformers import Trainer

    class CountingTrainer(Trainer):
        def __init__(self, *a, started_at: float | None = None, **kw):
            super().__init__(*a, **kw)
            self.add_callback(unit_counters(started_at))

        @property
        def counters(self):
            """The counters callback (on resume the Trainer replaces it with the one restored from the checkpoint)."""
            return next(cb for cb in self.callback_handler.callbacks if type(cb).__name__ == "UnitCounters")

        @property
        def tokens_real(self) -> int:
            return int(self.state.num_input_tokens_seen)

        @property
        def tokens_padded(self) -> int:
            return self.counters.tokens_padded

        @property
        def step_seconds(self) -> float:  # forward, backward and optimizer step only: no evaluation, no checkpointing
            return self.counters.step_seconds

        @property
        def train_loss(self) -> float:
            """The mean training loss over every optimisation step of the unit (the Trainer's ``training_loss``
            covers only the steps of the last ``train()`` call)."""
            return self.counters.loss_sum / max(self.state.global_step, 1)

        def _save_checkpoint(self, model, trial):
            if self.control.should_training_stop:
                # training ends at this step: a checkpoint would resume nothing (and a resumed Trainer forgets the
                # stop and trains on); an interrupted unit replays from its previous checkpoint instead
                return None
            if 0 < self.state.max_steps - self.state.global_step < int(self.args.eval_steps or 0):
                # less than one evaluation interval is left: skip writing model and optimizer (three copies of the
                # weights for full fine-tuning); a crash here replays from the previous resume checkpoint
                return None
            best = getattr(self, "best", None)  # the BestWeights callback, when the unit keeps best weights
            if best is not None:
                best.save_into(Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}")
            return super()._save_checkpoint(model, trial)

        def _load_rng_state(self, checkpoint):
            super()._load_rng_state(checkpoint)
            self.counters.rng_restored()

        def training_step(self, model, inputs, *args, **kw):
            loss = super().training_step(model, inputs, *args, **kw)
            c = self.counters
            m = inputs.get("attention_mask")
            if m is not None:
                c.tokens_padded += int(m.numel())
            c.loss_sum += float(loss)
            return loss
    return CountingTrainer


def unit_counters(started_at: float | None = None):
    """A Trainer callback whose counts are part of the Trainer's state (``ExportableState``): padded tokens, the
    sum of the training losses, seconds in optimisation steps, seconds in ``train()`` and the unit's wall seconds
    up to the latest checkpoint, from ``started_at`` (``time.time()`` when this process began the unit: loading
    and tokenising count) plus what the checkpoint resumed from had recorded (``carried_wall``). A resumed
    unit's wall time is this process's plus ``carried_wall``: work after the last checkpoint, lost in the
    interruption, is not counted; its replay is."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class UnitCounters(TrainerCallback, ExportableState):
        FIELDS = ("tokens_padded", "loss_sum", "step_seconds", "train_seconds", "wall_seconds", "epoch_rng")
        STARTED = started_at  # a class attribute: the instance the Trainer restores from a checkpoint keeps it

        def __init__(self):
            self.tokens_padded, self.loss_sum, self.step_seconds, self.train_seconds = 0, 0.0, 0.0, 0.0
            self.wall_seconds = self.carried_wall = 0.0
            self.epoch_rng = None  # torch's RNG state as the current epoch began (base64)
            self._begun = self._step = self._resumed = None
            self._pending = False

        def state(self) -> dict:
            if self._begun is not None:  # a checkpoint records the time spent so far
                now = time.perf_counter()
                self.train_seconds, self._begun = self.train_seconds + now - self._begun, now
                if self.STARTED is not None:
                    self.wall_seconds = self.carried_wall + time.time() - self.STARTED
            return {"args": {}, "attributes": {k: getattr(self, k) for k in self.FIELDS}}

        def on_train_begin(self, args, state, control, **kw):
            # the Trainer restores a checkpoint's counters before this call: what they recorded is carried
            self.carried_wall = float(self.wall_seconds)
            self._begun = time.perf_counter()
            self._resumed = state.global_step > 0

        def on_epoch_begin(self, args, state, control, **kw):
            # The epoch's shuffle (the length-grouped sampler's randperm, the loader's base seed) draws from torch's
            # global RNG when the epoch starts iterating, after this call. Resumed mid-epoch, the Trainer restores
            # the checkpoint's RNG only after skipping the trained batches, so the skip would draw a new order from
            # the fresh process's RNG: put back the state recorded as this epoch began. Resumed at an epoch's end,
            # the Trainer restores the checkpoint's RNG before the shuffle: record that one (rng_restored).
            resumed, self._resumed = self._resumed, False
            if not resumed:
                self.epoch_rng = _rng_text()
            elif float(state.epoch) != int(state.epoch):
                if self.epoch_rng is not None:  # None: a checkpoint from before loradrift recorded it
                    torch.set_rng_state(_rng_state(self.epoch_rng))
            else:
                self._pending = True

        def rng_restored(self):
            """The Trainer has just put back a checkpoint's RNG (``CountingTrainer._load_rng_state``)."""
            if self._pending:
                self.epoch_rng, self._pending = _rng_text(), False

        def on_train_end(self, args, state, control, **kw):
            self.state()

        def on_step_begin(self, args, state, control, **kw):
            self._step = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.step_seconds += time.perf_counter() - self._step
    return UnitCounters()


def _rng_text() -> str:
    """torch's global RNG state as text (a Trainer state is JSON)."""
    return base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")


def _rng_state(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def checkpoint_problem(folder: Path) -> str | None:
    """What makes a resume checkpoint unusable (a file cut short or corrupt, the Trainer's state missing), or None.
    Reads every file's structure without loading the model: safetensors headers (which must cover the file),
    the CRCs of torch's zip archives, the state's JSON."""
    import json
    import zipfile

    from safetensors import safe_open
    folder = Path(folder)
    if not (folder / "trainer_state.json").exists():
        return "trainer_state.json is missing (the checkpoint was not finished)"
    for f in sorted(folder.iterdir()):
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), "pt"):
                    pass
            elif f.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(f) as z:
                    bad = z.testzip()
                if bad:
                    return f"{f.name}: {bad} fails its CRC check"
            elif f.suffix == ".json":
                json.loads(f.read_text(encoding="utf-8"))
        except Exception as e:  # SafetensorError, BadZipFile, JSONDecodeError, OSError ...
            return f"{f.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    if checkpoint_counters(folder) is None:
        return "its Trainer state has no unit counters (an older loradrift wrote it): a resumed unit would miscount"
    return None


def checkpoint_counters(folder: Path) -> dict | None:
    """The unit counters a resume checkpoint's Trainer state recorded (``UnitCounters``' attributes), or None
    when it recorded none (an older loradrift wrote it)."""
    import json
    state = json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8"))
    counters = (state.get("stateful_callbacks") or {}).get("UnitCounters")
    return None if counters is None else (counters.get("attributes") or {})


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


def _no_eval_at_end():
    """A callback that cancels the Trainer's extra evaluation when training ends between two scheduled ones
    (``training.eval_at_end: false``): it scores weights a few steps past the last scheduled evaluation,
    costs a whole pass over the validation slice, and can change which weights a unit keeps."""
    from transformers import TrainerCallback

    class NoEvalAtEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= state.max_steps and state.eval_steps and state.global_step % state.eval_steps:
                control.should_evaluate = False
    return NoEvalAtEnd()


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
