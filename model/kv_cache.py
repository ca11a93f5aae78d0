"""A preallocated key/value cache: one (B, H_kv, capacity, head_dim) buffer per layer.

Preallocation makes a decode step an in-place write plus a view, with no concatenation and no
reallocation as the sequence grows; the generation loop knows its final length up front.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch_size, num_kv_heads, capacity, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.capacity = capacity
        self.length = 0  # tokens already committed (same for every row; rows are left-padded)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new (B, H_kv, T, hd) keys/values after the committed ones; return all."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} tokens > capacity {self.capacity}")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, num_tokens: int) -> None:
        """Commit the tokens written by the forward pass that just finished."""
        self.length += num_tokens

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (drop finished sequences from the batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
