"""MossAudioModel: encoder -> adapter (+ DeepStack mergers) -> Qwen3 decoder -> lm_head.

Audio embeddings replace the token embeddings at `<|AUDIO|>` positions, in order (row-major:
row 0's audio tokens first). Merger k's output is added at those positions to the output of
decoder layer k, during prefill only (decode steps carry no audio positions).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .adapter import GatedMLP
from .config import MossAudioConfig
from .encoder import EncoderLayer, EncoderOutput, MossAudioEncoder
from .generation import SamplingParams
from .hub import (
    CONFIG,
    OFFICIAL_GENERATION,
    copy_remote_code,
    read_generation_defaults,
    write_generation_defaults,
)
from .kv_cache import KVCache
from .qwen3 import DecoderLayer, Qwen3Decoder, RMSNorm, RotaryEmbedding
from .tokens import AUDIO_TOKEN_ID


@dataclass
class AudioEmbeddings:
    """Encoder outputs projected to the decoder width, ready to be placed in a prompt."""

    embeds: torch.Tensor  # (num_audio_tokens, hidden): replaces <|AUDIO|> token embeddings
    deepstack: list[torch.Tensor]  # K x (num_audio_tokens, hidden): added after layers 0..K-1


class MossAudioPreTrainedModel(PreTrainedModel):
    config_class = MossAudioConfig
    config: MossAudioConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _no_split_modules = ("DecoderLayer", "EncoderLayer")
    _supports_sdpa = True
    # The official encoder's sinusoid table is a non-persistent buffer, but tolerate checkpoints
    # that stored it: positions are computed, never loaded.
    _keys_to_ignore_on_load_unexpected = (r"audio_encoder\.embed_positions\..*",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config.language_config, "initializer_range", 0.02)
        if isinstance(module, nn.Conv2d):
            # Fan-in scaled (He) for the GELU conv stem. The fixed 0.02 of the linear layers
            # shrinks a signal ~10x per convolution here (fan-in 9 for the first one), so a fresh
            # encoder's output would be ~1e-5 of its position embeddings: the audio is invisible
            # and training sits on a plateau until the stem has grown. (Released weights load
            # over this; only models trained from scratch see it.)
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, RotaryEmbedding):
            # A non-persistent buffer: from_pretrained materialises it from the meta device
            # uninitialised, so it must be recomputed here.
            module.inv_freq.copy_(module.compute_inv_freq())


class MossAudioModel(MossAudioPreTrainedModel):
    def __init__(self, config: MossAudioConfig) -> None:
        super().__init__(config)
        audio, language = config.audio_config, config.language_config
        self.audio_encoder = MossAudioEncoder(audio)
        self.language_model = Qwen3Decoder(language)
        self.audio_adapter = GatedMLP(
            audio.output_dim, config.adapter_hidden_size, language.hidden_size
        )
        self.deepstack_audio_merger_list = nn.ModuleList(
            GatedMLP(audio.output_dim, config.adapter_hidden_size, language.hidden_size)
            for _ in range(config.num_deepstack_mergers)
        )
        self.lm_head = nn.Linear(language.hidden_size, language.vocab_size, bias=False)
        self.post_init()
        # generation_config.json: what "the model's own defaults" means for a request.
        self.generation_defaults: SamplingParams = OFFICIAL_GENERATION
        self.source_directory: Path | None = None  # where from_pretrained read it

    # --- the hub layout (model/hub.py) ------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        directory = Path(pretrained_model_name_or_path)
        if directory.is_dir():
            model.source_directory = directory
            model.generation_defaults = read_generation_defaults(directory)
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any):
        """The hub layout: config.json, (sharded) safetensors, generation_config.json, and the
        release's remote code files when this model came from a directory that had them."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_generation_defaults(save_directory, self.generation_defaults)
        config = json.loads((Path(save_directory) / CONFIG).read_text())
        copy_remote_code(self.source_directory, save_directory, config)

    # transformers hooks (resize_token_embeddings, generation utilities) look for these.
    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    # --- audio ------------------------------------------------------------------------------

    def encode_audio(
        self, audio_data: torch.Tensor, audio_data_seqlens: torch.Tensor | None = None
    ) -> EncoderOutput:
        """Mel (N, 128, T) -> encoder features and DeepStack taps (the cacheable part)."""
        return self.audio_encoder(audio_data, audio_data_seqlens)

    def project_audio(self, encoded: EncoderOutput) -> AudioEmbeddings:
        """Encoder outputs -> decoder-width audio embeddings and DeepStack residuals."""
        mergers = self.deepstack_audio_merger_list
        if len(encoded.taps) < len(mergers):
            raise ValueError(f"{len(mergers)} DeepStack mergers but {len(encoded.taps)} taps")
        return AudioEmbeddings(
            embeds=self.audio_adapter(encoded.features),
            deepstack=[merger(tap) for merger, tap in zip(mergers, encoded.taps, strict=False)],
        )

    # --- forward ----------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        audio_data: torch.Tensor | None = None,
        audio_data_seqlens: torch.Tensor | None = None,
        audio_input_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        *,
        audio_embeddings: AudioEmbeddings | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
        label_vocab: torch.LongTensor | None = None,
        attention_mask_4d: torch.Tensor | None = None,
        **_: object,
    ) -> CausalLMOutput:
        """input_ids (B, T); attention_mask (B, S) over cached + new tokens (S = cached + T).

        `audio_data` (N, 128, frames) mel with `audio_data_seqlens` (N,) frame counts, or
        precomputed `audio_embeddings`. `audio_input_mask` (B, T) marks `<|AUDIO|>` positions;
        it is computed from input_ids when not given. With `labels` (B, T) the loss is the
        next-token cross entropy ignoring `config.ignore_index`, and `logits` holds only the
        scored positions, (N, vocab) in row-major order. `logits_to_keep=n` computes logits for
        the last n positions only (generation needs just the last one). `label_vocab` (V',)
        restricts the training softmax to a shortlist of token ids that holds every target (a
        small model on narrow data: the head then costs V'/vocab of the full one); `logits` is
        then (N, V') over the shortlist. `attention_mask_4d` (B, 1, T, S) with `position_ids`
        serves rows that each keep their own length (continuous batching, model/slots.py).
        """
        past = cache.length if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(
                input_ids.shape[0],
                past + input_ids.shape[1],
                dtype=torch.long,
                device=input_ids.device,
            )
        embeds = self.language_model.embed_tokens(input_ids)  # (B, T, hidden)

        deepstack: list[torch.Tensor] | None = None
        if audio_data is not None and audio_embeddings is None:
            audio_embeddings = self.project_audio(self.encode_audio(audio_data, audio_data_seqlens))
        if audio_embeddings is not None:
            if audio_input_mask is None:
                audio_input_mask = input_ids == AUDIO_TOKEN_ID
            audio_input_mask = audio_input_mask.bool()
            expected = int(audio_input_mask.sum())
            if expected != audio_embeddings.embeds.shape[0]:
                raise ValueError(
                    f"the prompt has {expected} <|AUDIO|> positions but the audio gives "
                    f"{audio_embeddings.embeds.shape[0]} tokens; build inputs with the processor"
                )
            where = audio_input_mask[..., None].expand_as(embeds)
            embeds = embeds.masked_scatter(where, audio_embeddings.embeds.to(embeds.dtype))
            deepstack = audio_embeddings.deepstack

        hidden = self.language_model(
            embeds,
            attention_mask,
            position_ids=position_ids,
            cache=cache,
            deepstack=deepstack,
            deepstack_mask=audio_input_mask,
            mask=attention_mask_4d,
        )
        if labels is not None:
            # Score only the positions that have a target: the vocabulary head is the largest
            # matrix product of the model, and most positions (prompt, audio) carry no label.
            targets = labels[:, 1:].to(hidden.device)
            scored = targets != self.config.ignore_index  # (B, T-1)
            hidden = hidden[:, :-1][scored]  # (N, hidden)
            targets = targets[scored]  # (N,)
            if label_vocab is None:
                logits = self.lm_head(hidden)  # (N, vocab)
            else:
                logits = hidden @ self.lm_head.weight[label_vocab].T  # (N, V')
                position = torch.full_like(self.lm_head.weight[:, 0], -1, dtype=torch.long)
                position[label_vocab] = torch.arange(len(label_vocab), device=position.device)
                targets = position[targets]
                if bool((targets < 0).any()):
                    raise ValueError("a target token is missing from label_vocab")
            loss = F.cross_entropy(logits.float(), targets)
            return CausalLMOutput(loss=loss, logits=logits)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return CausalLMOutput(loss=None, logits=self.lm_head(hidden))  # (B, T, vocab)

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        language = self.config.language_config
        return KVCache(
            num_layers=language.num_hidden_layers,
            batch_size=batch_size,
            num_kv_heads=language.num_key_value_heads,
            head_dim=language.head_dim,
            capacity=capacity,
            dtype=self.lm_head.weight.dtype,
            device=self.lm_head.weight.device,
        )

    def generate(self, input_ids: torch.LongTensor, **kwargs: object) -> torch.LongTensor:
        """Generate continuations; returns prompt + new tokens (B, T + n), as transformers does.

        Accepts the processor's outputs plus `max_new_tokens`, `do_sample`, `temperature`,
        `top_k`, `top_p`, `eos_token_id`, `pad_token_id`, `seed` and `streamer` (a callable
        receiving each step's (B,) tokens). See `model.generation.generate`.
        """
        from .generation import generate

        new_tokens = generate(self, input_ids, **kwargs)
        return torch.cat([input_ids, new_tokens], dim=1)


__all__ = [
    "AudioEmbeddings",
    "DecoderLayer",
    "EncoderLayer",
    "MossAudioModel",
    "MossAudioPreTrainedModel",
]
