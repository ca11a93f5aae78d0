"""Configuration: the released `config.json` schema, plus our presets.

A released checkpoint directory carries one `config.json` with `model_type: "moss_audio"`, an
`audio_config` object (the encoder), a `language_config` object (a stock Qwen3 config) and the
adapter / DeepStack fields. We read and write exactly that shape so that a directory saved by us
loads in the official code and vice versa.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from transformers import PretrainedConfig, Qwen3Config

DEFAULT_N_WINDOW = 200  # the official code's default when config.json does not set n_window


@dataclass
class MossAudioEncoderConfig:
    """The `audio_config` object. Field names are those of the released config.json.

    Fields the encoder does not use (`downsample_rate`, `encoder_attention_window_size`,
    `pretrained_path`, ...) are kept so that a config round-trips unchanged.
    """

    d_model: int = 1280
    output_dim: int = 1280
    num_mel_bins: int = 128
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    downsample_rate: int = 8
    downsample_hidden_size: int = 480
    encoder_attention_window_size: int = 100
    max_source_positions: int = 1500
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    activation_function: str = "gelu"
    layer_norm_eps: float = 1e-5
    # Half the encoder window, in mel frames: every clip is encoded in independent windows of
    # 2 * n_window frames (200 -> 400 frames, 4 s, 50 tokens), as the official code, its SGLang
    # fork and vLLM do. A config.json without the field gets 200, as in the official code.
    # None (`"n_window": null`) is the explicit opt-out: the whole clip is one window (the first
    # April release). No other implementation can run such a checkpoint: they always window.
    n_window: int | None = DEFAULT_N_WINDOW
    # Windows per encoder pass: bounds the encoder's memory on long audio, never its result.
    conv_chunksize: int = 64
    deepstack_encoder_layer_indexes: list[int] = field(default_factory=lambda: [8, 16, 24])
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> MossAudioEncoderConfig:
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: data.pop(k) for k in list(data) if k in known}
        return cls(**kwargs, extra=data)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        out.update(extra)  # n_window is always written (null for the opt-out): readers agree
        return out

    @property
    def window_frames(self) -> int | None:
        """Mel frames per encoder window, or None when clips are encoded whole."""
        return None if self.n_window is None else 2 * int(self.n_window)


class MossAudioConfig(PretrainedConfig):
    """Top-level config of a MOSS-Audio checkpoint (`model_type` "moss_audio")."""

    model_type = "moss_audio"

    def __init__(
        self,
        audio_config: dict[str, Any] | MossAudioEncoderConfig | None = None,
        language_config: dict[str, Any] | Qwen3Config | None = None,
        adapter_hidden_size: int = 8192,
        deepstack_num_inject_layers: int | None = None,
        ignore_index: int = -100,
        **kwargs: Any,
    ) -> None:
        if not isinstance(audio_config, MossAudioEncoderConfig):
            audio_config = MossAudioEncoderConfig.from_dict(audio_config)
        if not isinstance(language_config, Qwen3Config):
            language_config = Qwen3Config(**(language_config or {}))
        self.audio_config = audio_config
        self.language_config = language_config
        self.adapter_hidden_size = adapter_hidden_size
        self.deepstack_num_inject_layers = deepstack_num_inject_layers
        self.ignore_index = ignore_index
        # The released model has an untied lm_head; never let transformers tie it.
        kwargs["tie_word_embeddings"] = False
        for key in ("vocab_size", "eos_token_id", "bos_token_id"):
            kwargs.setdefault(key, getattr(language_config, key, None))
        super().__init__(**kwargs)

    @property
    def num_deepstack_mergers(self) -> int:
        """K = min(number of encoder taps, deepstack_num_inject_layers)."""
        k = len(self.audio_config.deepstack_encoder_layer_indexes or [])
        if self.deepstack_num_inject_layers is not None:
            k = min(k, int(self.deepstack_num_inject_layers))
        return k

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["audio_config"] = self.audio_config.to_dict()
        language = self.language_config.to_dict()
        # transformers 5 stores rope settings under rope_parameters; readers on transformers 4
        # (the official code) look for rope_theta, so write both.
        rope = language.get("rope_parameters") or {}
        if "rope_theta" in rope:
            language.setdefault("rope_theta", rope["rope_theta"])
        out["language_config"] = language
        return out


# --- Presets -------------------------------------------------------------------------------------

_QWEN3_COMMON: dict[str, Any] = {
    "vocab_size": 151936,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "hidden_act": "silu",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "tie_word_embeddings": False,
}

_RELEASED_AUDIO: dict[str, Any] = {}  # the encoder defaults are the released ones


def _preset(audio: dict[str, Any], language: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"audio_config": audio, "language_config": {**_QWEN3_COMMON, **language}, **top}


PRESETS: dict[str, dict[str, Any]] = {
    # Released dimensions (MOSS-Audio-4B-* and -8B-* config.json).
    "4b": _preset(
        _RELEASED_AUDIO,
        {"hidden_size": 2560, "intermediate_size": 9728},
        adapter_hidden_size=8192,
        deepstack_num_inject_layers=3,
    ),
    "8b": _preset(
        _RELEASED_AUDIO,
        {"hidden_size": 4096, "intermediate_size": 12288},
        adapter_hidden_size=8192,
        deepstack_num_inject_layers=3,
    ),
    # ~150M parameters with the full Qwen3 vocabulary: big enough for meaningful CPU timings.
    "small": _preset(
        {
            "d_model": 384,
            "output_dim": 384,
            "encoder_layers": 6,
            "encoder_attention_heads": 6,
            "encoder_ffn_dim": 1536,
            "downsample_hidden_size": 64,
            "deepstack_encoder_layer_indexes": [1, 3, 5],
        },
        {
            "hidden_size": 384,
            "intermediate_size": 1536,
            "num_hidden_layers": 8,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "head_dim": 64,
        },
        adapter_hidden_size=1024,
        deepstack_num_inject_layers=3,
    ),
    # A few million parameters (most in the embedding tables): unit tests and local training.
    "tiny": _preset(
        {
            "d_model": 64,
            "output_dim": 64,
            "encoder_layers": 3,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "downsample_hidden_size": 8,
            "deepstack_encoder_layer_indexes": [0, 1, 2],
        },
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 8192,
        },
        adapter_hidden_size=128,
        deepstack_num_inject_layers=2,
    ),
}


def preset_config(name: str, **overrides: Any) -> MossAudioConfig:
    """A fresh config for a named preset (`4b`, `8b`, `small`, `tiny`)."""
    try:
        data = copy.deepcopy(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    data.update(overrides)
    return MossAudioConfig(**data, architectures=["MossAudioModel"])
