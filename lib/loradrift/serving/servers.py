"""Encoders and servers: ``server(batch) -> logits`` (float32, on the host). Everything inside the
call is what gets timed: tokenise and pad, switch adapter if needed, forward, copy to the host."""
from __future__ import annotations

from typing import Callable

import torch

from .requests import Request


class TextEncoder:
    """Tokenise and right-pad a batch of texts (truncation at the profile's max_length), as in training."""

    def __init__(self, tokenizer, max_length: int, device: str = "cpu"):
        self.tok, self.max_length, self.device = tokenizer, int(max_length), device

    def __call__(self, batch: list[Request]) -> dict:
        enc = self.tok([r.text for r in batch], truncation=True, max_length=self.max_length,
                       padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def lengths(self, batch: list[Request]) -> list[int]:
        """Each request's token count after truncation (outside any timed region)."""
        ids = self.tok([r.text for r in batch], truncation=True, max_length=self.max_length)["input_ids"]
        return [len(x) for x in ids]


class IdsEncoder:
    """Right-pad a batch of token-id lists (architecture-only requests)."""

    def __init__(self, pad_id: int, max_length: int, device: str = "cpu"):
        self.pad_id, self.max_length, self.device = int(pad_id), int(max_length), device

    def __call__(self, batch: list[Request]) -> dict:
        seqs = [r.ids[:self.max_length] for r in batch]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def lengths(self, batch: list[Request]) -> list[int]:
        return [min(len(r.ids), self.max_length) for r in batch]


class Server:
    """One model: the forward pass of the encoded batch."""

    def __init__(self, model, encode: Callable):
        self.model, self.encode = model, encode
        self.switches = 0

    def __call__(self, batch: list[Request]) -> torch.Tensor:
        enc = self.encode(batch)
        with torch.inference_mode():
            logits = self._forward(batch, enc)
        return logits.float().cpu()

    def _forward(self, batch, enc):
        return self.model(**enc).logits


class SwitchServer(Server):
    """All adapters resident; ``set_adapter`` when the batch's task differs from the active one."""

    def __init__(self, model, encode, active: str | None = None):
        super().__init__(model, encode)
        self.active = active

    def _forward(self, batch, enc):
        task = homogeneous(batch)
        if task != self.active:
            self.model.set_adapter(task)
            self.active = task
            self.switches += 1
        return self.model(**enc).logits


class MixedServer(Server):
    """All adapters resident; one forward for a batch of requests for different adapters."""

    def _forward(self, batch, enc):
        return self.model(**enc, adapter_names=[r.adapter for r in batch]).logits


class RoutedServer(Server):
    """One model per task, all resident ({task: model}); a (task-homogeneous) batch goes to its task's model."""

    def _forward(self, batch, enc):
        return self.model[homogeneous(batch)](**enc).logits


def homogeneous(batch: list[Request]) -> str:
    """The one task of a batch (ValueError if it mixes tasks)."""
    tasks = {r.task for r in batch}
    if len(tasks) != 1:
        raise ValueError(f"this server needs task-homogeneous batches, got tasks {sorted(tasks)}")
    return tasks.pop()

