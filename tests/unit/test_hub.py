"""The hub directory as it is: load, use, save, and load again; and what a bad one reports."""

from __future__ import annotations

import json

import pytest
import torch

from model import MossAudioModel, MossAudioProcessor, preset_config
from model.hub import check_layout
from model.tokens import AUDIO_BOS_ID, AUDIO_EOS_ID, AUDIO_TOKEN_ID
from tests.conftest import noise, tone
from tests.hub_layout import AUTO_MAP, write_hub_checkpoint


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hub") / "MOSS-Audio-tiny"
    tensors = write_hub_checkpoint(directory)
    return directory, tensors


def expected_names() -> set[str]:
    with torch.device("meta"):
        return set(MossAudioModel(preset_config("tiny")).state_dict())


def test_a_hub_directory_loads_cleanly(hub) -> None:
    directory, tensors = hub
    assert check_layout(directory, expected_names()) == []
    model, info = MossAudioModel.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info.get("mismatched_keys")
    state = model.state_dict()
    assert all(torch.equal(state[n], t) for n, t in tensors.items())
    assert model.config.audio_config.window_frames == 400  # no n_window: the official 200
    assert model.config.audio_config.conv_chunksize == 500
    defaults = model.generation_defaults
    assert (defaults.do_sample, defaults.temperature, defaults.top_k, defaults.top_p) == (
        True,
        1.0,
        50,
        1.0,
    )
    assert defaults.max_new_tokens == 1024


def test_the_hub_tokenizer_gets_the_audio_tokens_registered(hub) -> None:
    directory, _ = hub
    processor = MossAudioProcessor.from_pretrained(directory)
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<|audio_bos|>") == AUDIO_BOS_ID
    assert tokenizer.convert_tokens_to_ids("<|audio_eos|>") == AUDIO_EOS_ID
    assert tokenizer.decode([AUDIO_BOS_ID, AUDIO_EOS_ID]) == "<|audio_bos|><|audio_eos|>"
    assert processor.enable_time_marker is True
    # Placeholder strings typed in a prompt map to their ids, <|AUDIO|> included.
    ids = processor._text_ids("x<|audio_bos|><|AUDIO|><|audio_eos|>y")
    assert ids[1:4] == [AUDIO_BOS_ID, AUDIO_TOKEN_ID, AUDIO_EOS_ID]
    offline = MossAudioProcessor.from_pretrained(None)
    text = "Describe the audio.\nWhat happens at 4 s?"
    assert processor._text_ids(text) == offline._text_ids(text)


def test_several_audio_spans_and_audio_in_any_turn(hub) -> None:
    directory, _ = hub
    model = MossAudioModel.from_pretrained(directory).eval()
    processor = MossAudioProcessor.from_pretrained(directory)
    first, second = noise(2.5, seed=3), tone(5.2) + noise(5.2, seed=4)
    messages = [
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A hiss."},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "audio"}]},
    ]
    prompt = processor.apply_chat_template(messages)
    assert prompt.count("<|audio_bos|>") == 2 and prompt.startswith("<|im_start|>system\n")
    inputs = processor(text=prompt, audios=[first, second])
    ids = inputs["input_ids"][0].tolist()
    expected_tokens = processor.num_audio_tokens(len(first)) + processor.num_audio_tokens(
        len(second)
    )
    assert ids.count(AUDIO_TOKEN_ID) == expected_tokens
    assert ids.count(AUDIO_BOS_ID) == 2 and ids.index(AUDIO_BOS_ID) < ids.index(AUDIO_EOS_ID)
    from tests.oracle import ReferenceMossAudio

    config = json.loads((directory / "config.json").read_text())
    reference = ReferenceMossAudio.from_model(model, audio_config=config["audio_config"])
    with torch.no_grad():
        ours = model(**inputs).logits
    theirs = reference.logits(
        inputs["input_ids"], inputs["audio_data"], inputs["audio_data_seqlens"]
    )
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="2 audio spans but 1 audios"):
        processor(text=prompt, audios=[first])


def test_save_pretrained_writes_the_hub_layout_and_round_trips(hub, tmp_path) -> None:
    directory, _ = hub
    model = MossAudioModel.from_pretrained(directory).eval()
    processor = MossAudioProcessor.from_pretrained(directory)
    out = tmp_path / "saved"
    model.save_pretrained(out, max_shard_size="2MB")
    processor.save_pretrained(out)

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MossAudioModel"] and config["auto_map"] == AUTO_MAP
    assert config["model_type"] == "moss_audio"
    assert config["audio_config"]["n_window"] == 200  # written, so every reader agrees
    assert "rope_theta" in config["language_config"]
    assert (out / "model.safetensors.index.json").is_file()
    assert (out / "modeling_moss_audio.py").read_text() == (
        directory / "modeling_moss_audio.py"
    ).read_text()  # the remote code travels with a derived checkpoint
    saved_processor = json.loads((out / "processor_config.json").read_text())
    assert saved_processor["enable_time_marker"] is True
    assert saved_processor["mel_config"] == {
        "mel_sr": 16000,
        "mel_dim": 128,
        "mel_n_fft": 400,
        "mel_hop_length": 160,
    }
    assert (saved_processor["audio_start_id"], saved_processor["audio_end_id"]) == (151669, 151670)
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["do_sample"], generation["top_k"], generation["max_new_tokens"]) == (
        True,
        50,
        1024,
    )
    assert check_layout(out, expected_names()) == []

    again = MossAudioModel.from_pretrained(out).eval()
    ours, theirs = model.state_dict(), again.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    inputs = MossAudioProcessor.from_pretrained(out)(
        text="Describe the audio.", audios=[noise(6.0, seed=9)]
    )
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)


def test_a_broken_directory_lists_every_problem(hub, tmp_path) -> None:
    directory, _ = hub
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in directory.iterdir():
        if item.name not in ("model-00002-of-00002.safetensors", "tokenizer.json"):
            (broken / item.name).write_bytes(item.read_bytes())
    (broken / "tokenizer_config.json").unlink()
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    index["weight_map"]["audio_encoder.conv9.weight"] = "model-00001-of-00002.safetensors"
    del index["weight_map"]["lm_head.weight"]
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    problems = check_layout(broken, expected_names())
    assert any("model-00002-of-00002.safetensors" in p and "missing" in p for p in problems)
    assert any(p.startswith("no tokenizer files") for p in problems)
    assert any("1 missing tensors: lm_head.weight" in p for p in problems)
    assert any("1 unexpected tensors: audio_encoder.conv9.weight" in p for p in problems)
    assert check_layout(tmp_path / "nothing") == ["config.json is missing"]


def test_a_bf16_model_casts_the_mel_to_bf16(hub) -> None:
    """As the official code does: the encoder sees the mel in the model's dtype."""
    directory, _ = hub
    model = MossAudioModel.from_pretrained(directory, dtype=torch.bfloat16).eval()
    processor = MossAudioProcessor.from_pretrained(directory)
    inputs = processor(text="x", audios=[noise(3.0, seed=2)])
    mel, lengths = inputs["audio_data"], inputs["audio_data_seqlens"]
    assert mel.dtype == torch.float32
    with torch.no_grad():
        fp32_in = model.encode_audio(mel, lengths).features
        bf16_in = model.encode_audio(mel.to(torch.bfloat16), lengths).features
    assert fp32_in.dtype == torch.bfloat16 and torch.equal(fp32_in, bf16_in)
