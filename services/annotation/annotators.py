"""Annotators: plug-ins behind one interface, one list per branch, chosen by configuration.

An annotator takes a segment's audio (16 kHz mono float32, times relative to the segment) and
what earlier annotators of its branch found, and returns fields to add to the branch record.
`MOSS_ANNOTATORS` names them per branch, built-in by name or any class by `module:Class`, so a
team can put an external ASR or tagger in place of ours:

    {"speech": ["moss-transcribe", "speech-descriptors"],
     "music": ["music-features"],
     "general": ["signal-tags"]}

The branch records keep every field each annotator returned; merge.py reads the fields named
in docs/annotation.md (`transcript`, `lines`, `tags`, and the descriptors `speaking_rate_wps`,
`loudness_db`, `tempo_bpm`, `key`). An annotator may also carry a `version` (named in each
field's provenance), `synonyms` for its labels (vocabulary.py), and `transcribes = True` when
it writes a transcript (an ASR): the engine then skips it on a line that has its own.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Protocol

import numpy as np

from .branches import dominant_pitch
from .segmentation import HOP, SAMPLE_RATE

DEFAULT_ANNOTATORS = {
    "speech": ["moss-transcribe", "speech-descriptors"],
    "music": ["music-features"],
    "general": ["signal-tags"],
}


class Annotator(Protocol):
    name: str

    def annotate(self, audio: np.ndarray, record: dict[str, Any]) -> dict[str, Any]:
        """Fields for the branch record of one segment (`record`: what is known so far)."""
        ...


def loudness_db(audio: np.ndarray) -> float:
    """RMS level of the loud part (frames within 30 dB of the loudest), in dBFS."""
    frames = len(audio) // HOP
    if frames == 0:
        return -120.0
    power = (audio[: frames * HOP].reshape(frames, HOP).astype(np.float64) ** 2).mean(axis=1)
    db = 10 * np.log10(power + 1e-12)
    return round(float(10 * np.log10(power[db > db.max() - 30].mean() + 1e-12)), 1)


def _level_word(db: float) -> str:
    return "loud" if db > -12 else "quiet" if db < -30 else "moderately loud"


class SpeechDescriptors:
    """Speaking rate (words per second of speech, from the transcript), loudness and pitch
    range (5th-95th percentile of the voice's f0, by YIN, in semitones)."""

    name = "speech-descriptors"

    def annotate(self, audio: np.ndarray, record: dict[str, Any]) -> dict[str, Any]:
        import librosa

        words = len(record.get("transcript", "").split())
        voiced = record.get("active_seconds") or len(audio) / SAMPLE_RATE
        out: dict[str, Any] = {"loudness_db": loudness_db(audio)}
        if words:
            out["speaking_rate_wps"] = round(words / max(voiced, 0.1), 2)
        if len(audio) >= 2048:
            f0 = librosa.yin(audio, fmin=60, fmax=500, sr=SAMPLE_RATE, hop_length=HOP)
            rms = librosa.feature.rms(y=audio, frame_length=2048, hop_length=HOP)[0][: len(f0)]
            voiced = f0[: len(rms)][rms > rms.max() * 10 ** (-25 / 20)]  # the loud frames only
            low, high = np.percentile(voiced if voiced.size else f0, [5, 95])
            out["pitch_hz"] = [round(float(low), 1), round(float(high), 1)]
            out["pitch_range_semitones"] = round(float(12 * np.log2(high / low)), 1)
        return out


KRUMHANSL_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KRUMHANSL_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def estimate_key(chroma: np.ndarray) -> str:
    """Krumhansl-Schmuckler: the key whose profile correlates best with the pitch classes."""
    profile = chroma.mean(axis=1)
    best, name = -2.0, "C major"
    for tonic in range(12):
        for mode, template in (("major", KRUMHANSL_MAJOR), ("minor", KRUMHANSL_MINOR)):
            score = float(np.corrcoef(profile, np.roll(template, tonic))[0, 1])
            if score > best:
                best, name = score, f"{PITCH_CLASSES[tonic]} {mode}"
    return name


class MusicFeatures:
    """Tempo (librosa's beat tracker), key (Krumhansl-Schmuckler on chroma), loudness, and a
    caption made of them."""

    name = "music-features"

    def annotate(self, audio: np.ndarray, record: dict[str, Any]) -> dict[str, Any]:
        import librosa

        onset_env = librosa.onset.onset_strength(y=audio, sr=SAMPLE_RATE, hop_length=HOP)
        tempo = librosa.feature.tempo(onset_envelope=onset_env, sr=SAMPLE_RATE, hop_length=HOP)
        tempo = float(np.atleast_1d(tempo)[0])
        chroma = librosa.feature.chroma_stft(y=audio, sr=SAMPLE_RATE, hop_length=HOP)
        key, level = estimate_key(chroma), loudness_db(audio)
        caption = f"{_level_word(level)} tonal music at about {round(tempo)} BPM in {key}"
        return {"tempo_bpm": round(tempo, 1), "key": key, "loudness_db": level,
                "tags": ["melody"], "caption": caption}  # fmt: skip


class SignalTags:
    """Event tags from signal features, for sounds without a tagger model: a steady tone (low
    or high, by its pitch), a rising or falling sweep, a noise burst, a click train.

    `synonyms`: what other vocabularies call the same sounds (the bootstrap model's training
    labels among them, pipelines/data.py); the engine uses one only when the target vocabulary
    has it (vocabulary.py)."""

    name = "signal-tags"
    synonyms = {  # noqa: RUF012 (read only)
        "low tone": ("low beep",),
        "high tone": ("high beep",),
        "rising sweep": ("chirp",),
    }

    def annotate(self, audio: np.ndarray, record: dict[str, Any]) -> dict[str, Any]:
        import librosa

        level = loudness_db(audio)
        if len(audio) < 2048 or level < -60:
            return {"tags": ["silence"], "caption": "silence", "loudness_db": level}
        f0, tonal, loud = dominant_pitch(audio)
        tonal_share = tonal.sum() / max(1, loud.sum())
        onsets = librosa.onset.onset_detect(y=audio, sr=SAMPLE_RATE, hop_length=HOP)
        rate = len(onsets) / (len(audio) / SAMPLE_RATE)
        frames = np.abs(audio[: len(audio) // HOP * HOP]).reshape(-1, HOP).max(axis=1)
        duty = float((frames > 0.2 * frames.max()).mean())
        if rate >= 4 and duty < 0.6:
            tag = "click train"
        elif tonal_share >= 0.6:
            track = f0[tonal]
            slope = np.polyfit(np.arange(len(track)), np.log2(track), 1)[0] * len(track)
            if abs(slope) >= 1.0:  # an octave or more across the sound
                tag = "rising sweep" if slope > 0 else "falling sweep"
            else:
                tag = "high tone" if np.median(track) >= 800 else "low tone"
        else:
            tag = "noise burst"
        return {"tags": [tag], "caption": f"{'an' if tag[0] in 'aeiou' else 'a'} {tag}",
                "loudness_db": level}  # fmt: skip


class MossTranscribe:
    """A timestamped transcript from a model of the platform (a registered `name@alias`, a
    local checkpoint name or a path; MOSS_ANNOTATION_MODEL), run with the model library's
    `generate`, the prompt of the `transcribe_timestamps` task."""

    name = "moss-transcribe"
    transcribes = True  # skipped on a line with its own transcript (engine.Engine.needed)

    def __init__(self, model_ref: str, settings: Any = None, max_new_tokens: int = 256) -> None:
        self.model_ref, self.settings, self.max_new_tokens = model_ref, settings, max_new_tokens
        self.version = model_ref  # provenance names the model that wrote a transcript
        self._lock = threading.Lock()

    def annotate(self, audio: np.ndarray, record: dict[str, Any]) -> dict[str, Any]:
        import torch

        from model import log_mel_spectrogram
        from model.answer import assemble_answer
        from model.encoder import num_audio_tokens
        from model.processor import default_prompt
        from model.tasks import instruction_for
        from model.timestamps import parse_timestamps

        model, processor = _load(self.model_ref, self.settings)
        mel = log_mel_spectrogram(audio)
        prompt = default_prompt(instruction_for("transcribe_timestamps", None))
        ids = processor.encode_prompt(prompt, [int(num_audio_tokens(mel.shape[-1]))])
        with self._lock, torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                audio_data=mel[None], audio_data_seqlens=torch.tensor([mel.shape[-1]]),
                max_new_tokens=self.max_new_tokens,
            )[0, len(ids):]  # fmt: skip
        text = assemble_answer([processor.decode(out.tolist())], [0.0]).text
        lines = [
            {"start": i.start, "end": i.end, "text": i.text}
            for i in parse_timestamps(text) if i.text and i.start is not None and i.end is not None
        ]  # fmt: skip
        transcript = " ".join(line["text"] for line in lines) if lines else text.strip()
        return {"transcript": transcript, "lines": lines, "asr_model": self.model_ref}


_MODELS: dict[str, tuple[Any, Any]] = {}
_MODELS_LOCK = threading.Lock()


def _load(model_ref: str, settings: Any):
    """The model and processor of a reference, loaded once per process."""
    from model import MossAudioModel, MossAudioProcessor

    from ..core.modelref import resolve
    from ..core.settings import get_settings

    with _MODELS_LOCK:
        if model_ref not in _MODELS:
            spec = resolve(model_ref, settings or get_settings(), allow_paths=True)
            model = MossAudioModel.from_pretrained(spec.path).eval()
            _MODELS[model_ref] = (model, MossAudioProcessor.from_pretrained(spec.path))
        return _MODELS[model_ref]


BUILT_IN = {
    "speech-descriptors": SpeechDescriptors,
    "music-features": MusicFeatures,
    "signal-tags": SignalTags,
    "moss-transcribe": MossTranscribe,
}


def build(names: dict[str, list[str]], model_ref: str, settings: Any) -> dict[str, list]:
    """The annotators of each branch, by name (built-in) or `module:Class` (a plug-in; its
    constructor takes no argument, or `model_ref` and `settings` as keywords if it wants)."""
    out: dict[str, list] = {}
    for branch, listed in names.items():
        out[branch] = []
        for name in listed:
            if name in BUILT_IN:
                cls = BUILT_IN[name]
            elif ":" in name:
                module, _, attr = name.partition(":")
                cls = getattr(importlib.import_module(module), attr)
            else:
                raise ValueError(f"unknown annotator {name!r}: a built-in "
                                 f"({', '.join(BUILT_IN)}) or module:Class")  # fmt: skip
            takes_model = cls is MossTranscribe or getattr(cls, "takes_model", False)
            out[branch].append(cls(model_ref=model_ref, settings=settings) if takes_model
                               else cls())  # fmt: skip
    return out
