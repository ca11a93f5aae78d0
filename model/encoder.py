"""The audio encoder (`audio_encoder.*`): conv stem, sinusoidal positions, Whisper layers.

mel (N, 128, T) at 100 frames/s
  -> windows of 2 * n_window frames (400: 4 s), independent of each other
  -> three Conv2d(k3, s2, p1) + GELU over (mel, time): (W, C, 16, frames/8)
  -> flatten channels x 16 mel rows, stem_proj: (W, frames/8, d_model) at 12.5 tokens/s
  -> + sinusoidal positions (restarting at 0 in every window)
  -> Whisper encoder layers, attention within a window (taps after the DeepStack layers)
  -> layer_norm -> out_proj (only when output_dim != d_model)
  -> the valid tokens of every window, in order: L(T) tokens per clip

The windows are the official algorithm (shared/MODEL.md, "Windows"): a clip's last window holds
the remainder, and when a clip has several windows the tail is zero-padded to the full window
and goes through the conv stem unmasked, as the official code pads its window batch. A config
with `n_window: null` (the explicit opt-out) encodes every clip as one window.

The windows of all the clips of a call are encoded together, in groups of `conv_chunksize`
(a config field the official code also reads; 64) so that memory stays bounded for an hour of
audio. Batching never changes a clip's result: each row equals the clip encoded alone, because
conv outputs past each window's stem length are zeroed and attention ignores padded keys.
Outputs are packed: the valid tokens of clip 0, then clip 1, ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MossAudioEncoderConfig


def conv_out_length(n: torch.Tensor | int) -> torch.Tensor | int:
    """Length after one Conv(kernel 3, stride 2, padding 1): ceil(n / 2)."""
    return (n - 1) // 2 + 1


def num_audio_tokens(mel_frames: torch.Tensor | int) -> torch.Tensor | int:
    """L(T) = c(c(c(T))): audio tokens for T mel frames (12.5 per second)."""
    return conv_out_length(conv_out_length(conv_out_length(mel_frames)))


def sinusoids(length: int, channels: int, device: torch.device | None = None) -> torch.Tensor:
    """Whisper positions: (length, channels), sin half then cos half."""
    log_timescale_increment = math.log(10000.0) / (channels // 2 - 1)
    inv_timescales = torch.exp(
        -log_timescale_increment * torch.arange(channels // 2, device=device).float()
    )
    scaled_time = torch.arange(length, device=device).float()[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class EncoderAttention(nn.Module):
    """Whisper self-attention: biased q/v/out projections, bias-free k_proj."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape  # x: (B, T, D); key_mask: (B, T) True where the token is real

        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q_proj),
            heads(self.k_proj),
            heads(self.v_proj),
            attn_mask=key_mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, hd)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm Whisper encoder layer."""

    def __init__(self, config: MossAudioEncoderConfig) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = EncoderAttention(
            d, config.encoder_attention_heads, config.attention_dropout
        )
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(d, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = config.dropout
        self.activation_dropout = config.activation_dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h = self.self_attn(self.self_attn_layer_norm(x), key_mask)
        x = x + F.dropout(h, self.dropout, self.training)
        h = F.dropout(
            F.gelu(self.fc1(self.final_layer_norm(x))), self.activation_dropout, self.training
        )
        x = x + F.dropout(self.fc2(h), self.dropout, self.training)
        if x.dtype == torch.float16:  # as Whisper: keep fp16 activations finite
            limit = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-limit, limit)
        return x


@dataclass
class EncoderOutput:
    """Packed encoder outputs: the valid tokens of every clip, clip after clip."""

    features: torch.Tensor  # (total_tokens, output_dim): after layer_norm (and out_proj)
    taps: list[torch.Tensor]  # DeepStack taps, each (total_tokens, output_dim), before layer_norm
    token_lengths: torch.Tensor  # (N,) tokens per clip


@dataclass
class _Windows:
    mel: torch.Tensor  # (W, n_mels, frames) zero-padded windows
    stem_frames: torch.Tensor  # (W,) frames the conv stem treats as data (incl. tail padding)
    tokens: torch.Tensor  # (W,) valid tokens per window
    clip: torch.Tensor  # (W,) index of the clip each window belongs to


class MossAudioEncoder(nn.Module):
    def __init__(self, config: MossAudioEncoderConfig) -> None:
        super().__init__()
        if config.num_mel_bins != 128:
            raise ValueError("the conv stem is defined for 128 mel bins (128 -> 16 rows)")
        if config.window_frames is not None and config.window_frames % 8:
            # Otherwise a clip's token count would depend on where its windows fall.
            raise ValueError(f"2 * n_window must be a multiple of 8, got {config.window_frames}")
        self.config = config
        c = config.downsample_hidden_size
        self.conv1 = nn.Conv2d(1, c, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c, c, kernel_size=3, stride=2, padding=1)
        self.stem_proj = nn.Linear(c * 16, config.d_model)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        if config.output_dim != config.d_model:
            self.out_proj = nn.Linear(config.d_model, config.output_dim, bias=False)
        else:
            self.out_proj = None
        self.tap_layers = list(config.deepstack_encoder_layer_indexes or [])

    def _split_windows(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> _Windows:
        size = self.config.window_frames
        pieces: list[torch.Tensor] = []
        stem: list[int] = []
        owner: list[int] = []
        for index, (clip, total) in enumerate(zip(mel, mel_lengths.tolist(), strict=True)):
            step = size or total
            starts = range(0, total, step)
            for start in starts:
                length = min(step, total - start)
                pieces.append(clip[:, start : start + length])
                stem.append(step if len(starts) > 1 else length)
                owner.append(index)
        frames = max(stem)
        batch = mel.new_zeros(len(pieces), mel.shape[1], frames)
        for i, piece in enumerate(pieces):
            batch[i, :, : piece.shape[1]] = piece
        lengths = torch.tensor([p.shape[1] for p in pieces], device=mel.device)
        return _Windows(
            mel=batch,
            stem_frames=torch.tensor(stem, device=mel.device),
            tokens=num_audio_tokens(lengths),
            clip=torch.tensor(owner, device=mel.device),
        )

    def _stem(self, mel: torch.Tensor, stem_frames: torch.Tensor) -> torch.Tensor:
        """(W, n_mels, T) -> (W, ceil(T/8), d_model); outputs past each stem length are zero."""
        x = mel.unsqueeze(1)  # (W, 1, n_mels, T)
        lengths = stem_frames
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.gelu(conv(x))  # (W, C, F/2, T/2)
            lengths = conv_out_length(lengths)
            keep = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
            x = x * keep[:, None, None, :].to(x.dtype)
        x = x.permute(0, 3, 1, 2).flatten(2)  # (W, T/8, C * 16)
        return self.stem_proj(x)

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None) -> EncoderOutput:
        """mel: (N, n_mels, T) zero-padded; mel_lengths: (N,) valid frames per clip."""
        if mel.ndim == 2:
            mel = mel.unsqueeze(0)
        if mel_lengths is None:
            mel_lengths = torch.full((mel.shape[0],), mel.shape[-1], dtype=torch.long)
        mel_lengths = mel_lengths.to(device=mel.device, dtype=torch.long)
        if bool((mel_lengths <= 0).any()) or bool((mel_lengths > mel.shape[-1]).any()):
            raise ValueError(f"mel_lengths {mel_lengths.tolist()} out of range 1..{mel.shape[-1]}")
        windows = self._split_windows(mel.to(self.conv1.weight.dtype), mel_lengths)

        group = max(1, int(self.config.conv_chunksize))
        features: list[torch.Tensor] = []
        taps: list[list[torch.Tensor]] = []
        for start in range(0, windows.mel.shape[0], group):
            part = slice(start, start + group)
            x, x_taps = self._encode_windows(
                windows.mel[part], windows.stem_frames[part], windows.tokens[part]
            )
            features.append(x)
            taps.append(x_taps)
        return EncoderOutput(
            features=torch.cat(features),
            taps=[torch.cat(per_tap) for per_tap in zip(*taps, strict=True)],
            token_lengths=torch.zeros_like(mel_lengths).index_add_(0, windows.clip, windows.tokens),
        )

    def _encode_windows(
        self, mel: torch.Tensor, stem_frames: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Windows (W, n_mels, frames) -> their valid tokens (sum(tokens), D) and taps."""
        mel = mel[..., : int(stem_frames.max())]
        x = self._stem(mel, stem_frames)
        x = x[:, : int(tokens.max())]  # (W, T_tok, d_model)
        x = x + sinusoids(x.shape[1], x.shape[2], x.device).to(x.dtype)
        key_mask = torch.arange(x.shape[1], device=x.device)[None, :] < tokens[:, None]

        tapped: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.layers):
            x = layer(x, key_mask)
            if index in self.tap_layers:
                tapped[index] = x
        taps = [tapped[index] for index in self.tap_layers]
        x = self.layer_norm(x)
        if self.out_proj is not None:
            x = self.out_proj(x)
            taps = [self.out_proj(t) for t in taps]
        return x[key_mask], [t[key_mask] for t in taps]
