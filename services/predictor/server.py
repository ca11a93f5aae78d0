"""Start one predictor: `mossctl predictor encoder|generator --model REF`."""

from __future__ import annotations

import logging
import sys

from ..core.settings import get_settings

ROLES = ("encoder", "generator")


def serve(role: str, ref: str, name: str, http_port: int, grpc_port: int, workers: int = 1) -> None:
    """Load the weights, then listen (REST on http_port, gRPC on grpc_port) until stopped."""
    # kserve parses sys.argv when imported; our own flags are not its flags.
    sys.argv = sys.argv[:1]
    from kserve import ModelServer

    from .encoder import EncoderModel
    from .generator import GeneratorModel

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    kind = {"encoder": EncoderModel, "generator": GeneratorModel}[role]
    model = kind(name, ref, settings)
    model.load()  # readiness: the server only starts once the weights are in memory
    ModelServer(http_port=http_port, grpc_port=grpc_port, workers=workers, enable_grpc=True).start(
        [model]
    )
