"""Where a job's encoder and decoder run: the inference backends behind one interface.

- `local` (default): the worker process runs the model with torch (ModelCache + BatchingEngine).
- `kserve`: the worker calls the encoder and generator predictors (services/predictor) over the
  Open Inference Protocol with `tritonclient`, HTTP or gRPC; the GPUs live with the predictors.
- `openai`: the worker sends audio and instruction to an OpenAI-compatible MOSS-Audio server
  (vLLM, SGLang, another platform), which encodes and generates (openai_server.py).

`services.jobs` talks only to `Backend`; both backends run the same code on the model
(`encoding.EncodeBatcher`, `local.submit_generation`), so a job gives the same
tokens either way for the same weights and greedy settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from model import EncoderOutput
from model.tokens import STOP_TOKEN_IDS

MISMATCH = "model_version_mismatch"  # the predictors' error code for StaleFeatures
CONTEXT_EXCEEDED = "context_exceeded"  # ... and for ContextExceeded


class StaleFeatures(Exception):
    """The features were made by another model version than the generator serves (a rollout
    happened between the stages): the job must be encoded again."""


def ran_out(tokens: list[int], max_new_tokens: int) -> bool:
    """The answer was cut by the token budget: as many tokens as allowed and no stop token."""
    return len(tokens) >= max_new_tokens and not set(tokens) & set(STOP_TOKEN_IDS)


class ContextExceeded(ValueError):
    """The prompt (audio tokens, time markers, instruction) plus the token budget does not fit
    the decoder's context. Never cut silently: the job fails and says how long a clip fits."""


@dataclass(frozen=True)
class Served:
    """The model a job runs on, as far as the backend can tell before running it."""

    ref: str  # the job's reference: `name` or `name@alias`
    version: str | None  # weights digest (feature-cache key); None: known only after encoding
    registry_version: str | None = None  # the MLflow version, to pin across the two stages
    handle: Any = None  # backend-specific (local: the ModelSpec)


class Generation(Protocol):
    """One segment being generated; the job loop polls it for progress and cancellation."""

    @property
    def done(self) -> bool: ...

    @property
    def produced(self) -> int: ...  # tokens so far (remote generations: 0 until done)

    @property
    def prompt_tokens(self) -> int: ...  # the prompt's tokens, audio included

    def wait(self, timeout: float | None = None) -> bool: ...

    def cancel(self) -> None: ...

    def text(self) -> str: ...  # the decoded answer; raises the generation's error

    def partial(self) -> str: ...  # the answer so far ("" where the backend does not stream)

    def hit_limit(self) -> bool: ...  # stopped by max_new_tokens, not by the model (after text())


class Backend(Protocol):
    def lookup(self, ref: str, registry_version: str | None = None) -> Served: ...

    def encode(
        self, served: Served, waveforms: list[np.ndarray]
    ) -> tuple[str, list[EncoderOutput]]:
        """16 kHz mono segments -> (weights digest, one EncoderOutput per segment)."""
        ...

    def generate(
        self,
        served: Served,
        encoded: EncoderOutput,
        instruction: str,
        max_new_tokens: int,
        temperature: float | None,  # None: the checkpoint's generation_config.json
        features_version: str,
        cache_scope: str = "",  # requests of one scope only share prompt-prefix caches
    ) -> Generation: ...

    def close(self) -> None: ...


def make_backend(settings: Any, models: Any = None) -> Backend:
    """The backend MOSS_INFERENCE_BACKEND names."""
    if settings.inference_backend == "kserve":
        from .kserve import KServeBackend

        return KServeBackend(settings)
    if settings.inference_backend == "openai":
        from .openai_server import OpenAIServerBackend

        return OpenAIServerBackend(settings)
    from .local import LocalBackend

    return LocalBackend(settings, models)
