"""The decoder (`language_model.*`): a stock Qwen3 model, written out so we own the KV cache.

Parameter names, shapes and numerics are those of `transformers.Qwen3Model` (a test loads the
same weights into both and compares hidden states). Writing it here rather than calling
transformers lets DeepStack add to a layer's output directly, lets the generation engine keep
its own cache, and keeps the model independent of transformers' internal call conventions,
which change between minor releases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3Config

from .kv_cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """Default RoPE (the only kind Qwen3-4B/8B use): cos/sin for given positions."""

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        rope = dict(getattr(config, "rope_parameters", None) or {})
        rope_type = rope.get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(f"rope_type {rope_type!r} is not supported (only 'default')")
        self.theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        self.dim = config.head_dim
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        """(hd/2,) frequencies. Not saved in checkpoints: recomputed after loading."""
        return 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.float) / self.dim))

    def forward(
        self, position_ids: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Grouped-query attention with per-head RMSNorm on q and k (Qwen3), then RoPE."""

    def __init__(self, config: Qwen3Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        bias = config.attention_bias
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache: KVCache | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape  # x: (B, T, hidden); mask: (B, 1, T, S) True = attend
        q = self.q_norm(self.q_proj(x).view(b, t, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = (r.unsqueeze(1) for r in rope)  # (B, 1, T, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H_kv, S, hd)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )  # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported (only 'silu')")
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: Qwen3Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache: KVCache | None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_mask_4d(attention_mask: torch.Tensor, query_len: int) -> torch.Tensor:
    """(B, S) 1/0 key mask over cache + new tokens -> (B, 1, T, S) bool, causal.

    A padding query may attend to itself, so that no softmax row is empty (an empty row would
    give NaN, and NaN times a zero attention weight is still NaN in the next layer).
    """
    s = attention_mask.shape[1]
    device = attention_mask.device
    q_pos = torch.arange(s - query_len, s, device=device)[:, None]  # (T, 1) absolute positions
    k_pos = torch.arange(s, device=device)[None, :]  # (1, S)
    causal = k_pos <= q_pos  # (T, S)
    keys = attention_mask.bool()[:, None, :]  # (B, 1, S)
    mask = (causal[None] & keys) | (k_pos == q_pos)[None]  # (B, T, S)
    return mask[:, None]


def position_ids_from_mask(attention_mask: torch.Tensor, query_len: int) -> torch.Tensor:
    """Left padding aware positions: the first real token of each row is position 0."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.clamp(min=0)
    return positions[:, -query_len:]


class Qwen3Decoder(nn.Module):
    """Token embeddings, decoder layers and the final norm (the `Qwen3Model` of transformers)."""

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        if getattr(config, "use_sliding_window", False):
            raise ValueError(
                "sliding-window attention is not supported (Qwen3-4B/8B do not use it)"
            )
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        deepstack: list[torch.Tensor] | None = None,
        deepstack_mask: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """inputs_embeds: (B, T, hidden); attention_mask: (B, S) over cached + new tokens.

        `mask` (B, 1, T, S) bool, with `position_ids`, replaces the left-padding rule for rows
        that each keep their own length (the continuous-batching slots, model/slots.py).

        `deepstack[k]` (num_audio_tokens, hidden) is added at the positions where
        `deepstack_mask` (B, T) is True, to the output of decoder layer k.
        Returns the final hidden states (B, T, hidden), after the norm.
        """
        t = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, t)
        rope = self.rotary_emb(position_ids, inputs_embeds.dtype)
        if mask is None:
            mask = attention_mask_4d(attention_mask, t)
        h = inputs_embeds
        for index, layer in enumerate(self.layers):
            h = layer(h, rope, mask, cache)
            if deepstack is not None and index < len(deepstack):
                where = deepstack_mask[..., None].expand_as(h)  # (B, T, hidden)
                h = h + torch.zeros_like(h).masked_scatter(where, deepstack[index].to(h.dtype))
        if cache is not None:
            cache.advance(t)
        return self.norm(h)
