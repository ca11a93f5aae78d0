"""The gateway's outbound HTTP to user-named URLs: webhook deliveries and audio_url downloads.

Every call goes through services.core.egress first: the host is resolved once, checked, and
the connection goes to the checked address (Host header and TLS SNI keep the name, so the
certificate is verified for it). Redirects are not followed (a redirect could name any
address), proxies from the environment are not used (they would resolve the name again).
"""

from __future__ import annotations

import tempfile
import time
from typing import BinaryIO

import httpx

from ..core.egress import Pinned
from ..core.errors import ApiError
from ..core.settings import Settings

CHUNK = 1024 * 1024
USER_AGENT = "moss-audio-platform"


def client(timeout: float) -> httpx.Client:
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)


def _request(http: httpx.Client, method: str, pinned: Pinned, **kwargs) -> httpx.Request:
    headers = {"Host": pinned.host_header, "User-Agent": USER_AGENT, **kwargs.pop("headers", {})}
    extensions = {"sni_hostname": pinned.host} if pinned.scheme == "https" else {}
    return http.build_request(
        method, pinned.pinned_url, headers=headers, extensions=extensions, **kwargs
    )


def post(http: httpx.Client, pinned: Pinned, body: bytes, headers: dict[str, str]):
    """POST to the checked address; the response (a redirect is just a non-2xx answer)."""
    request = _request(http, "POST", pinned, content=body, headers=headers)
    return http.send(request)


def fetch_audio(pinned: Pinned, settings: Settings) -> tuple[BinaryIO, int]:
    """Download audio_url into a temporary file, within the upload limit and the time limit.
    Any failure is an ApiError; nothing is kept of a partial download."""
    limit = settings.max_upload_bytes
    deadline = time.monotonic() + settings.audio_url_timeout_s
    spool = tempfile.SpooledTemporaryFile(max_size=8 * CHUNK)  # noqa: SIM115 (returned)
    try:
        with client(settings.audio_url_timeout_s) as http:
            response = http.send(_request(http, "GET", pinned), stream=True)
            try:
                if response.status_code != 200:
                    raise ApiError(
                        422,
                        "audio_url_failed",
                        f"audio_url answered HTTP {response.status_code}; it must answer 200 "
                        "with the audio (redirects are not followed)",
                    )
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > limit:
                    raise _too_large(settings)
                size = 0
                for chunk in response.iter_bytes(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(settings)
                    if time.monotonic() > deadline:
                        raise ApiError(
                            422,
                            "audio_url_failed",
                            f"audio_url took longer than {settings.audio_url_timeout_s:g} s",
                        )
                    spool.write(chunk)
            finally:
                response.close()
    except httpx.HTTPError as exc:
        spool.close()
        raise ApiError(422, "audio_url_failed", f"could not fetch audio_url: {exc}") from exc
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool, size


def _too_large(settings: Settings) -> ApiError:
    return ApiError(413, "upload_too_large", f"the audio exceeds {settings.max_upload_mb} MB")
