"""The checkpoint directory as the hub repos lay it out, and how to check one.

    config.json                     model_type "moss_audio", architectures, auto_map
    model.safetensors               or model-0000k-of-0000n.safetensors + their index
    tokenizer.json, tokenizer_config.json, ... (the Qwen3 tokenizer, without the audio tokens)
    processor_config.json           enable_time_marker, mel_config, the audio token ids
    generation_config.json          the official sampling defaults
    configuration_*.py, modeling_*.py, processing_*.py   the release's remote code (auto_map)

`from_pretrained` reads this layout and `save_pretrained` writes it, so that a model trained
here loads in the official code (its classes, or transformers' AutoModel with the remote code
files carried over from the checkpoint it was trained from) and in vLLM (which picks its model
by `architectures` and reads processor_config.json). `check_layout` is what an import runs
before anything is copied.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .generation import SamplingParams
from .tokens import ENDOFTEXT_ID, STOP_TOKEN_IDS

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PROCESSOR_CONFIG = "processor_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"  # what some tools write instead
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")

# generation_config.json of the release: sample, temperature 1.0, top_p 1.0, top_k 50, up to
# 1024 new tokens. A request can ask for these instead of the platform's greedy default.
OFFICIAL_GENERATION = SamplingParams(
    max_new_tokens=1024, do_sample=True, temperature=1.0, top_k=50, top_p=1.0
)


def read_generation_defaults(directory: str | Path) -> SamplingParams:
    """The checkpoint's own sampling defaults (the official ones when it has no file)."""
    path = Path(directory) / GENERATION_CONFIG
    if not path.is_file():
        return OFFICIAL_GENERATION
    saved = json.loads(path.read_text())
    base = asdict(OFFICIAL_GENERATION)
    do_sample = bool(saved.get("do_sample", False))
    return SamplingParams(
        max_new_tokens=int(saved.get("max_new_tokens", base["max_new_tokens"])),
        do_sample=do_sample,
        temperature=float(saved.get("temperature", 1.0)),
        top_k=int(saved.get("top_k", 50 if do_sample else 0) or 0),
        top_p=float(saved.get("top_p", 1.0)),
    )


def write_generation_defaults(directory: str | Path, params: SamplingParams) -> None:
    """generation_config.json in transformers' format (GenerationConfig reads it)."""
    data: dict[str, Any] = {
        "do_sample": params.do_sample,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "max_new_tokens": params.max_new_tokens,
        "eos_token_id": list(STOP_TOKEN_IDS),
        "pad_token_id": ENDOFTEXT_ID,
    }
    (Path(directory) / GENERATION_CONFIG).write_text(json.dumps(data, indent=2) + "\n")


def remote_code_files(config: dict[str, Any]) -> list[str]:
    """The .py files `auto_map` names ("modeling_moss_audio.MossAudioModel" -> its module)."""
    modules = set()
    for target in (config.get("auto_map") or {}).values():
        for ref in target if isinstance(target, list) else [target]:
            if isinstance(ref, str) and "." in ref:
                modules.add(ref.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return sorted(modules)


def copy_remote_code(source: str | Path | None, target: str | Path, config: dict) -> list[str]:
    """Carry the release's remote code files over to a derived checkpoint, when present."""
    if source is None or not Path(source).is_dir():
        return []
    copied = []
    for name in remote_code_files(config):
        if (Path(source) / name).is_file() and Path(source).resolve() != Path(target).resolve():
            shutil.copy2(Path(source) / name, Path(target) / name)
            copied.append(name)
    return copied


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint (from the index when sharded)."""
    directory = Path(directory)
    index = directory / WEIGHTS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / shard for shard in shards]
    return [directory / WEIGHTS] if (directory / WEIGHTS).is_file() else []


def check_layout(directory: str | Path, expected_names: set[str] | None = None) -> list[str]:
    """Every problem that keeps `directory` from being a MOSS-Audio checkpoint ([] when fine).

    `expected_names`: the parameter names its config implies (MossAudioModel on the meta
    device); each missing or unexpected tensor name is reported (the first few of each).
    """
    directory = Path(directory)
    problems: list[str] = []
    config_path = directory / CONFIG
    if not config_path.is_file():
        return [f"{CONFIG} is missing"]
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{CONFIG} is not valid JSON ({exc})"]
    if config.get("model_type") != "moss_audio":
        problems.append(f"{CONFIG}: model_type is {config.get('model_type')!r}, not 'moss_audio'")
    for key in ("audio_config", "language_config"):
        if not isinstance(config.get(key), dict):
            problems.append(f"{CONFIG}: the {key} object is missing")
    index = directory / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return [*problems, f"{WEIGHTS_INDEX} has no weight_map"]
        missing_shards = sorted({s for s in weight_map.values() if not (directory / s).is_file()})
        problems += [f"shard {s} (listed in {WEIGHTS_INDEX}) is missing" for s in missing_shards]
        names = set(weight_map)
    elif (directory / WEIGHTS).is_file():
        names = _safetensors_names(directory / WEIGHTS)
    else:
        return [*problems, f"no weights: neither {WEIGHTS} nor {WEIGHTS_INDEX}"]
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        problems.append(f"no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    if expected_names is not None:
        ignored = {n for n in names if n.startswith("audio_encoder.embed_positions")}
        missing = sorted(expected_names - names)
        unexpected = sorted(names - expected_names - ignored)
        if missing:
            problems.append(_listing("missing tensors", missing))
        if unexpected:
            problems.append(_listing("unexpected tensors", unexpected))
    return problems


def _listing(what: str, names: list[str], show: int = 5) -> str:
    more = f" and {len(names) - show} more" if len(names) > show else ""
    return f"{len(names)} {what}: {', '.join(names[:show])}{more}"


def _safetensors_names(path: Path) -> set[str]:
    with path.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if not 0 < size < 100_000_000:
            return set()
        header = json.loads(handle.read(size))
    return {name for name in header if name != "__metadata__"}
