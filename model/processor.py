"""MossAudioProcessor: text + 16 kHz audio -> model inputs (prompt ids with audio spans and mel).

An audio span is `<|audio_bos|>` + L(T) `<|AUDIO|>` ids + `<|audio_eos|>`, with the digits of
every even second s (2, 4, ... up to the clip's last full second) inserted after the first
(s/2)*25 audio ids when time markers are on. Example: 92 audio tokens (7.36 s) ->
25 AUDIO, "2", 25 AUDIO, "4", 25 AUDIO, "6", 17 AUDIO. Text with no audio span is wrapped in
the default ChatML prompt. A prompt may hold several audio spans (one per audio, in order), and
`apply_chat_template` puts audio in any turn of a conversation. Several (text, audio) pairs make
one left-padded batch.

processor_config.json is read and written with the keys the official processor and vLLM use
(`enable_time_marker`, `mel_config`, the audio token ids). The placeholder strings are mapped to
their ids by the processor itself, so a hub tokenizer that does not know them works.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, PreTrainedTokenizerBase

from .batching import left_pad, pad_mels
from .encoder import num_audio_tokens
from .features import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE, log_mel_spectrogram, num_mel_frames
from .hub import PREPROCESSOR_CONFIG, PROCESSOR_CONFIG
from .tokenizer import load_tokenizer
from .tokens import (
    AUDIO_BOS,
    AUDIO_BOS_ID,
    AUDIO_EOS,
    AUDIO_EOS_ID,
    AUDIO_TOKEN,
    AUDIO_TOKEN_ID,
    DIGIT_IDS,
    ENDOFTEXT_ID,
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
AUDIO_TOKENS_PER_SECOND = 12.5
TIME_MARKER_EVERY_SECONDS = 2
_TOKENS_PER_MARKER = int(AUDIO_TOKENS_PER_SECOND * TIME_MARKER_EVERY_SECONDS)  # 25
_PLACEHOLDERS = {AUDIO_TOKEN: AUDIO_TOKEN_ID, AUDIO_BOS: AUDIO_BOS_ID, AUDIO_EOS: AUDIO_EOS_ID}
_PLACEHOLDER = re.compile("|".join(re.escape(token) for token in _PLACEHOLDERS))
AUDIO_PLACEHOLDER = f"{AUDIO_BOS}{AUDIO_TOKEN}{AUDIO_EOS}"  # one audio, before expansion
# The front end is fixed (features.py); a checkpoint asking for another is refused.
MEL_CONFIG = {
    "mel_sr": SAMPLE_RATE,
    "mel_dim": N_MELS,
    "mel_n_fft": N_FFT,
    "mel_hop_length": HOP_LENGTH,
}

_AUDIO_SPAN = re.compile(
    re.escape(AUDIO_BOS) + f"(?:{re.escape(AUDIO_TOKEN)})+" + re.escape(AUDIO_EOS)
)

AudioInput = np.ndarray | torch.Tensor


def audio_span_ids(num_tokens: int, time_markers: bool = True) -> list[int]:
    """The ids between <|audio_bos|> and <|audio_eos|> for `num_tokens` audio tokens."""
    if not time_markers:
        return [AUDIO_TOKEN_ID] * num_tokens
    full_seconds = int(num_tokens / AUDIO_TOKENS_PER_SECOND)
    ids: list[int] = []
    placed = 0
    for second in range(TIME_MARKER_EVERY_SECONDS, full_seconds + 1, TIME_MARKER_EVERY_SECONDS):
        upto = (second // TIME_MARKER_EVERY_SECONDS) * _TOKENS_PER_MARKER
        ids += [AUDIO_TOKEN_ID] * (upto - placed)
        placed = upto
        ids += [DIGIT_IDS[digit] for digit in str(second)]
    ids += [AUDIO_TOKEN_ID] * (num_tokens - placed)
    return ids


def default_prompt(instruction: str, with_audio: bool = True) -> str:
    """The ChatML prompt the released models were trained with."""
    audio = f"{AUDIO_PLACEHOLDER}\n" if with_audio else ""
    return (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{audio}{instruction}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def _content(content: str | Sequence[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    text = ""
    for part in content:
        kind = part.get("type")
        if kind == "audio":
            text += AUDIO_PLACEHOLDER
        elif kind == "text":
            text += ("\n" if text.endswith(AUDIO_EOS) else "") + str(part.get("text", ""))
        else:
            raise ValueError(f"a content part must be text or audio, not {kind!r}")
    return text


def _read_processor_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The saved options, checked against what this library computes."""
    for name in (PROCESSOR_CONFIG, PREPROCESSOR_CONFIG):
        path = Path(directory) / name
        if path.is_file():
            saved = json.loads(path.read_text())
            break
    else:
        return {}
    mel = saved.get("mel_config") or {}
    for key, ours in MEL_CONFIG.items():
        if key in mel and int(mel[key]) != ours:
            raise ValueError(f"{path}: mel_config.{key} = {mel[key]}; this library computes {ours}")
    for key, ours in (
        ("audio_token_id", AUDIO_TOKEN_ID),
        ("audio_start_id", AUDIO_BOS_ID),
        ("audio_end_id", AUDIO_EOS_ID),
    ):
        if key in saved and int(saved[key]) != ours:
            raise ValueError(f"{path}: {key} = {saved[key]}; MOSS-Audio uses {ours}")
    return saved


class MossAudioProcessor:
    model_input_names = ("input_ids", "attention_mask", "audio_data", "audio_data_seqlens")

    def __init__(self, tokenizer: PreTrainedTokenizerBase, enable_time_marker: bool = True) -> None:
        self.tokenizer = tokenizer
        self.enable_time_marker = enable_time_marker
        self.pad_token_id = ENDOFTEXT_ID

    # --- persistence ------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> MossAudioProcessor:
        """Tokenizer from `directory` (or built offline); options from processor_config.json
        (or preprocessor_config.json, which vLLM also reads)."""
        options: dict[str, Any] = {}
        saved = _read_processor_config(directory) if directory is not None else {}
        if "enable_time_marker" in saved:
            options["enable_time_marker"] = bool(saved["enable_time_marker"])
        options.update(kwargs)
        return cls(load_tokenizer(directory), **options)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        config = {
            "processor_class": "MossAudioProcessor",
            "enable_time_marker": self.enable_time_marker,
            "audio_token_id": AUDIO_TOKEN_ID,
            "audio_start_id": AUDIO_BOS_ID,
            "audio_end_id": AUDIO_EOS_ID,
            "mel_config": dict(MEL_CONFIG),
        }
        (Path(directory) / PROCESSOR_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    # --- prompt building --------------------------------------------------------------------

    @staticmethod
    def num_audio_tokens(num_samples: int) -> int:
        """Audio tokens the encoder gives for a 16 kHz clip of `num_samples` samples."""
        return int(num_audio_tokens(num_mel_frames(num_samples)))

    def encode_prompt(
        self, prompt: str, token_counts: Sequence[int], time_markers: bool | None = None
    ) -> list[int]:
        """Tokenize `prompt`, expanding its i-th audio span for `token_counts[i]` tokens."""
        markers = self.enable_time_marker if time_markers is None else time_markers
        spans = list(_AUDIO_SPAN.finditer(prompt))
        if len(spans) != len(token_counts):
            raise ValueError(
                f"the prompt has {len(spans)} audio spans but {len(token_counts)} audios were given"
            )
        ids: list[int] = []
        cursor = 0
        for span, count in zip(spans, token_counts, strict=True):
            ids += self._text_ids(prompt[cursor : span.start()])
            ids += [AUDIO_BOS_ID, *audio_span_ids(count, markers), AUDIO_EOS_ID]
            cursor = span.end()
        return ids + self._text_ids(prompt[cursor:])

    def _text_ids(self, text: str) -> list[int]:
        """Text to ids; the audio placeholder strings map to their ids whatever the tokenizer
        knows (the hub tokenizer does not define them)."""
        ids: list[int] = []
        cursor = 0
        for match in _PLACEHOLDER.finditer(text):
            if match.start() > cursor:
                ids += self.tokenizer.encode(text[cursor : match.start()], add_special_tokens=False)
            ids.append(_PLACEHOLDERS[match.group()])
            cursor = match.end()
        if cursor < len(text):
            ids += self.tokenizer.encode(text[cursor:], add_special_tokens=False)
        return ids

    # --- conversations ----------------------------------------------------------------------

    @staticmethod
    def apply_chat_template(
        messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """A ChatML prompt for a conversation; audio may appear in any turn, several times.

        `messages`: [{"role": "system" | "user" | "assistant", "content": str | [parts]}] with
        parts {"type": "text", "text": ...} or {"type": "audio"} (the audios are passed to the
        processor in the order their parts appear). Without a system message the default one
        is used. An audio part is followed by a newline before text, as in the released prompt.
        """
        turns = list(messages)
        if not turns or turns[0].get("role") != "system":
            turns.insert(0, {"role": "system", "content": DEFAULT_SYSTEM_PROMPT})
        out = []
        for turn in turns:
            role = turn.get("role")
            if role not in ("system", "user", "assistant"):
                raise ValueError(f"a message role must be system, user or assistant, not {role!r}")
            out.append(f"<|im_start|>{role}\n{_content(turn.get('content', ''))}<|im_end|>\n")
        if add_generation_prompt:
            out.append("<|im_start|>assistant\n")
        return "".join(out)

    # --- call -------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | Sequence[str],
        audios: Sequence[AudioInput] | None = None,
        return_tensors: str = "pt",
        enable_time_marker: bool | None = None,
        **_: Any,
    ) -> BatchFeature:
        """One prompt with its audios, or a list of prompts with one audio each (a batch).

        `audios` are float32 mono waveforms at 16 kHz. Returns `input_ids` and
        `attention_mask` (B, L) left-padded, and with audio `audio_data` (N, 128, frames)
        zero-padded mel and `audio_data_seqlens` (N,) frame counts.
        """
        audios = list(audios or [])
        if isinstance(text, str):
            rows = [(text, audios)]
        else:
            texts = list(text)
            if audios and len(audios) != len(texts):
                raise ValueError(
                    f"a batch needs one audio per text: {len(texts)} texts, {len(audios)} audios"
                )
            rows = [(t, [a] if audios else []) for t, a in zip(texts, audios or texts, strict=True)]

        mels = [log_mel_spectrogram(self._waveform(a)) for a in audios]
        counts = [int(num_audio_tokens(m.shape[-1])) for m in mels]
        sequences: list[list[int]] = []
        used = 0
        for prompt, row_audios in rows:
            if row_audios and not _AUDIO_SPAN.search(prompt):
                prompt = default_prompt(prompt, with_audio=True)
            elif not row_audios and "<|im_start|>" not in prompt:
                prompt = default_prompt(prompt, with_audio=False)
            row_counts = counts[used : used + len(row_audios)]
            used += len(row_audios)
            sequences.append(self.encode_prompt(prompt, row_counts, enable_time_marker))

        input_ids, attention_mask = left_pad(sequences, self.pad_token_id)
        data: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if mels:
            data["audio_data"], data["audio_data_seqlens"] = pad_mels(mels)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _waveform(audio: AudioInput) -> torch.Tensor:
        wav = torch.as_tensor(audio)
        if wav.ndim == 2 and 1 in wav.shape:
            wav = wav.reshape(-1)
        if wav.ndim != 1:
            raise ValueError(
                f"audio must be mono (samples,), got shape {tuple(wav.shape)}; use load_audio()"
            )
        return wav.float()

    # --- decoding ---------------------------------------------------------------------------

    def decode(self, token_ids: Any, skip_special_tokens: bool = True, **kwargs: Any) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = True, **kwargs: Any
    ) -> list[str]:
        return self.tokenizer.batch_decode(
            sequences, skip_special_tokens=skip_special_tokens, **kwargs
        )
