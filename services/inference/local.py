"""The local backend, and the generation side every backend runs on the model.

`submit_generation` (like `encoding.EncodeBatcher`) is also what the KServe predictors call, so
the worker's torch path and the predictors share one implementation (and one BatchingEngine).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
import torch

from model import EncoderOutput
from model.processor import default_prompt

from ..core.modelref import model_version, resolve
from . import CONTEXT_EXCEEDED, ContextExceeded, Served, StaleFeatures, ran_out
from .encoding import EncodeBatcher
from .engine import BatchingEngine, GenerationRequest, RequestHandle
from .models import LoadedModel, ModelCache, set_torch_threads

T = TypeVar("T")

# Audio tokens per second in a prompt: 12.5 from the encoder, plus at most 2 time-marker digit
# tokens per second (a 4-digit second every 2 s), for the "how long fits" hint.
_PROMPT_TOKENS_PER_SECOND = 14.5


def submit_generation(
    loaded: LoadedModel,
    engine: BatchingEngine,
    encoded: EncoderOutput,
    instruction: str,
    max_new_tokens: int,
    temperature: float | None,
    cache_scope: str = "",
) -> RequestHandle:
    """Project one segment's features, build its prompt (with time markers), queue it.

    `temperature` None: sample as the checkpoint's generation_config.json says. `cache_scope`:
    whose requests may share this one's prompt prefix (see GenerationRequest)."""
    weight = loaded.model.lm_head.weight  # features may come in another dtype (FP32 on the wire)
    device, dtype = weight.device, weight.dtype
    with torch.inference_mode():
        audio = loaded.model.project_audio(
            EncoderOutput(
                features=encoded.features.to(device, dtype),
                taps=[t.to(device, dtype) for t in encoded.taps],
                token_lengths=encoded.token_lengths,
            )
        )
    tokens = int(encoded.features.shape[0])
    ids = loaded.processor.encode_prompt(default_prompt(instruction), [tokens])
    check_context(loaded.model.config, len(ids), tokens, max_new_tokens)
    sampling = {"temperature": temperature}
    if temperature is None:
        own = loaded.model.generation_defaults
        sampling = {
            "temperature": own.temperature if own.do_sample else 0.0,
            "top_p": own.top_p,
            "top_k": own.top_k,
        }
    return engine.submit(
        GenerationRequest(
            prompt_ids=ids,
            audio=audio,
            max_new_tokens=max_new_tokens,
            cache_scope=cache_scope,
            **sampling,
        )
    )


def check_context(config, prompt_tokens: int, audio_tokens: int, max_new_tokens: int) -> None:
    """Raise ContextExceeded unless prompt + budget fit `max_position_embeddings`."""
    context = int(config.language_config.max_position_embeddings)
    if prompt_tokens + max_new_tokens <= context:
        return
    other = prompt_tokens - audio_tokens * _PROMPT_TOKENS_PER_SECOND / 12.5
    fits = max(0.0, (context - max_new_tokens - other) / _PROMPT_TOKENS_PER_SECOND)
    raise ContextExceeded(
        f"{CONTEXT_EXCEEDED}: the audio needs {prompt_tokens} prompt tokens plus "
        f"max_new_tokens {max_new_tokens}, but the model's context holds {context} tokens "
        f"(about {fits:.0f} s of audio with this budget); send a shorter clip or a smaller "
        "max_new_tokens"
    )


class PerModel(Generic[T]):
    """One long-lived helper per loaded model (a BatchingEngine, an EncodeBatcher), made on
    first use, so that concurrent jobs on one model share its forward passes."""

    def __init__(self, make: Callable[[torch.nn.Module], T]) -> None:
        self.make = make
        self._made: dict[int, T] = {}
        self._lock = threading.Lock()

    def __call__(self, loaded: LoadedModel) -> T:
        with self._lock:
            key = id(loaded.model)
            if key not in self._made:
                self._made[key] = self.make(loaded.model)
            return self._made[key]

    def close(self) -> None:
        with self._lock:
            for helper in self._made.values():
                helper.close()
            self._made.clear()


def engines(settings) -> PerModel[BatchingEngine]:
    """The generation engines, sized by MOSS_GENERATOR_MAX_BATCH, MOSS_KV_CACHE_MB, ..."""
    return PerModel(
        lambda model: BatchingEngine(
            model,
            settings.generator_max_batch,
            kv_budget_bytes=settings.kv_cache_mb * 1024 * 1024,
            slot_tokens=settings.engine_slot_tokens,
            prefix_cache_bytes=settings.prefix_cache_mb * 1024 * 1024,
        )
    )


def encoders(settings) -> PerModel[EncodeBatcher]:
    """The encode batchers, up to MOSS_ENCODER_BATCH_SECONDS of audio per pass."""
    return PerModel(lambda model: EncodeBatcher(model, settings.encoder_batch_seconds))


class LocalGeneration:
    def __init__(self, handle: RequestHandle, processor) -> None:
        self.handle = handle
        self.processor = processor

    @property
    def done(self) -> bool:
        return self.handle.done

    @property
    def produced(self) -> int:
        return len(self.handle.tokens)

    @property
    def prompt_tokens(self) -> int:
        return len(self.handle.request.prompt_ids)

    def wait(self, timeout: float | None = None) -> bool:
        return self.handle.wait(timeout)

    def cancel(self) -> None:
        self.handle.cancel()

    def text(self) -> str:
        return self.processor.decode(self.handle.result())

    def partial(self) -> str:
        return self.processor.decode(list(self.handle.tokens))

    def hit_limit(self) -> bool:
        return ran_out(self.handle.tokens, self.handle.request.max_new_tokens)


class LocalBackend:
    """The worker runs the model itself (CPU or its own GPU: MOSS_DEVICE)."""

    def __init__(self, settings, models: ModelCache | None = None) -> None:
        self.settings = settings
        set_torch_threads(settings.torch_threads)
        self.models = models or ModelCache(settings.device, dtype=settings.dtype)
        self.engines = engines(settings)
        self.encoders = encoders(settings)

    def lookup(self, ref: str, registry_version: str | None = None) -> Served:
        spec = resolve(ref, self.settings, registry_version=registry_version)
        return Served(ref, model_version(spec.path), spec.registry_version, spec)

    def encode(
        self, served: Served, waveforms: list[np.ndarray]
    ) -> tuple[str, list[EncoderOutput]]:
        loaded = self.models.get(served.handle)
        return loaded.version, self.encoders(loaded).encode(waveforms)

    def generate(
        self,
        served: Served,
        encoded: EncoderOutput,
        instruction: str,
        max_new_tokens: int,
        temperature: float | None,
        features_version: str,
        cache_scope: str = "",
    ) -> LocalGeneration:
        loaded = self.models.get(served.handle)
        if features_version != loaded.version:
            raise StaleFeatures(f"features of {features_version}, model {loaded.version}")
        handle = submit_generation(
            loaded,
            self.engines(loaded),
            encoded,
            instruction,
            max_new_tokens,
            temperature,
            cache_scope,
        )
        return LocalGeneration(handle, loaded.processor)

    def close(self) -> None:
        self.engines.close()
        self.encoders.close()
