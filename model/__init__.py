"""The MOSS-Audio model library: a drop-in for the released checkpoints.

from model import MossAudioModel, MossAudioProcessor, load_audio
model = MossAudioModel.from_pretrained("path/to/MOSS-Audio-4B-Instruct")
processor = MossAudioProcessor.from_pretrained("path/to/MOSS-Audio-4B-Instruct")
inputs = processor(text="Transcribe the audio.", audios=[load_audio("clip.mp3")])
out = model.generate(**inputs, max_new_tokens=256)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:]))
"""

from .audio import AudioDecodeError, load_audio
from .config import PRESETS, MossAudioConfig, MossAudioEncoderConfig, preset_config
from .encoder import EncoderOutput, num_audio_tokens
from .features import log_mel_spectrogram
from .generation import SamplingParams
from .modeling import AudioEmbeddings, MossAudioModel
from .processor import MossAudioProcessor, audio_span_ids, default_prompt
from .segment import Segment, split_audio
from .thinking import ThinkingSplit, split_thinking

__all__ = [
    "PRESETS",
    "AudioDecodeError",
    "AudioEmbeddings",
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
    "split_audio",
    "split_thinking",
]
