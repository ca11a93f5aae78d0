"""What a request may ask of the decoder, defined once for every entry point.

The API, the KServe generator and the CLI all accept the same budget and temperature, so a job
that passes one passes all. `greedy` uses the request's temperature (0: argmax); `model` uses
the checkpoint's own generation_config.json (its temperature, top_p and top_k).

A temperature is 0 (greedy) or in MIN_TEMPERATURE..MAX_TEMPERATURE: sampling divides the logits
by it in float32, where a tiny positive one (1e-300) is 0: the logits become inf, the softmax
NaN, and the job failed in the sampler. Such a value is refused here, before a job is made, on
every route (the OpenAI-compatible ones too: OpenAI takes 0..2; below 0.01 only 0 is served).
"""

from __future__ import annotations

MAX_NEW_TOKENS = 8192
MIN_TEMPERATURE = 0.01  # the smallest positive temperature (0 is greedy)
MAX_TEMPERATURE = 2.0
TEMPERATURE_RULE = f"0 (greedy) or {MIN_TEMPERATURE:g}..{MAX_TEMPERATURE:g}"
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
    if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise SamplingError("invalid_temperature", f"temperature must be {TEMPERATURE_RULE}")
    if mode not in SAMPLING_MODES:
        raise SamplingError(
            "invalid_sampling", f"sampling must be one of {', '.join(SAMPLING_MODES)}"
        )
