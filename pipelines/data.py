"""A local dataset the project generates itself: clips with known events at known times.

Each clip is silence with a faint noise floor and one to three non-overlapping events: low or
high beeps (tones), noise bursts, chirps (rising sweeps) and click trains. Each line carries
the clip's events and a caption made from them ("A low beep at 1.2 s, then a noise burst at
4.0 s."), in the platform's dataset format (docs/datasets.md); the trainer builds its
questions from those labels (services.core.sft), as it does for any team's manifest.

Audio and manifest go to the object store, and the manifest's SHA-256 is the dataset's
identity in every run that uses it.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import wave
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from services.core.datasets import check_manifest
from services.core.sft import event_caption

SAMPLE_RATE = 16_000
EVENT_TYPES = ("low beep", "high beep", "noise burst", "chirp", "click train")


@dataclass(frozen=True)
class Event:
    label: str
    start: float
    end: float


def _render(event: Event, rng: np.random.Generator) -> np.ndarray:
    n = round((event.end - event.start) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    if event.label == "low beep":
        signal = np.sin(2 * np.pi * 330.0 * t)
    elif event.label == "high beep":
        signal = np.sin(2 * np.pi * 1760.0 * t)
    elif event.label == "noise burst":
        signal = rng.uniform(-1.0, 1.0, n)
    elif event.label == "chirp":
        f0, f1 = 300.0, 3000.0
        signal = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(t[-1], 1e-3))))
    else:  # click train: 10 ms clicks every 100 ms
        signal = np.where((t % 0.1) < 0.01, 1.0, 0.0) * np.sign(np.sin(2 * np.pi * 1000 * t))
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks at edges
    return (0.5 * signal * ramp).astype(np.float32)


def make_clip(rng: np.random.Generator) -> tuple[np.ndarray, list[Event], float]:
    duration = float(rng.choice([6.0, 8.0, 10.0]))
    count = int(rng.integers(1, 4))
    labels = rng.choice(EVENT_TYPES, size=count)
    events: list[Event] = []
    slot = duration / count  # one event per slot: they never overlap
    for i, label in enumerate(labels):
        length = round(float(rng.uniform(0.5, min(1.5, slot - 0.6))), 1)
        begin = i * slot + float(rng.uniform(0.2, slot - length - 0.2))
        start = round(begin, 1)
        events.append(Event(str(label), start, round(start + length, 1)))
    audio = (0.003 * rng.standard_normal(int(duration * SAMPLE_RATE))).astype(np.float32)
    for event in events:
        start = int(event.start * SAMPLE_RATE)
        piece = _render(event, rng)
        audio[start : start + len(piece)] += piece[: len(audio) - start]
    return audio, events, duration


def wav_bytes(audio: np.ndarray) -> bytes:
    pcm = np.clip(audio * 32767, -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MAJOR = (0, 2, 4, 5, 7, 9, 11, 12)


def make_melody(rng: np.random.Generator, bpm: float, tonic: int, notes: int = 8) -> np.ndarray:
    """A melody in the major key of `tonic` (0 = C), one note per beat at `bpm`: harmonic tones
    (a fundamental and two overtones) with a plucked envelope; it opens on the tonic triad so
    that its key is unambiguous."""
    beat = 60.0 / bpm
    n = int(beat * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    envelope = np.minimum(1.0, t / 0.01) * np.exp(-1.5 * t / beat)
    degrees = [0, 4, 7, *rng.choice(MAJOR, size=max(0, notes - 4)), 0][:notes]
    out = []
    for degree in degrees:
        f = 261.63 * 2 ** ((tonic + int(degree)) / 12)
        tone = sum(a * np.sin(2 * np.pi * f * k * t) for k, a in ((1, 1.0), (2, 0.4), (3, 0.2)))
        out.append(0.4 * tone * envelope)
    return np.concatenate(out).astype(np.float32)


# Spoken commands: a small grammar (6 verbs x 6 colours x 6 objects, 19 words), so that the
# tiny model can learn to transcribe it in minutes. Training clips use VOICES_TRAIN, held-out
# ones VOICES_HELDOUT: the speech figures are for voices the model has not heard.
VERBS = ("open", "close", "move", "find", "take", "drop")
COLOURS = ("red", "green", "blue", "yellow", "black", "white")
OBJECTS = ("door", "box", "light", "window", "ball", "cup")


def sentence(rng: np.random.Generator) -> str:
    return f"{rng.choice(VERBS)} the {rng.choice(COLOURS)} {rng.choice(OBJECTS)}"


def make_speech_clip(rng: np.random.Generator, heldout: bool) -> tuple[np.ndarray, list[dict]]:
    """One or two spoken commands in a faint noise floor; (audio, segments with times)."""
    from .speech import VOICES_HELDOUT, VOICES_TRAIN, speak

    voices = VOICES_HELDOUT if heldout else VOICES_TRAIN
    duration = float(rng.choice([4.0, 6.0]))
    audio = (0.003 * rng.standard_normal(int(duration * SAMPLE_RATE))).astype(np.float32)
    count = int(rng.integers(1, 3))
    segments, slot = [], duration / count
    for i in range(count):
        text = sentence(rng)
        spoken = speak(text, str(rng.choice(voices)), int(rng.integers(130, 190)),
                       int(rng.integers(25, 75)))  # fmt: skip
        voice = spoken.audio / max(1e-6, float(np.abs(spoken.audio).max())) * 0.5
        room = slot - len(voice) / SAMPLE_RATE
        offset = i * slot + float(rng.uniform(0.1, max(0.11, room - 0.1)))
        first = int(offset * SAMPLE_RATE)
        piece = voice[: len(audio) - first]
        audio[first : first + len(piece)] += piece
        end = round(min(duration, offset + spoken.end), 2)
        segments.append({"start": round(offset + spoken.start, 2), "end": end, "text": text})
    return audio, segments


def generate_dataset(
    storage: Any,
    name: str,
    num_clips: int,
    seed: int = 0,
    heldout_share: float = 0.2,
    speech_share: float = 0.0,
) -> tuple[str, str]:
    """Write clips and a manifest to `storage`; return (manifest key, manifest sha256).

    `speech_share` of the clips are spoken commands (transcripts with sentence times), the
    rest sound events.
    """
    rng = np.random.default_rng(seed)
    lines = []
    for index in range(num_clips):
        heldout = bool(rng.random() < heldout_share)
        line: dict[str, Any] = {"id": f"{name}-{index:06d}",
                                "split": "heldout" if heldout else "train"}  # fmt: skip
        if rng.random() < speech_share:
            audio, segments = make_speech_clip(rng, heldout)
            line.update(segments=segments, caption="A voice says: "
                        + "; ".join(f'"{s["text"]}"' for s in segments) + ".")  # fmt: skip
        else:
            audio, events, _ = make_clip(rng)
            line.update(events=[asdict(e) for e in events],
                        caption=event_caption([asdict(e) for e in events]))  # fmt: skip
        key = f"datasets/{name}/clips/{index:06d}.wav"
        storage.put_bytes(key, wav_bytes(audio))
        line.update(audio=key, duration=len(audio) / SAMPLE_RATE)
        lines.append(json.dumps(line, sort_keys=True))
    manifest = ("\n".join(lines) + "\n").encode()
    manifest_key = f"datasets/{name}/manifest.jsonl"
    storage.put_bytes(manifest_key, manifest)
    return manifest_key, hashlib.sha256(manifest).hexdigest()


def describe_dataset(clips: list[dict[str, Any]], key: str) -> str:
    """What a model trained on these clips knows, in words (shown with every served answer)."""
    labels = {e.get("label") for clip in clips for e in clip.get("events", [])}
    spoken = {w for clip in clips for s in clip.get("segments", []) for w in s["text"].split()}
    if clips and labels and labels <= set(EVENT_TYPES):
        text = ("synthetic sound events (low/high beeps, noise bursts, chirps, click trains): "
                "captions, event times and counts")  # fmt: skip
        if spoken and spoken <= {*VERBS, "the", *COLOURS, *OBJECTS}:
            return text + "; and spoken commands of 19 words (verb, colour, object)"
        return text + "; not speech or music"
    return f"the audio of dataset {key} ({len(clips)} clips)"


def read_manifest(
    storage: Any, key: str, default_prompt: str = ""
) -> tuple[list[dict[str, Any]], str]:
    """The valid clips of a manifest and the manifest's digest.

    Every line is checked (services.core.datasets); a bad line is reported and skipped, never
    the end of the run. Audio paths are relative to the manifest's folder unless they are
    object-store keys already (`datasets/...`).
    """
    raw = storage.get_bytes(key)
    lines = raw.decode("utf-8", errors="replace").splitlines()
    checked = check_manifest(lines, default_prompt=default_prompt)
    for problem in checked.problems:
        print(f"{key} {problem} (skipped)", flush=True)
    if not checked.clips:
        raise ValueError(f"{key}: no valid clip in {checked.lines} lines")
    folder = posixpath.dirname(key)
    for clip in checked.clips:
        if not clip["audio"].startswith("datasets/"):
            clip["audio"] = posixpath.join(folder, clip["audio"])
    return checked.clips, hashlib.sha256(raw).hexdigest()
