"""Checkpoints loaded once per process and kept: workers and predictors serve many jobs per model.

Which checkpoint a reference means is decided by services.core.modelref; this module only loads
what it resolved (torch lives here, not in the core).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ..core.modelref import ModelSpec, model_version


def torch_dtype(dtype: str, device: str):
    """MOSS_DTYPE as a torch dtype; `auto` is bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def set_torch_threads(threads: int | None) -> None:
    """MOSS_TORCH_THREADS: torch's intra-op threads in this process (None: its default). Two
    workers on one machine that each take every core oversubscribe it, and OpenMP's spinning
    threads then slow both (docs/benchmarks.md, "Thread counts")."""
    if threads:
        import torch

        torch.set_num_threads(threads)


@dataclass
class LoadedModel:
    spec: ModelSpec
    version: str
    model: object  # model.MossAudioModel
    processor: object  # model.MossAudioProcessor


class ModelCache:
    """Models loaded once per process and kept (workers serve many jobs per model).

    When an alias moves, new jobs load the new version while jobs in flight keep the one they
    started with; beyond `capacity` models the least recently used is dropped from the cache
    (a job still running on it keeps its own reference).
    """

    def __init__(self, device: str = "cpu", capacity: int = 2, dtype: str = "auto") -> None:
        self.device = device
        self.dtype = dtype
        self.capacity = capacity
        self._loaded: dict[Path, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec) -> LoadedModel:
        with self._lock:
            key = spec.path.resolve()
            if key in self._loaded:
                self._loaded[key] = self._loaded.pop(key)  # most recently used last
            else:
                while len(self._loaded) >= self.capacity:
                    self._loaded.pop(next(iter(self._loaded)))
                from model import MossAudioModel, MossAudioProcessor

                dtype = torch_dtype(self.dtype, self.device)
                model = MossAudioModel.from_pretrained(spec.path, dtype=dtype)
                model = model.to(self.device).eval()
                processor = MossAudioProcessor.from_pretrained(spec.path)
                self._loaded[key] = LoadedModel(spec, model_version(spec.path), model, processor)
            return self._loaded[key]
