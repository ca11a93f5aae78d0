"""Prompt layout, time markers, token counts, mel features and the tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from model import audio_span_ids, log_mel_spectrogram, num_audio_tokens
from model.tokens import (
    AUDIO_BOS_ID,
    AUDIO_EOS_ID,
    AUDIO_TOKEN_ID,
    ENDOFTEXT_ID,
    IM_END_ID,
    IM_START_ID,
    THINK_END_ID,
    THINK_START_ID,
)
from tests.conftest import noise, tone

A = AUDIO_TOKEN_ID


def digits(text: str) -> list[int]:
    return [15 + int(c) for c in text]


@pytest.mark.parametrize(
    ("mel_frames", "tokens"),
    [(1, 1), (8, 1), (9, 2), (100, 13), (200, 25), (736, 92), (400, 50), (12000, 1500)],
)
def test_token_count_formula(mel_frames: int, tokens: int) -> None:
    assert num_audio_tokens(mel_frames) == tokens


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.0, 3.7, 7.36, 13.0])
def test_processor_token_count_matches_encoder_output(processor, tiny_model, seconds) -> None:
    audio = noise(seconds)
    inputs = processor(text="Describe.", audios=[audio])
    audio_positions = int((inputs["input_ids"] == A).sum())
    assert audio_positions == processor.num_audio_tokens(len(audio))
    with torch.no_grad():
        encoded = tiny_model.encode_audio(inputs["audio_data"], inputs["audio_data_seqlens"])
    assert encoded.features.shape[0] == audio_positions
    assert encoded.token_lengths.tolist() == [audio_positions]


def test_model_md_example_92_tokens() -> None:
    expected = [A] * 25 + digits("2") + [A] * 25 + digits("4") + [A] * 25 + digits("6") + [A] * 17
    assert audio_span_ids(92) == expected


def test_clip_under_two_seconds_has_no_marker() -> None:
    assert audio_span_ids(24) == [A] * 24
    assert audio_span_ids(1) == [A]


def test_exactly_two_seconds_ends_with_its_marker() -> None:
    assert audio_span_ids(25) == [A] * 25 + digits("2")
    assert audio_span_ids(26) == [A] * 25 + digits("2") + [A]


def test_two_digit_seconds() -> None:
    ids = audio_span_ids(160)  # 12.8 s: markers 2, 4, ..., 12, then the last 10 tokens
    expected: list[int] = []
    for second in ("2", "4", "6", "8", "10", "12"):
        expected += [A] * 25 + digits(second)
    assert ids == expected + [A] * 10


def test_three_digit_seconds() -> None:
    ids = audio_span_ids(1300)  # 104 s: 52 markers, the last ones "100", "102", "104"
    assert ids.count(A) == 1300
    assert len(ids) == 1300 + 4 * 1 + 45 * 2 + 3 * 3  # 2..8, 10..98, 100..104
    tail = [A] * 25 + digits("100") + [A] * 25 + digits("102") + [A] * 25 + digits("104")
    assert ids[-len(tail) :] == tail
    assert ids[: len(tail)][:26] == [A] * 25 + digits("2")


def test_time_markers_can_be_switched_off(processor) -> None:
    audio = noise(7.36)
    on = processor(text="x", audios=[audio])["input_ids"][0].tolist()
    off = processor(text="x", audios=[audio], enable_time_marker=False)["input_ids"][0].tolist()
    assert len(on) == len(off) + 3
    assert off.count(A) == on.count(A) == 92


def test_default_prompt_layout(processor) -> None:
    audio = noise(7.36)
    ids = processor(text="What is this?", audios=[audio])["input_ids"][0].tolist()
    text = processor.tokenizer
    head = text.encode(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        add_special_tokens=False,
    )
    tail = text.encode(
        "\nWhat is this?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    )
    assert ids == [*head, AUDIO_BOS_ID, *audio_span_ids(92), AUDIO_EOS_ID, *tail]


def test_explicit_audio_span_in_text_is_expanded(processor) -> None:
    prompt = (
        "<|im_start|>user\nFirst <|audio_bos|><|AUDIO|><|audio_eos|> then "
        "<|audio_bos|><|AUDIO|><|audio_eos|><|im_end|>\n<|im_start|>assistant\n"
    )
    out = processor(text=prompt, audios=[noise(1.0), noise(3.0)])
    ids = out["input_ids"][0].tolist()
    assert ids.count(AUDIO_BOS_ID) == 2 and ids.count(AUDIO_EOS_ID) == 2
    assert ids.count(A) == 13 + 38
    assert out["audio_data"].shape == (2, 128, 300)
    assert out["audio_data_seqlens"].tolist() == [100, 300]
    with pytest.raises(ValueError, match="2 audio spans but 1 audios"):
        processor(text=prompt, audios=[noise(1.0)])


def test_batch_is_left_padded(processor) -> None:
    out = processor(
        text=["Describe.", "Transcribe this clip, please."], audios=[noise(4.0), noise(1.0)]
    )
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    lengths = mask.sum(1).tolist()
    for row, length in enumerate(lengths):
        pad = ids.shape[1] - length
        assert mask[row, :pad].sum() == 0 and bool(mask[row, pad:].all())
        assert (ids[row, :pad] == ENDOFTEXT_ID).all()
        assert ids[row, pad] == IM_START_ID
    assert out["audio_data_seqlens"].tolist() == [400, 100]
    with pytest.raises(ValueError, match="one audio per text"):
        processor(text=["a", "b"], audios=[noise(1.0)])


@pytest.mark.parametrize("num_samples", [400, 16000, 16123, 117760])
def test_features_equal_whisper_feature_extractor(num_samples: int) -> None:
    audio = np.concatenate([tone(num_samples / 16000), np.zeros(0, np.float32)])[:num_samples]
    audio = audio + noise(num_samples / 16000, seed=num_samples)[:num_samples]
    extractor = WhisperFeatureExtractor(feature_size=128, hop_length=160, n_fft=400)
    expected = extractor(audio, sampling_rate=16000, padding="longest", return_tensors="np")
    ours = log_mel_spectrogram(audio).numpy()
    assert ours.shape == expected.input_features[0].shape == (128, num_samples // 160)
    np.testing.assert_allclose(ours, expected.input_features[0], atol=1e-5)


def test_processor_mel_is_the_feature_function(processor) -> None:
    audio = tone(2.5)
    out = processor(text="x", audios=[audio])
    torch.testing.assert_close(out["audio_data"][0], log_mel_spectrogram(audio))


def test_too_short_audio_is_rejected(processor) -> None:
    with pytest.raises(ValueError, match="too short"):
        processor(text="x", audios=[np.zeros(100, np.float32)])


def test_tokenizer_ids_of_model_md(processor) -> None:
    tok = processor.tokenizer
    assert tok.encode("0123456789", add_special_tokens=False) == list(range(15, 25))
    for token, token_id in [
        ("<|endoftext|>", ENDOFTEXT_ID),
        ("<|im_start|>", IM_START_ID),
        ("<|im_end|>", IM_END_ID),
        ("<|vision_pad|>", A),
        ("<think>", THINK_START_ID),
        ("</think>", THINK_END_ID),
        ("<|audio_bos|>", AUDIO_BOS_ID),
        ("<|audio_eos|>", AUDIO_EOS_ID),
    ]:
        assert tok.convert_tokens_to_ids(token) == token_id
    # Known Qwen ids for ordinary text.
    assert tok.encode("Hello world", add_special_tokens=False) == [9707, 1879]


def test_tokenizer_round_trips_chatml(processor) -> None:
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nDescribe the sound, please: 你好, café!<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nhmm\n</think>\n\nA dog barks.<|im_end|>\n"
    )
    ids = processor.tokenizer.encode(prompt, add_special_tokens=False)
    assert ids.count(IM_START_ID) == 3 and ids.count(IM_END_ID) == 3
    assert processor.decode(ids, skip_special_tokens=False) == prompt
    assert "</think>" in processor.decode(ids)  # think tags are not "special"


def test_processor_saves_and_reloads(processor, tmp_path) -> None:
    processor.save_pretrained(tmp_path)
    again = type(processor).from_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    text = "<|im_start|>user\nhi there<|im_end|>\n"
    assert again.tokenizer.encode(text) == processor.tokenizer.encode(text)
    off = type(processor).from_pretrained(tmp_path, enable_time_marker=False)
    assert off.enable_time_marker is False
