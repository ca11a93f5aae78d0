"""The kserve backend: the worker calls the encoder and generator predictors over the Open
Inference Protocol (V2) with `tritonclient`, over HTTP or gRPC (MOSS_KSERVE_PROTOCOL).

Tensors (see services/predictor for the server side):
  encoder   in: waveform FP32 [samples] (16 kHz mono)      out: features FP32 [tokens, D],
                                                               taps FP32 [K, tokens, D]
  generator in: features, taps (as above), instruction BYTES [1], max_new_tokens INT32 [1],
                temperature FP32 [1], features_version BYTES [1]
            out: text BYTES [1], token_ids INT64 [n], prompt_tokens INT64 [1]
Every response carries `model_version` (the weights digest), which keys the feature cache.

`tritonclient` clients are not thread-safe, so each worker thread keeps its own. This module
must never import `kserve` (its protobuf symbols clash with `tritonclient.grpc`).
"""

from __future__ import annotations

import http.client
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

import numpy as np
import torch

from model import EncoderOutput

from ..core.modelref import parse
from . import CONTEXT_EXCEEDED, MISMATCH, ContextExceeded, Served, StaleFeatures, ran_out


class ModelNotServed(LookupError):
    pass


def _url(value: str) -> str:
    """tritonclient wants host:port; accept http://host:port too."""
    for prefix in ("http://", "https://", "grpc://"):
        value = value.removeprefix(prefix)
    return value.rstrip("/")


class _Protocol:
    """The few tritonclient calls we need, over one protocol."""

    def __init__(self, protocol: str, url: str, timeout_s: float) -> None:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
        self.grpc = protocol == "grpc"
        self.module = client
        self.url = _url(url)
        self.timeout_s = timeout_s
        self._local = threading.local()

    def client(self):
        if getattr(self._local, "client", None) is None:
            if self.grpc:
                self._local.client = self.module.InferenceServerClient(self.url)
            else:
                self._local.client = self.module.InferenceServerClient(
                    self.url, connection_timeout=10.0, network_timeout=self.timeout_s
                )
        return self._local.client

    def infer(
        self, model: str, tensors: dict[str, np.ndarray], outputs: list[str]
    ) -> tuple[dict[str, np.ndarray], str]:
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        inputs = []
        for name, array in tensors.items():
            item = self.module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            if self.grpc:
                item.set_data_from_numpy(array)
            else:
                item.set_data_from_numpy(array, binary_data=True)
            inputs.append(item)
        if self.grpc:
            requested = [self.module.InferRequestedOutput(name) for name in outputs]
            kwargs = {"client_timeout": self.timeout_s}
        else:
            requested = [self.module.InferRequestedOutput(n, binary_data=True) for n in outputs]
            kwargs = {}
        try:
            result = self.client().infer(model, inputs, outputs=requested, **kwargs)
        except InferenceServerException as exc:
            raise _translate(exc, model, self.url) from exc
        except (OSError, http.client.HTTPException) as exc:
            # The predictor went away mid-request (killed, restarted, its pod moved): the worker
            # retries the stage. A fresh client next time, not this one's dead connection.
            self._local.__dict__.pop("client", None)
            raise ConnectionError(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        response = result.get_response()
        version = response.model_version if self.grpc else response.get("model_version", "")
        return {name: result.as_numpy(name) for name in outputs}, str(version or "")


def _translate(exc, model: str, url: str) -> Exception:
    """tritonclient's one exception type -> what the worker retries, re-encodes or fails."""
    message = exc.message() or str(exc)
    status = str(exc.status() or "")
    if MISMATCH in message:
        return StaleFeatures(message)
    if CONTEXT_EXCEEDED in message:
        return ContextExceeded(message)
    if "404" in status or "NOT_FOUND" in status or "not found" in message.lower():
        return ModelNotServed(f"{url} does not serve model {model!r}")
    if "UNAVAILABLE" in status or "DEADLINE" in status or "503" in status:
        return ConnectionError(f"{url}: {message}")
    return RuntimeError(f"{url}: {message}")


class RemoteGeneration:
    def __init__(self, future: Future, max_new_tokens: int) -> None:
        self.future = future
        self.max_new_tokens = max_new_tokens
        self.cancelled = False

    @property
    def done(self) -> bool:
        return self.future.done()

    @property
    def produced(self) -> int:
        """Tokens so far: the predictor answers at the end, with its token ids."""
        return len(self._answer()[1])

    @property
    def prompt_tokens(self) -> int:
        return self._answer()[2]

    def _answer(self) -> tuple[str, list[int], int]:
        """(text, token ids, prompt tokens) once answered; empty before or on failure."""
        if not self.future.done() or self.future.cancelled() or self.future.exception():
            return "", [], 0
        return self.future.result()

    def wait(self, timeout: float | None = None) -> bool:
        return bool(wait_futures([self.future], timeout=timeout).done)

    def cancel(self) -> None:
        # The OIP has no cancel: an unstarted call is dropped, a running one finishes unread.
        self.cancelled = True
        self.future.cancel()

    def text(self) -> str:
        if self.future.cancelled():
            return ""
        return self.future.result()[0]

    def partial(self) -> str:
        """The generator predictor answers once, at the end: nothing to show before."""
        done = self.future.done() and not self.future.cancelled()
        return self.text() if done and not self.future.exception() else ""

    def hit_limit(self) -> bool:
        if self.future.cancelled():
            return False
        return ran_out(self.future.result()[1], self.max_new_tokens)


class KServeBackend:
    def __init__(self, settings) -> None:
        if not settings.kserve_encoder_url or not settings.kserve_generator_url:
            raise ValueError(
                "MOSS_INFERENCE_BACKEND=kserve needs MOSS_KSERVE_ENCODER_URL and "
                "MOSS_KSERVE_GENERATOR_URL"
            )
        protocol, timeout = settings.kserve_protocol, float(settings.task_time_limit_s)
        self.encoder = _Protocol(protocol, settings.kserve_encoder_url, timeout)
        self.generator = _Protocol(protocol, settings.kserve_generator_url, timeout)
        self.pool = ThreadPoolExecutor(
            max_workers=max(2, settings.generator_concurrency * 2), thread_name_prefix="kserve"
        )

    def lookup(self, ref: str, registry_version: str | None = None) -> Served:
        name = parse(ref).name
        # The predictors serve one version each (their storageUri); it is known from responses.
        return Served(ref, None, None, name)

    def encode(
        self, served: Served, waveforms: list[np.ndarray]
    ) -> tuple[str, list[EncoderOutput]]:
        versions, outputs = set(), []
        for waveform in waveforms:
            result, version = self.encoder.infer(
                served.handle,
                {"waveform": np.ascontiguousarray(waveform, dtype=np.float32)},
                ["features", "taps"],
            )
            versions.add(version)
            features = torch.from_numpy(np.array(result["features"], dtype=np.float32))
            taps = [torch.from_numpy(np.array(t, dtype=np.float32)) for t in result["taps"]]
            outputs.append(
                EncoderOutput(
                    features=features, taps=taps, token_lengths=torch.tensor([len(features)])
                )
            )
        if len(versions) != 1:  # a rollout between two segments of one job: encode again
            raise StaleFeatures(f"encoder versions changed mid-job: {sorted(versions)}")
        return versions.pop(), outputs

    def generate(
        self,
        served: Served,
        encoded: EncoderOutput,
        instruction: str,
        max_new_tokens: int,
        temperature: float | None,
        features_version: str,
        cache_scope: str = "",
    ) -> RemoteGeneration:
        tensors = {
            "features": encoded.features.float().numpy(),
            "taps": torch.stack(encoded.taps).float().numpy(),
            "instruction": np.array([instruction.encode()], dtype=np.object_),
            "max_new_tokens": np.array([max_new_tokens], dtype=np.int32),
            "temperature": np.array([temperature or 0.0], dtype=np.float32),
            "sampling": np.array([b"model" if temperature is None else b"greedy"], np.object_),
            "features_version": np.array([features_version.encode()], dtype=np.object_),
            "cache_scope": np.array([cache_scope.encode()], dtype=np.object_),
        }

        def call() -> tuple[str, list[int], int]:
            outputs = ["text", "token_ids", "prompt_tokens"]
            result, _version = self.generator.infer(served.handle, tensors, outputs)
            value = result["text"].reshape(-1)[0]
            text = value.decode() if isinstance(value, bytes) else str(value)
            tokens = [int(t) for t in result["token_ids"].reshape(-1)]
            return text, tokens, int(result["prompt_tokens"].reshape(-1)[0])

        return RemoteGeneration(self.pool.submit(call), max_new_tokens)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
