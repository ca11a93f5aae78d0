"""What every command group shares: the consoles, the one-line errors, and the API client.

Errors print one line saying what to fix and exit non-zero (2: the input, 1: the server or
the environment). The client has one method per route and raises ClientError with the API's
machine-readable code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from ..core.settings import Settings, get_settings

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    # escaped: a message holds server text, where `[pipeline_failed]` read as markup vanished
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def client() -> Client:
    settings = get_settings()
    return Client(default_url(settings), default_key(settings))


def guard(call, *args, **kwargs):
    """Run an API call; a ClientError becomes the one-line error and exit code."""
    try:
        return call(*args, **kwargs)
    except ClientError as exc:
        fail(exc.message + (f" [{exc.code}]" if exc.status else ""), 1 if exc.status >= 500 else 2)


class ClientError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}, HTTP {status}]")
        self.status, self.code, self.message = status, code, message


def default_url(settings: Settings) -> str:
    return settings.url or f"http://{settings.host}:{settings.port}"


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

    def events(self, job_id: str, reconnects: int = 5) -> Iterator[tuple[str, dict]]:
        """The job's server-sent events as (event, data) until `done`; a dropped connection
        resumes after the last event seen (Last-Event-ID)."""
        last: str | None = None
        for _ in range(reconnects + 1):
            headers = {"Last-Event-ID": last} if last else {}
            try:
                with self.http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        error = response.json()["error"]
                        raise ClientError(response.status_code, error["code"], error["message"])
                    fields: dict[str, str] = {}
                    for line in response.iter_lines():
                        if line.startswith(":"):
                            continue
                        if line:
                            name, _, value = line.partition(": ")
                            fields[name] = value
                            continue
                        if "event" in fields:
                            last = fields.get("id", last)
                            yield fields["event"], json.loads(fields.get("data", "{}"))
                            if fields["event"] == "done":
                                return
                        fields = {}
            except (httpx.TransportError, httpx.StreamError):
                continue  # resume after `last`
        raise ClientError(0, "unreachable", f"lost the event stream of job {job_id}")

    def jobs(self, status: str | None = None, limit: int = 20, offset: int = 0) -> dict:
        params = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
        return self._call("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str, purge: bool = False) -> dict:
        params = {"purge": "true"} if purge else None
        return self._call("DELETE", f"/v1/jobs/{job_id}", params=params)

    def rotate_webhook_secret(self, key_id: str) -> dict:
        return self._call("POST", f"/v1/keys/{key_id}/webhook-secret")

    def create_key(self, tenant: str, scopes: list[str], name: str = "") -> dict:
        return self._call(
            "POST", "/v1/keys", json={"tenant": tenant, "scopes": scopes, "name": name}
        )

    def keys(self) -> list[dict]:
        return self._call("GET", "/v1/keys")

    def revoke_key(self, key_id: str) -> None:
        self._call("DELETE", f"/v1/keys/{key_id}")

    # --- datasets (docs/datasets.md) ---------------------------------------------------------

    def datasets(self) -> list[dict]:
        return self._call("GET", "/v1/datasets")

    def missing_audio(self, name: str, digests: list[str]) -> list[str]:
        body = {"digests": digests}
        return self._call("POST", f"/v1/datasets/{name}/audio-check", json=body)["missing"]

    def put_audio(self, name: str, digest: str, path: Path) -> None:
        with path.open("rb") as handle:
            self._call("PUT", f"/v1/datasets/{name}/audio/{digest}", content=handle)

    def put_manifest(self, name: str, manifest: bytes, default_prompt: str, strict: bool) -> dict:
        params = {"default_prompt": default_prompt, "strict": strict}
        return self._call("PUT", f"/v1/datasets/{name}/manifest", content=manifest, params=params)

    def delete_dataset(self, name: str) -> None:
        self._call("DELETE", f"/v1/datasets/{name}")

    def dataset_manifest(self, name: str) -> bytes:
        response = self.http.get(f"/v1/datasets/{name}/manifest")
        if response.status_code >= 400:
            self._call("GET", f"/v1/datasets/{name}")  # raises the API's error
        return response.content

    def annotate(
        self,
        dataset: str,
        items: list[dict] | None,
        webhook_url: str | None,
        label_map: dict[str, str] | None = None,
    ) -> dict:
        body = {"dataset": dataset, "items": items, "webhook_url": webhook_url,
                "label_map": label_map}  # fmt: skip
        return self._call("POST", "/v1/annotations", json={k: v for k, v in body.items()
                                                           if v is not None})  # fmt: skip

    # --- pipeline runs (docs/pipelines.md) ---------------------------------------------------

    def start_run(self, name: str, params: dict[str, Any]) -> dict:
        return self._call("POST", f"/v1/pipelines/{name}/runs", json={"params": params})

    def pipeline_run(self, run_id: str) -> dict:
        return self._call("GET", f"/v1/pipelines/runs/{run_id}")

    def pipeline_runs(self, status: str | None, tenant: str | None, limit: int, offset: int):
        params = {"limit": limit, "offset": offset, "status": status, "tenant": tenant}
        return self._call("GET", "/v1/pipelines/runs",
                          params={k: v for k, v in params.items() if v is not None})  # fmt: skip

    def cancel_run(self, run_id: str) -> dict:
        return self._call("DELETE", f"/v1/pipelines/runs/{run_id}")

    def run_log(self, run_id: str, follow: bool = False) -> Iterator[bytes]:
        """The run's log as it streams (following: until the run ends)."""
        params = {"follow": "true"} if follow else None
        path = f"/v1/pipelines/runs/{run_id}/log"
        with self.http.stream("GET", path, params=params, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                try:
                    error = response.json()["error"]
                except (ValueError, KeyError, TypeError):
                    error = {"code": "http_error", "message": response.text[:200]}
                raise ClientError(response.status_code, error["code"], error["message"])
            yield from response.iter_bytes()
