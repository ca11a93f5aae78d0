"""A training run's two kinds of checkpoint, at any world size.

    OUTPUT/
      config.json, model*.safetensors (+ index), tokenizer and processor files,
      generation_config.json             the release: what `mossctl infer`, the registry and
                                         serving load, unchanged (model/hub.py's layout)
      resume/trainer_state.pt            step, config, scheduler, RNG, world size, which shards
      resume/step-000040/                Distributed Checkpoint shards: model and optimizer

Resume state is `torch.distributed.checkpoint` (DCP): every rank writes its own shards and a
load reshards them to whatever world size resumes (2 processes -> 1 and 1 -> 2 continue the
same run). DCP promises no compatibility across torch versions, so it is for resuming only; the
release layout is what lasts. Data position is the step: every rank replays the same seeded
epoch order (pipelines.train.batches) and skips the global batches already trained on.

The release is written by rank 0 from the gathered state one tensor at a time (a sharded
parameter is gathered, written and dropped before the next), so no rank ever holds the whole
model at once; LoRA adapters are merged into their base weights on the way, so the release
has the released names only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.hub import CONFIG, WEIGHTS, WEIGHTS_INDEX, copy_remote_code, write_generation_defaults

from .distributed import Dist, full
from .lora import LoRALinear

RESUME_DIR = "resume"
STATE_FILE = f"{RESUME_DIR}/trainer_state.pt"  # relative to the output directory
# The recipe fields a resumed run must share with the run it continues (others may change:
# a longer --steps, another world size).
RESUME_KEYS = ("stage", "batch_size", "seed", "decoder", "lora_rank", "kinds", "kind_weights",
               "conversations", "vocab_shortlist", "train_encoder", "train_adapter")  # fmt: skip
SHARD_BYTES = 5 * 1024**3  # release shards, as the hub releases split them
SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


# --- resume state (DCP) ---------------------------------------------------------------------


def has_resume_state(directory: str | Path) -> bool:
    return (Path(directory) / STATE_FILE).is_file()


def save_resume(
    directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    step: int, config: Any, world: Dist,
) -> None:  # fmt: skip
    """Model and optimizer shards (every rank), then rank 0's small state file, written last
    and atomically: a run killed mid-save still resumes from the previous checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    resume = Path(directory) / RESUME_DIR
    shards = f"step-{step:06d}"
    if world.main and (resume / shards).exists():
        shutil.rmtree(resume / shards)
    world.barrier()
    (resume / shards).mkdir(parents=True, exist_ok=True)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(resume / shards))
    world.barrier()
    if not world.main:
        return
    state = {
        "step": step,
        "shards": shards,
        "world_size": world.world_size,
        "config": asdict(config),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
    }
    partial = resume / "trainer_state.pt.partial"
    torch.save(state, partial)
    os.replace(partial, Path(directory) / STATE_FILE)
    for old in resume.glob("step-*"):
        if old.name != shards:
            shutil.rmtree(old, ignore_errors=True)


def load_resume(
    directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    config: Any, world: Dist,
) -> int:  # fmt: skip
    """Restore what save_resume wrote (resharded to this world size); returns the step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {STATE_FILE} in {directory}: nothing to resume")
    state = torch.load(path, weights_only=False)
    check_compatible(state["config"], asdict(config))
    model_state, optim_state = get_state_dict(model, optimizer)
    shards = Path(directory) / RESUME_DIR / state["shards"]
    dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=str(shards))
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    scheduler.load_state_dict(state["scheduler"])
    # Rank 0's generators on every rank: at another world size per-rank streams cannot map.
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return int(state["step"])


def check_compatible(saved: dict[str, Any], now: dict[str, Any]) -> None:
    """A resumed run must train the same recipe: ValueError names the first field that differs."""
    for key in RESUME_KEYS:
        before, after = saved.get(key), now.get(key)
        if isinstance(before, list | tuple) or isinstance(after, list | tuple):
            before, after = list(before or []), list(after or [])
        if before != after:
            raise ValueError(
                f"cannot resume: the checkpoint was trained with {key}={before!r}, this run "
                f"has {key}={after!r} (a resumed run keeps its recipe)"
            )


# --- the release layout ---------------------------------------------------------------------


def release_entries(model: nn.Module) -> list[tuple[str, str, Any]]:
    """(released name, kind, source) for every tensor of the release, in state_dict order:
    kind "key" copies state_dict[source]; "lora" merges the LoRALinear at `source`."""
    lora = {
        name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)
    }
    entries: list[tuple[str, str, Any]] = []
    for key in model.state_dict():
        prefix = next((p for p in lora if key.startswith(p + ".")), None)
        if prefix is None:
            entries.append((key, "key", key))
            continue
        rest = key[len(prefix) + 1 :]
        if rest == "base.weight":
            entries.append((f"{prefix}.weight", "lora", prefix))
        elif rest.startswith("base."):
            entries.append((f"{prefix}.{rest[5:]}", "key", key))
    return entries


def _materialise(model: nn.Module, state: dict[str, torch.Tensor], kind: str, source: str):
    """One release tensor, whole, on CPU (a collective under FSDP2: all ranks call it)."""
    if kind == "key":
        return full(state[source])
    module = model.get_submodule(source)
    weight = full(state[f"{source}.base.weight"])
    a, b = full(state[f"{source}.lora_a"]), full(state[f"{source}.lora_b"])
    return weight + (b @ a) * module.scale  # as LoRALinear.merged


def export_release(
    directory: str | Path, model: nn.Module, processor: Any, world: Dist,
    dtype: torch.dtype | None = None, shard_bytes: int = SHARD_BYTES,
) -> list[str]:  # fmt: skip
    """The hub layout in `directory` (rank 0 writes; every rank must call). `dtype` casts the
    weights (bf16 for a CUDA run of 4B/8B, as released); None keeps the parameters' dtype.
    Returns the weight files written."""
    directory = Path(directory)
    state = model.state_dict()
    entries = release_entries(model)
    shapes = {}
    for name, kind, source in entries:
        tensor = state[source if kind == "key" else f"{source}.base.weight"]
        shapes[name] = (list(tensor.shape), dtype or tensor.dtype)
    shards = _plan_shards([name for name, _, _ in entries], shapes, shard_bytes)
    files = [WEIGHTS] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]  # fmt: skip
    if world.main:
        directory.mkdir(parents=True, exist_ok=True)
    by_name = {name: (kind, source) for name, kind, source in entries}
    for file, names in zip(files, shards, strict=True):
        # Written beside and renamed over: a model loaded from the old file may still map it.
        partial = directory / f"{file}.partial"
        handle = _open_safetensors(partial, names, shapes) if world.main else None
        for name in names:
            tensor = _materialise(model, state, *by_name[name]).to(shapes[name][1])
            if handle is not None:
                handle.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            del tensor
        if handle is not None:
            handle.close()
            os.replace(partial, directory / file)
    if world.main:
        _write_metadata(directory, model, processor, files, shards, shapes, dtype)
    world.barrier()
    return files


def _plan_shards(names: list[str], shapes: dict, shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = _nbytes(*shapes[name])
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _nbytes(shape: list[int], dtype: torch.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()


def _open_safetensors(path: Path, names: list[str], shapes: dict):
    """A safetensors file with its header written: the tensors' bytes follow in `names` order,
    so the file is streamed one tensor at a time instead of built in memory."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        shape, dtype = shapes[name]
        nbytes = _nbytes(shape, dtype)
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": shape,
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    handle = path.open("wb")
    handle.write(len(raw).to_bytes(8, "little"))
    handle.write(raw)
    return handle


def _write_metadata(
    directory: Path, model: nn.Module, processor: Any, files: list[str],
    shards: list[list[str]], shapes: dict, dtype: torch.dtype | None,
) -> None:  # fmt: skip
    """config.json (as save_pretrained writes it), the shard index, generation defaults, the
    release's remote code when the base had it, and the tokenizer/processor files."""
    if len(files) > 1:
        total = sum(_nbytes(*shapes[name]) for shard in shards for name in shard)
        weight_map = {name: file for file, shard in zip(files, shards, strict=True)
                      for name in shard}  # fmt: skip
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.architectures = ["MossAudioModel"]  # not FSDP's subclass name
    first = next(iter(shapes.values()))[1]
    config.dtype = str(dtype or first).removeprefix("torch.")
    config.save_pretrained(directory)
    write_generation_defaults(directory, model.generation_defaults)
    written = json.loads((directory / CONFIG).read_text())
    copy_remote_code(getattr(model, "source_directory", None), directory, written)
    if processor is not None:
        processor.save_pretrained(directory)
