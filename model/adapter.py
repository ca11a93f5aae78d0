"""The adapter and the DeepStack mergers: bias-free gated MLPs from encoder to decoder width.

`audio_adapter` maps the encoder's final features to the embeddings that replace `<|AUDIO|>`
tokens; merger k (`deepstack_audio_merger_list.k`) maps encoder tap k to the residual that is
added at the audio positions of decoder layer k's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(input_size, hidden_size, bias=False)
        self.up_proj = nn.Linear(input_size, hidden_size, bias=False)
        self.down_proj = nn.Linear(hidden_size, output_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
