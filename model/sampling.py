"""What a request may ask of the decoder, defined once for every entry point.

The API, the KServe generator and the CLI all accept the same budget and temperature, so a job
that passes one passes all. `greedy` uses the request's temperature (0: argmax); `model` uses
the checkpoint's own generation_config.json (its temperature, top_p and top_k).
"""

from __future__ import annotations

MAX_NEW_TOKENS = 8192
MAX_TEMPERATURE = 2.0
SAMPLING_MODES = ("greedy", "model")


class SamplingError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_sampling(max_new_tokens: int | None, temperature: float, mode: str = "greedy") -> None:
    """Raise SamplingError (with a machine-readable code) for a budget or mode out of range."""
    if max_new_tokens is not None and not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise SamplingError(
            "invalid_max_new_tokens", f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}"
        )
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise SamplingError("invalid_temperature", f"temperature must be in 0..{MAX_TEMPERATURE:g}")
    if mode not in SAMPLING_MODES:
        raise SamplingError(
            "invalid_sampling", f"sampling must be one of {', '.join(SAMPLING_MODES)}"
        )
