"""The released architecture assembled from stock transformers modules, as an oracle.

Written from shared/MODEL.md, not from our `model/` code, so that a shared mistake cannot hide:
transformers' `WhisperEncoderLayer` for the encoder, the official windowing, `Qwen3ForCausalLM`
for the decoder, DeepStack as forward hooks on decoder layers, and transformers'
`GenerationMixin.generate` for decoding. Only the sinusoid formula, the token-count formula and
the gated MLP are restated here (a few lines each, from MODEL.md).

Windows (MODEL.md): the window is 2 * n_window mel frames, with n_window read from the
checkpoint's `audio_config` and 200 when the key is absent; `null` means one window per clip
(the explicit opt-out). A clip's windows are zero-padded to the longest of them and go through
the conv stem unmasked; positions restart at 0 in every window and attention stays inside it.

It loads the state dict of a `MossAudioModel` unchanged (names mapped), so tests compare the two
implementations on the same weights, and `benchmarks/generate.py` uses it as the
plain-transformers baseline. It handles one prompt per call, like the official processor; the
prompt may hold several audio spans.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3ForCausalLM, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

AUDIO_TOKEN_ID = 151654
STOP_TOKEN_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
PAD_ID = 151643
OFFICIAL_DEFAULT_N_WINDOW = 200


def window_frames(audio_config: dict[str, Any]) -> int | None:
    """Mel frames per window by MODEL.md's rule, from the raw `audio_config` of config.json."""
    n_window = audio_config.get("n_window", OFFICIAL_DEFAULT_N_WINDOW)
    return None if n_window is None else 2 * int(n_window)


def token_count(frames: torch.Tensor) -> torch.Tensor:
    for _ in range(3):
        frames = (frames - 1) // 2 + 1
    return frames


def positions(length: int, channels: int) -> torch.Tensor:
    step = math.log(10000.0) / (channels // 2 - 1)
    inv = torch.exp(-step * torch.arange(channels // 2).float())
    angle = torch.arange(length).float()[:, None] * inv[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


class GatedMLP(nn.Module):
    def __init__(self, size_in: int, hidden: int, size_out: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(size_in, hidden, bias=False)
        self.up_proj = nn.Linear(size_in, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, size_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ReferenceMossAudio(nn.Module):
    def __init__(self, config: Any, audio_config: dict[str, Any] | None = None) -> None:
        """`config`: a MossAudioConfig; `audio_config`: the raw `audio_config` object of the
        checkpoint's config.json (defaults to what `config` would write)."""
        super().__init__()
        audio = config.audio_config
        self.config = config
        self.window = window_frames(audio_config or audio.to_dict())
        whisper = WhisperConfig(
            d_model=audio.d_model,
            encoder_attention_heads=audio.encoder_attention_heads,
            encoder_ffn_dim=audio.encoder_ffn_dim,
            activation_function=audio.activation_function,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        )
        whisper._attn_implementation = "eager"
        c = audio.downsample_hidden_size
        self.conv1 = nn.Conv2d(1, c, 3, 2, 1)
        self.conv2 = nn.Conv2d(c, c, 3, 2, 1)
        self.conv3 = nn.Conv2d(c, c, 3, 2, 1)
        self.stem_proj = nn.Linear(c * 16, audio.d_model)
        self.layers = nn.ModuleList(
            WhisperEncoderLayer(whisper) for _ in range(audio.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(audio.d_model, eps=audio.layer_norm_eps)
        hidden = config.language_config.hidden_size
        self.audio_adapter = GatedMLP(audio.output_dim, config.adapter_hidden_size, hidden)
        self.mergers = nn.ModuleList(
            GatedMLP(audio.output_dim, config.adapter_hidden_size, hidden)
            for _ in range(config.num_deepstack_mergers)
        )
        language = config.language_config.to_dict()
        language["tie_word_embeddings"] = False
        lm_config = type(config.language_config)(**language)
        lm_config._attn_implementation = "eager"
        self.lm = Qwen3ForCausalLM(lm_config)

    @classmethod
    def from_model(
        cls, model: nn.Module, audio_config: dict[str, Any] | None = None
    ) -> ReferenceMossAudio:
        """Build the oracle and load `model`'s weights (a MossAudioModel) into it."""
        if model.config.audio_config.output_dim != model.config.audio_config.d_model:
            raise ValueError("the oracle covers configs without out_proj (as released)")
        ref = cls(model.config, audio_config)
        renamed: dict[str, torch.Tensor] = {}
        for name, tensor in model.state_dict().items():
            if name.startswith("audio_encoder."):
                name = name.removeprefix("audio_encoder.")
            elif name.startswith("deepstack_audio_merger_list."):
                name = "mergers." + name.removeprefix("deepstack_audio_merger_list.")
            elif name.startswith("language_model."):
                name = "lm.model." + name.removeprefix("language_model.")
            elif name.startswith("lm_head."):
                name = "lm." + name
            renamed[name] = tensor
        ref.load_state_dict(renamed, strict=True)
        return ref.to(model.lm_head.weight.dtype).eval()

    # --- encoder, the official way ---------------------------------------------------------

    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One clip's mel (128, T) -> features (L, D) and taps [(L, D)]."""
        mel = mel.to(self.conv1.weight.dtype)
        chunks = list(mel.split(self.window or mel.shape[-1], dim=-1))
        lengths = torch.tensor([c.shape[-1] for c in chunks])
        padded = torch.stack([F.pad(c, (0, int(lengths.max()) - c.shape[-1])) for c in chunks])
        x = padded.unsqueeze(1)
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.gelu(conv(x))
        x = self.stem_proj(x.permute(0, 3, 1, 2).flatten(2))
        tokens = token_count(lengths)
        x = x[:, : int(tokens.max())]
        x = x + positions(x.shape[1], x.shape[2]).to(x.dtype)
        valid = torch.arange(x.shape[1])[None, :] < tokens[:, None]
        additive = (~valid).to(x.dtype) * torch.finfo(x.dtype).min
        mask = additive[:, None, None, :].expand(-1, 1, x.shape[1], -1)
        taps: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.layers):
            x = layer(x, mask)
            x = x[0] if isinstance(x, tuple) else x
            taps[index] = x
        x = self.layer_norm(x)
        tap_layers = self.config.audio_config.deepstack_encoder_layer_indexes
        return x[valid], [taps[i][valid] for i in tap_layers]

    def prompt_embeddings(
        self, input_ids: torch.Tensor, audio_data: torch.Tensor, audio_data_seqlens: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """One prompt (1, L) with its clips, in prompt order (several spans allowed)."""
        if input_ids.shape[0] != 1:
            raise ValueError("the oracle takes one prompt, like the official processor")
        encoded = [
            self.encode(audio_data[i, :, : int(audio_data_seqlens[i])])
            for i in range(audio_data.shape[0])
        ]
        features = torch.cat([f for f, _ in encoded])
        taps = [torch.cat([t[k] for _, t in encoded]) for k in range(len(encoded[0][1]))]
        audio_mask = input_ids == AUDIO_TOKEN_ID
        embeds = self.lm.model.embed_tokens(input_ids).clone()
        embeds[audio_mask] = self.audio_adapter(features).to(embeds.dtype)
        deepstack = [merger(tap) for merger, tap in zip(self.mergers, taps, strict=False)]
        return embeds, deepstack, audio_mask

    def _hooks(self, deepstack: list[torch.Tensor], audio_mask: torch.Tensor) -> list:
        prompt_len = audio_mask.shape[1]

        def make(k: int):
            def hook(_module, _inputs, output):
                hidden = output[0] if isinstance(output, tuple) else output
                if hidden.shape[1] != prompt_len:  # decode steps carry no audio
                    return output
                hidden = hidden.clone()
                hidden[audio_mask] = hidden[audio_mask] + deepstack[k].to(hidden.dtype)
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            return hook

        return [
            self.lm.model.layers[k].register_forward_hook(make(k)) for k in range(len(deepstack))
        ]

    @torch.no_grad()
    def logits(
        self, input_ids: torch.Tensor, audio_data: torch.Tensor, audio_data_seqlens: torch.Tensor
    ) -> torch.Tensor:
        embeds, deepstack, audio_mask = self.prompt_embeddings(
            input_ids, audio_data, audio_data_seqlens
        )
        handles = self._hooks(deepstack, audio_mask)
        try:
            return self.lm(inputs_embeds=embeds).logits
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        audio_data: torch.Tensor,
        audio_data_seqlens: torch.Tensor,
        max_new_tokens: int,
        **kwargs: object,
    ) -> torch.Tensor:
        """New tokens only (1, n), through transformers' generate with its KV cache."""
        embeds, deepstack, audio_mask = self.prompt_embeddings(
            input_ids, audio_data, audio_data_seqlens
        )
        handles = self._hooks(deepstack, audio_mask)
        options = {"eos_token_id": list(STOP_TOKEN_IDS), "pad_token_id": PAD_ID, **kwargs}
        try:
            return self.lm.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                **options,
            )
        finally:
            for handle in handles:
                handle.remove()
