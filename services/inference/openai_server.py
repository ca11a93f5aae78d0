"""The openai backend: generation on any OpenAI-compatible MOSS-Audio server (vLLM, which serves
MOSS-Audio upstream; the official SGLang fork; or another deployment of this platform).

Such a server takes audio, not features: its engine runs the encoder itself. So here the
encode stage only decodes (in the sandbox), resamples and cuts the audio, and the "features"
stored between the stages are each segment's 16 kHz samples (`features` [samples, 1], no taps).
The generate stage sends each segment as a float WAV `input_audio` part with the task's
instruction to `POST {MOSS_OPENAI_BASE_URL}/chat/completions`, streaming, so progress and
partial text show as with the other backends.

What is lost against `local`/`kserve`: the platform's feature cache (a second question on the
same audio encodes it again, inside the engine), and the weights digest: the answering model
is named by the server's model id (`MOSS_OPENAI_MODEL`), not by a digest of its weights.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

import numpy as np
import torch

from model import EncoderOutput
from model.thinking import THINK_CLOSE, THINK_OPEN

from . import Served

SAMPLE_RATE = 16_000


def float_wav(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """Mono 32-bit float WAV (IEEE float, format 3): the samples go through unchanged, where
    16-bit PCM would round them."""
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    return b"RIFF" + struct.pack("<I", 4 + len(chunks) + len(data)) + b"WAVE" + chunks + data


class ServerGeneration:
    """One segment on the server: the answer streams in; the job loop polls it."""

    def __init__(self, pool: ThreadPoolExecutor, call) -> None:
        self.cancelled = threading.Event()
        self.chunks: list[str] = []
        self.reasoning: list[str] = []  # `reasoning_content` deltas of Thinking models
        self.usage = (0, 0)  # prompt, completion tokens (from the final chunk)
        self.finish_reason: str | None = None
        self.future: Future = pool.submit(call, self)

    @property
    def done(self) -> bool:
        return self.future.done()

    @property
    def produced(self) -> int:
        return self.usage[1] or len(self.chunks)  # deltas until the server's count arrives

    @property
    def prompt_tokens(self) -> int:
        return self.usage[0]

    def wait(self, timeout: float | None = None) -> bool:
        return bool(wait_futures([self.future], timeout=timeout).done)

    def cancel(self) -> None:
        self.cancelled.set()  # the stream is closed at its next chunk: the server stops it
        self.future.cancel()

    def text(self) -> str:
        if self.future.cancelled():
            return ""
        self.future.result()  # raises the call's error
        return self.partial()

    def partial(self) -> str:
        """As the model wrote it: a server that parses the reasoning out (vLLM's reasoning
        parser) gets it put back in the model's own form, which the answer assembly splits."""
        answer = "".join(self.chunks)
        if not self.reasoning:
            return answer
        return f"{THINK_OPEN}{''.join(self.reasoning)}{THINK_CLOSE}{answer}"

    def hit_limit(self) -> bool:
        return self.finish_reason == "length"


class OpenAIServerBackend:
    def __init__(self, settings) -> None:
        from openai import OpenAI

        if not settings.openai_base_url:
            raise ValueError("MOSS_INFERENCE_BACKEND=openai needs MOSS_OPENAI_BASE_URL")
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "none"
        self.client = OpenAI(
            base_url=settings.openai_base_url,
            api_key=key,
            timeout=float(settings.task_time_limit_s),
            max_retries=2,
        )
        self.model = settings.openai_model
        digest = hashlib.sha256(f"{settings.openai_base_url}|{self.model}".encode()).hexdigest()
        self.version = f"openai-{digest[:16]}"
        self.pool = ThreadPoolExecutor(
            max_workers=max(2, settings.generator_concurrency * 2), thread_name_prefix="openai"
        )

    def lookup(self, ref: str, registry_version: str | None = None) -> Served:
        # The server serves what it serves; the job's `model` is recorded, the server's used.
        return Served(ref, self.version, None, self.model)

    def encode(
        self, served: Served, waveforms: list[np.ndarray]
    ) -> tuple[str, list[EncoderOutput]]:
        outputs = []
        for waveform in waveforms:
            samples = torch.from_numpy(np.asarray(waveform, dtype=np.float32).copy())
            outputs.append(
                EncoderOutput(
                    features=samples[:, None],  # [samples, 1]: the engine encodes
                    taps=[],
                    token_lengths=torch.tensor([len(samples)]),
                )
            )
        return self.version, outputs

    def generate(
        self,
        served: Served,
        encoded: EncoderOutput,
        instruction: str,
        max_new_tokens: int,
        temperature: float | None,
        features_version: str,
        cache_scope: str = "",
    ) -> ServerGeneration:
        clip = base64.b64encode(float_wav(encoded.features[:, 0].float().numpy())).decode()
        messages = [{"role": "user", "content": [
            {"type": "text", "text": instruction},
            {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
        ]}]  # fmt: skip
        options: dict = {} if temperature is None else {"temperature": temperature}
        if cache_scope:  # vLLM keeps prefix-cache blocks of different salts apart
            options["extra_body"] = {"cache_salt": cache_scope}

        def call(generation: ServerGeneration) -> None:
            stream = self.client.chat.completions.create(
                model=served.handle,
                messages=messages,
                max_tokens=max_new_tokens,
                stream=True,
                stream_options={"include_usage": True},
                **options,
            )
            with stream:
                for chunk in stream:
                    if generation.cancelled.is_set():
                        return
                    if chunk.usage is not None:
                        usage = chunk.usage
                        generation.usage = (usage.prompt_tokens, usage.completion_tokens)
                    for choice in chunk.choices:
                        if choice.delta.content:
                            generation.chunks.append(choice.delta.content)
                        if reasoning := getattr(choice.delta, "reasoning_content", None):
                            generation.reasoning.append(reasoning)
                        if choice.finish_reason:
                            generation.finish_reason = choice.finish_reason

        return ServerGeneration(self.pool, call)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
