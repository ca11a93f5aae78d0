"""LoRA for the decoder: low-rank adapters on the attention and MLP projections.

Only the adapters train; the base weights stay frozen. Checkpoints merge the adapters into the
base weights (W + B·A·scale), so what is saved is the released format and serves unchanged.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.base = base
        self.scale = (alpha or 2 * rank) / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # B = 0: starts as the base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        linear = copy.deepcopy(self.base)
        with torch.no_grad():
            linear.weight += (self.lora_b @ self.lora_a) * self.scale
        return linear


def add_lora(module: nn.Module, rank: int) -> int:
    """Wrap every target projection under `module`; returns how many were wrapped."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in TARGETS and isinstance(child, nn.Linear):
                child.requires_grad_(False)
                setattr(parent, name, LoRALinear(child, rank))
                count += 1
    return count


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" in k}


def merged_copy(model: nn.Module) -> nn.Module:
    """`model` itself when it has no adapters, else a copy with every adapter merged."""
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        return model
    merged = copy.deepcopy(model)
    for parent in list(merged.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    return merged
