"""The MOSS-Audio model library: a drop-in for the released checkpoints.

from model import MossAudioModel, MossAudioProcessor, load_audio
model = MossAudioModel.from_pretrained("path/to/MOSS-Audio-4B-Instruct")
processor = MossAudioProcessor.from_pretrained("path/to/MOSS-Audio-4B-Instruct")
inputs = processor(text="Transcribe the audio.", audios=[load_audio("clip.mp3")])
out = model.generate(**inputs, max_new_tokens=256)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:]))

Names are imported on first use (PEP 562), so `import model.audio` or `model.timestamps` does
not load torch: the audio decoder's child process and torch-free services rely on that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AudioDecodeError": "audio",
    "AudioInfo": "audio",
    "load_audio": "audio",
    "probe_audio": "audio",
    "PRESETS": "config",
    "MossAudioConfig": "config",
    "MossAudioEncoderConfig": "config",
    "preset_config": "config",
    "EncoderOutput": "encoder",
    "num_audio_tokens": "encoder",
    "log_mel_spectrogram": "features",
    "SamplingParams": "generation",
    "AudioEmbeddings": "modeling",
    "MossAudioModel": "modeling",
    "MossAudioProcessor": "processor",
    "audio_span_ids": "processor",
    "default_prompt": "processor",
    "Segment": "segment",
    "split_audio": "segment",
    "ThinkingSplit": "thinking",
    "split_thinking": "thinking",
}

__all__ = [
    "PRESETS",
    "AudioDecodeError",
    "AudioEmbeddings",
    "AudioInfo",
    "EncoderOutput",
    "MossAudioConfig",
    "MossAudioEncoderConfig",
    "MossAudioModel",
    "MossAudioProcessor",
    "SamplingParams",
    "Segment",
    "ThinkingSplit",
    "audio_span_ids",
    "default_prompt",
    "load_audio",
    "log_mel_spectrogram",
    "num_audio_tokens",
    "preset_config",
    "probe_audio",
    "split_audio",
    "split_thinking",
]

if TYPE_CHECKING:
    from .audio import AudioDecodeError, AudioInfo, load_audio, probe_audio
    from .config import PRESETS, MossAudioConfig, MossAudioEncoderConfig, preset_config
    from .encoder import EncoderOutput, num_audio_tokens
    from .features import log_mel_spectrogram
    from .generation import SamplingParams
    from .modeling import AudioEmbeddings, MossAudioModel
    from .processor import MossAudioProcessor, audio_span_ids, default_prompt
    from .segment import Segment, split_audio
    from .thinking import ThinkingSplit, split_thinking


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
