"""Errors the API reports: an HTTP status, a machine-readable code and a human message."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds: sent as `Retry-After` (429, 503)


# Audio the gateway cannot take: 415 when the bytes are not (whole, accepted) audio, 422 when
# they are audio but over a limit, or the decoder gave up on them.
_AUDIO_422 = frozenset(
    {
        "audio_too_long",
        "audio_too_short",
        "decoder_crashed",
        "decode_limit_exceeded",
        "decode_timeout",
    }
)


def audio_error(code: str, message: str) -> ApiError:
    return ApiError(422 if code in _AUDIO_422 else 415, code, message)
