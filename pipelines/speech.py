"""Synthetic speech with known word times, from eSpeak NG (the `espeakng-loader` wheel ships
libespeak-ng and its voices, so no system package is needed).

eSpeak reports a word event (its character position and the millisecond it starts) for every
word it speaks; the end of a word is the last loud frame before the next word starts. That
gives ground truth for timestamped transcripts and for segmentation tests, with many voices
(language variants x voice variants), rates and pitches.

libespeak-ng keeps global state, so one lock serialises every call in a process.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from functools import cache

import numpy as np

SAMPLE_RATE = 16_000
# Base voices x variants: distinct speakers. Split them between training and held-out tests
# (VOICES_HELDOUT) to measure transcription by voices the model has not heard.
BASES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
VOICES = tuple(f"{b}+{v}" for b in BASES for v in VARIANTS)
VOICES_HELDOUT = tuple(v for v in VOICES if v.endswith(("m7", "f5")))
VOICES_TRAIN = tuple(v for v in VOICES if v not in VOICES_HELDOUT)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_WORD = 1
_LOCK = threading.Lock()


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


@dataclass
class Spoken:
    audio: np.ndarray  # (samples,) float32 at 16 kHz
    words: list[Word]

    @property
    def start(self) -> float:
        return self.words[0].start

    @property
    def end(self) -> float:
        return self.words[-1].end


class _Engine:
    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        data = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 500, data, 0)
        if self.rate <= 0:
            raise RuntimeError("libespeak-ng did not initialise")
        self.samples: list[np.ndarray] = []
        self.events: list[tuple[int, int, int]] = []  # (char position, length, ms)
        self._callback = _CALLBACK(self._collect)  # kept alive: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count, events) -> int:
        if count > 0:
            self.samples.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while events[i].type != 0:  # espeakEVENT_LIST_TERMINATED
            if events[i].type == _EVENT_WORD:
                e = events[i]
                self.events.append((e.text_position, e.length, e.audio_position))
            i += 1
        return 0

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, list]:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"no eSpeak voice {voice!r}")
        self.lib.espeak_SetParameter(_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        self.samples, self.events = [], []
        raw = text.encode()
        self.lib.espeak_Synth(raw, len(raw) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        pcm = np.concatenate(self.samples) if self.samples else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0, list(self.events)


@cache
def _engine() -> _Engine:
    return _Engine()


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    g = np.gcd(rate, SAMPLE_RATE)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def speak(text: str, voice: str = "en-us+m3", rate: int = 160, pitch: int = 50) -> Spoken:
    """`text` spoken at `rate` words per minute and `pitch` (0-99), with each word's times.

    Times are seconds from the start of the returned audio, which begins and ends with
    eSpeak's own short silences.
    """
    with _LOCK:
        engine = _engine()
        audio, events = engine.speak(text, voice, rate, pitch)
        native = engine.rate
    audio = _resample(audio, native)
    starts = [(pos, length, ms / 1000) for pos, length, ms in events]
    words: list[Word] = []
    raw = text.encode()
    frame = SAMPLE_RATE // 100  # 10 ms
    energy = np.sqrt(np.convolve(audio**2, np.ones(frame) / frame, mode="same"))
    loud = energy > 0.02 * (energy.max() if energy.size else 1.0)
    for n, (pos, length, start) in enumerate(starts):
        word = raw[pos - 1 : pos - 1 + length].decode(errors="replace").strip(" ,.;:!?\"'")
        limit = starts[n + 1][2] if n + 1 < len(starts) else len(audio) / SAMPLE_RATE
        first, last = int(start * SAMPLE_RATE), int(limit * SAMPLE_RATE)
        voiced = np.flatnonzero(loud[first:last])
        if not word or not voiced.size:
            continue
        begin = (first + voiced[0]) / SAMPLE_RATE
        end = (first + voiced[-1] + 1) / SAMPLE_RATE
        words.append(Word(word, round(begin, 3), round(end, 3)))
    if not words:
        raise ValueError(f"eSpeak said nothing for {text!r}")
    return Spoken(audio, words)
