"""A small API client for the CLI (and for scripts): one method per route, errors raised."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from .settings import Settings


class ClientError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}, HTTP {status}]")
        self.status, self.code, self.message = status, code, message


def default_url(settings: Settings) -> str:
    return os.environ.get("MOSS_URL") or f"http://{settings.host}:{settings.port}"


def default_key(settings: Settings) -> str | None:
    if settings.api_key is not None:
        return settings.api_key.get_secret_value()
    path = Path(settings.home) / "admin.key"
    return path.read_text().strip() if path.is_file() else None


class Client:
    def __init__(self, url: str, key: str | None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ClientError(
                0,
                "unreachable",
                f"cannot reach {self.http.base_url}: is the "
                "platform up (`mossctl up`)? Set MOSS_URL otherwise",
            ) from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": response.text[:200]}
            raise ClientError(response.status_code, error["code"], error["message"])
        return response.json() if response.content else None

    def submit(self, path: Path, task: str, **fields: Any) -> dict:
        data = {"task": task, **{k: str(v) for k, v in fields.items() if v is not None}}
        with path.open("rb") as handle:
            return self._call("POST", "/v1/jobs", files={"file": (path.name, handle)}, data=data)

    def job(self, job_id: str, wait: float = 0) -> dict:
        """The job; with `wait`, the server answers as soon as it ends (long poll)."""
        params = {"wait": wait} if wait else None
        return self._call("GET", f"/v1/jobs/{job_id}", params=params)

    def jobs(self, status: str | None = None, limit: int = 20, offset: int = 0) -> dict:
        params = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
        return self._call("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict:
        return self._call("DELETE", f"/v1/jobs/{job_id}")

    def create_key(self, tenant: str, scopes: list[str], name: str = "") -> dict:
        return self._call(
            "POST", "/v1/keys", json={"tenant": tenant, "scopes": scopes, "name": name}
        )

    def keys(self) -> list[dict]:
        return self._call("GET", "/v1/keys")

    def revoke_key(self, key_id: str) -> None:
        self._call("DELETE", f"/v1/keys/{key_id}")
