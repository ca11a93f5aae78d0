"""The generator predictor: encoder features (or a waveform) plus an instruction in, text out.

Concurrent requests share one BatchingEngine, as jobs do in a generator worker.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import torch
from kserve import InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from model import EncoderOutput
from model.sampling import SamplingError, check_sampling

from ..core.settings import Settings
from ..inference import MISMATCH, ContextExceeded
from ..inference.encoding import encode_waveforms
from ..inference.local import engines, submit_generation
from . import load_model
from .encoder import feature_dims, input_array, tensor


def _text(payload: InferRequest, name: str, default: str | None = None) -> str | None:
    value = input_array(payload, name, required=default is None)
    if value is None:
        return default
    item = np.asarray(value, dtype=object).reshape(-1)[0]
    return item.decode() if isinstance(item, bytes) else str(item)


def _scalar(payload: InferRequest, name: str, default: float) -> float:
    value = input_array(payload, name, required=False)
    return default if value is None else float(np.asarray(value).reshape(-1)[0])


class GeneratorModel(Model):
    def __init__(self, name: str, ref: str, settings: Settings) -> None:
        super().__init__(name)
        self.ref = ref
        self.settings = settings
        self.loaded = None
        self.engines = engines(settings)

    def load(self) -> bool:
        self.loaded = load_model(self.ref, self.settings)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self.engines.close()
        super().stop()

    def get_input_types(self) -> list[dict]:
        taps, width = feature_dims(self.loaded.model)
        return [
            {"name": "features", "datatype": "FP32", "shape": [-1, width]},
            {"name": "taps", "datatype": "FP32", "shape": [taps, -1, width]},
            {"name": "waveform", "datatype": "FP32", "shape": [-1]},  # instead of features
            {"name": "instruction", "datatype": "BYTES", "shape": [1]},
            {"name": "max_new_tokens", "datatype": "INT32", "shape": [1]},
            {"name": "temperature", "datatype": "FP32", "shape": [1]},
            {"name": "sampling", "datatype": "BYTES", "shape": [1]},  # greedy | model
            {"name": "features_version", "datatype": "BYTES", "shape": [1]},
            {"name": "cache_scope", "datatype": "BYTES", "shape": [1]},  # optional
        ]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": "text", "datatype": "BYTES", "shape": [1]},
            {"name": "token_ids", "datatype": "INT64", "shape": [-1]},
            {"name": "prompt_tokens", "datatype": "INT64", "shape": [1]},  # audio included
        ]

    def _encoded(self, payload: InferRequest) -> EncoderOutput:
        waveform = input_array(payload, "waveform", required=False)
        if waveform is not None:
            (out,) = encode_waveforms(self.loaded.model, [np.asarray(waveform, np.float32)])
            return out
        features = np.asarray(input_array(payload, "features"), dtype=np.float32)
        taps = np.asarray(input_array(payload, "taps"), dtype=np.float32)
        k, width = feature_dims(self.loaded.model)
        if features.ndim != 2 or features.shape[1] != width or features.shape[0] == 0:
            raise InvalidInput(f"features must be [tokens, {width}]; got {list(features.shape)}")
        if taps.shape != (k, *features.shape):
            raise InvalidInput(f"taps must be [{k}, {features.shape[0]}, {width}]")
        return EncoderOutput(
            features=torch.from_numpy(features.copy()),
            taps=[torch.from_numpy(t.copy()) for t in taps],
            token_lengths=torch.tensor([features.shape[0]]),
        )

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):
        version = _text(payload, "features_version", default="")
        if version and version != self.loaded.version:
            raise InvalidInput(f"{MISMATCH}: features of {version}, model {self.loaded.version}")
        instruction = _text(payload, "instruction")
        max_new_tokens = int(_scalar(payload, "max_new_tokens", self.settings.max_new_tokens))
        temperature = _scalar(payload, "temperature", 0.0)
        sampling = _text(payload, "sampling", default="greedy")
        try:
            check_sampling(max_new_tokens, temperature, sampling)
        except SamplingError as exc:
            raise InvalidInput(f"{exc.code}: {exc.message}") from exc
        if sampling == "model":
            temperature = None  # the checkpoint's generation_config.json
        encoded = self._encoded(payload)
        try:
            handle = submit_generation(
                self.loaded,
                self.engines(self.loaded),
                encoded,
                instruction,
                max_new_tokens,
                temperature,
                _text(payload, "cache_scope", default=""),
            )
        except ContextExceeded as exc:
            raise InvalidInput(str(exc)) from exc
        tokens = await asyncio.get_running_loop().run_in_executor(None, handle.result)
        prompt_tokens = len(handle.request.prompt_ids)
        text = self.loaded.processor.decode(tokens)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=self.loaded.version,
            # Answer in the binary extension when the client asked for it: without these the
            # response is JSON, every float as text (0.4 s of the server's CPU for a 10 s clip).
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
            infer_outputs=[
                tensor("text", np.array([text.encode()], dtype=np.object_)),
                tensor("token_ids", np.array(tokens, dtype=np.int64)),
                tensor("prompt_tokens", np.array([prompt_tokens], dtype=np.int64)),
            ],
        )
