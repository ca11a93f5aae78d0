"""The encoder predictor: a 16 kHz mono waveform in, encoder features and DeepStack taps out."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import torch
from kserve import InferRequest, InferResponse, Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput

from ..core.settings import Settings
from ..inference.encoding import EncodeBatcher
from . import load_model


def tensor(name: str, array: np.ndarray) -> InferOutput:
    datatype = {np.float32: "FP32", np.int64: "INT64", np.object_: "BYTES"}[array.dtype.type]
    output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
    output.set_data_from_numpy(array, binary_data=True)  # gRPC clients need binary BYTES
    return output


def input_array(payload: InferRequest, name: str, required: bool = True) -> np.ndarray | None:
    item = payload.get_input_by_name(name)
    if item is None:
        if required:
            raise InvalidInput(f"missing input tensor {name!r}")
        return None
    return item.as_numpy()


def feature_dims(model) -> tuple[int, int]:
    """(DeepStack taps, feature width) of a model's encoder outputs."""
    config = model.config.audio_config
    return len(config.deepstack_encoder_layer_indexes), config.output_dim


class EncoderModel(Model):
    def __init__(self, name: str, ref: str, settings: Settings) -> None:
        super().__init__(name)
        self.ref = ref
        self.settings = settings
        self.loaded = None
        # Caption/ask/chat send the whole clip: the encoder's cost is linear (4 s windows).
        self.max_samples = int(settings.max_audio_seconds * 16_000)

    def load(self) -> bool:
        self.loaded = load_model(self.ref, self.settings, encoder_only=True)
        # Concurrent requests (the executor's threads) are gathered into one encoder pass.
        self.batcher = EncodeBatcher(self.loaded.model, self.settings.encoder_batch_seconds)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        if self.loaded is not None:
            self.batcher.close()
        super().stop()

    def get_input_types(self) -> list[dict]:
        return [{"name": "waveform", "datatype": "FP32", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        taps, width = feature_dims(self.loaded.model)
        return [
            {"name": "features", "datatype": "FP32", "shape": [-1, width]},
            {"name": "taps", "datatype": "FP32", "shape": [taps, -1, width]},
        ]

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):
        waveform = np.asarray(input_array(payload, "waveform"), dtype=np.float32).reshape(-1)
        if not 1_600 <= waveform.size <= self.max_samples:
            raise InvalidInput(
                f"waveform must hold 0.1 s to {self.settings.max_audio_seconds:g} s of 16 kHz "
                f"audio; got {waveform.size} samples"
            )
        loop = asyncio.get_running_loop()
        (out,) = await loop.run_in_executor(None, self.batcher.encode, [waveform])
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=self.loaded.version,
            # Answer in the binary extension when the client asked for it: without these the
            # response is JSON, every float as text (0.4 s of the server's CPU for a 10 s clip).
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
            infer_outputs=[
                tensor("features", out.features.float().numpy()),
                tensor("taps", torch.stack(out.taps).float().numpy()),
            ],
        )
