"""A batched LoRA path (Punica / S-LoRA style): every adapter's A and B stacked once, and for each batch
each request's own A and B gathered and applied in one batched matmul per LoRA module, whatever mix
of adapters the batch carries. peft's mixed-batch path (``adapter_names=``) instead loops over the
adapters present, indexing a sub-batch for each.

``batched_model(peft_model)`` turns a peft model holding several LoRA adapters (and their
``modules_to_save`` score heads) into a plain module tree: each LoRA-wrapped linear layer becomes a
``BatchedLoraLinear`` (its base layer plus the stacked adapters), the score head a ``BatchedHead``.
Adapters of different ranks are zero-padded to the largest (the product is unchanged). Which adapter
each request uses is set per batch on the shared ``AdapterIndex`` (``BatchedServer`` does this).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import LoraDriftError
from .servers import Server


class AdapterIndex:
    """The adapter index of each request of the current batch, shared by every batched module."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.position = {n: i for i, n in enumerate(self.names)}
        self.idx: torch.Tensor | None = None

    def set(self, adapters: list[str], device) -> None:
        try:
            self.idx = torch.tensor([self.position[a] for a in adapters], device=device)
        except KeyError as e:
            raise LoraDriftError(f"no adapter {e.args[0]!r} in the batched model; have {self.names}") from None


class BatchedLoraLinear(nn.Module):
    """base(x) + scale_i * (x_i A_i^T) B_i^T for each request i, in two ``torch.bmm`` calls."""

    def __init__(self, base: nn.Module, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor, index: AdapterIndex):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(A, requires_grad=False)          # (adapters, r, in)
        self.B = nn.Parameter(B.transpose(1, 2).contiguous(), requires_grad=False)  # (adapters, r, out)
        self.register_buffer("scale", scale.to(A.dtype))       # (adapters,)
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.index.idx
        h = torch.bmm(x.to(self.A.dtype), self.A[idx].transpose(1, 2))       # (b, L, r)
        delta = torch.bmm(h, self.B[idx]) * self.scale[idx].view(-1, 1, 1)   # (b, L, out)
        return self.base(x) + delta.to(x.dtype)


class BatchedHead(nn.Module):
    """Each request's own score head: logits_i = h_i W_i^T (+ b_i), as one ``torch.bmm``."""

    def __init__(self, W: torch.Tensor, bias: torch.Tensor | None, index: AdapterIndex):
        super().__init__()
        self.W = nn.Parameter(W.transpose(1, 2).contiguous(), requires_grad=False)  # (adapters, hidden, labels)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.index = index

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        idx = self.index.idx
        out = torch.bmm(h.to(self.W.dtype), self.W[idx])
        return out if self.bias is None else out + self.bias[idx].unsqueeze(1)


def _pad_rank(ws: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Stack LoRA matrices of possibly different ranks, zero-padded along the rank dimension."""
    r = max(w.shape[dim] for w in ws)
    out = []
    for w in ws:
        pad = [0, 0] * (w.dim() - 1 - dim) + [0, r - w.shape[dim]]
        out.append(nn.functional.pad(w, pad))
    return torch.stack(out)


def _lora_linear(module, names: list[str], index: AdapterIndex) -> BatchedLoraLinear:
    for n in names:
        if module.use_dora.get(n) or module.lora_bias.get(n) or n in getattr(module, "lora_variant", {}):
            raise LoraDriftError(f"adapter {n!r} is not plain LoRA (DoRA, a LoRA bias or another variant): "
                                 "the batched path serves plain LoRA only; serve it with peft (`mixed`)")
    if getattr(module, "fan_in_fan_out", False) or not isinstance(module.base_layer, nn.Linear):
        raise LoraDriftError(f"the batched path needs LoRA on nn.Linear layers, not {type(module.base_layer).__name__}")
    A = _pad_rank([module.lora_A[n].weight.detach() for n in names], 0)          # (adapters, r, in)
    B = _pad_rank([module.lora_B[n].weight.detach() for n in names], 1)          # (adapters, out, r)
    scale = torch.tensor([float(module.scaling[n]) for n in names])
    return BatchedLoraLinear(module.base_layer, A, B, scale, index)


def _head(module, names: list[str], index: AdapterIndex) -> BatchedHead:
    heads = [module.modules_to_save[n] for n in names]
    if not all(isinstance(h, nn.Linear) for h in heads):
        raise LoraDriftError("the batched path needs linear score heads in modules_to_save")
    W = torch.stack([h.weight.detach() for h in heads])
    bias = torch.stack([h.bias.detach() for h in heads]) if heads[0].bias is not None else None
    return BatchedHead(W, bias, index)


def batched_model(peft_model) -> tuple[nn.Module, AdapterIndex]:
    """The peft model's base model with every LoRA layer and the score head replaced by their batched
    forms over all its adapters (in the model's order). The peft model is consumed (its layers move)."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper
    names = list(peft_model.peft_config)
    index = AdapterIndex(names)
    model = peft_model.base_model.model
    swaps = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            swaps.append((name, _lora_linear(module, names, index)))
        elif isinstance(module, ModulesToSaveWrapper):
            swaps.append((name, _head(module, names, index)))
    if not any(isinstance(m, BatchedLoraLinear) for _, m in swaps):
        raise LoraDriftError("the model holds no LoRA layers: nothing to batch")
    for name, new in swaps:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model.eval(), index


class BatchedServer(Server):
    """Mixed-adapter batches through the batched LoRA path (``model`` is ``(module, AdapterIndex)``)."""

    def __init__(self, model, encode):
        super().__init__(model[0], encode)
        self.index = model[1]

    def _forward(self, batch, enc):
        self.index.set([r.adapter for r in batch], enc["input_ids"].device)
        return self.model(**enc).logits
