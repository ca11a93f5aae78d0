"""What the gateway refuses, and how: numbers past their range, temperatures the sampler cannot
use, malformed bodies, text that is not UTF-8; the framework's own errors with named codes (and
`Allow` on a 405); and an OpenAPI document that lists the choices and every status it answers.
Over the real app, a real SQLite job store and local storage; a refusal leaves nothing behind."""

from __future__ import annotations

import base64
import json
import os
from http import HTTPStatus

import pytest
from fastapi.testclient import TestClient

from model.tasks import TASKS
from services.core.jobstate import Stage, Status
from services.core.modelref import ALIASES
from services.gateway.app import create_app
from services.gateway.errors import HTTP_CODES, http_code
from services.gateway.schemas import SCOPES
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import make_context, write_checkpoint


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    write_checkpoint(home / "models" / "tiny")
    ctx = make_context(home, max_upload_mb=1.0, max_audio_seconds=10.0, sync_timeout_s=0.5)
    app = create_app(ctx.settings, ctx, run_sweeper=False, enqueue_pipeline=lambda *run: None)
    key, _ = ctx.store.create_key("inputs", list(SCOPES))
    with TestClient(app) as client:
        yield client, ctx, {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def clip() -> bytes:
    return encode(*stereo_tone(1.0), 44_100, "flac")


def stored(ctx) -> tuple[int, int]:
    """(objects in storage, jobs in the store): what a refused request must not change."""
    files = sum(len(f) for _, _, f in os.walk(ctx.settings.resolved_storage_dir))
    return files, ctx.store.list_jobs("inputs")[1]


def submit(client, headers, clip, route="/v1/jobs", **fields):
    task = {"task": "caption"} if route == "/v1/jobs" else {"model": "tiny"}
    files = {"file": ("clip.flac", clip, "audio/flac")}
    return client.post(route, headers=headers, files=files, data={**task, **fields})


def chat(client, headers, clip, **fields):
    audio = {"data": base64.b64encode(clip).decode(), "format": "wav"}
    content = [{"type": "input_audio", "input_audio": audio}, {"type": "text", "text": "What?"}]
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], **fields}
    return client.post("/v1/chat/completions", headers=headers, json=body)


def error_of(response) -> str:
    return response.json()["error"]["code"]


# -- numbers past their range -------------------------------------------------------------------

BIG = str(2**63)  # one past SQLite's INTEGER: was a 500 (OverflowError) as `offset`


@pytest.mark.parametrize(
    ("query", "code"),
    [
        (f"offset={BIG}", "invalid_request"),
        ("offset=1000000001", "invalid_request"),
        (f"limit={BIG}", "invalid_request"),
        ("offset=-1", "invalid_request"),
        ("status=lost", "invalid_status"),
    ],
)
def test_list_parameters_out_of_range_are_422(env, query, code) -> None:
    client, _, headers = env
    response = client.get(f"/v1/jobs?{query}", headers=headers)
    assert response.status_code == 422, response.text
    assert error_of(response) == code


def test_the_largest_offset_still_answers(env) -> None:
    client, _, headers = env
    response = client.get("/v1/jobs?offset=1000000000", headers=headers)
    assert response.status_code == 200 and response.json()["jobs"] == []


def test_job_numbers_past_their_range_are_422(env, clip) -> None:
    client, ctx, headers = env
    before = stored(ctx)
    for value in (BIG, "0", "8193"):
        response = submit(client, headers, clip, max_new_tokens=value)
        assert response.status_code == 422 and error_of(response) == "invalid_max_new_tokens"
    for name in ("max_tokens", "max_completion_tokens"):
        response = chat(client, headers, clip, **{name: 2**70})
        assert response.status_code == 422 and error_of(response) == "invalid_request"
    response = client.get(f"/v1/jobs/x?wait={BIG}", headers=headers)
    assert response.status_code == 422 and error_of(response) == "invalid_request"
    assert stored(ctx) == before


def test_every_number_the_api_takes_has_a_documented_maximum(env) -> None:
    """An integer parameter without a bound is how `offset` overflowed the database."""
    client, _, _ = env
    spec = client.get("/openapi.json").json()
    unbounded = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if not _bounded(parameter["schema"]):
                    unbounded.append(f"{method} {path} {parameter['name']}")
    requests = _request_schemas(spec)
    for name, schema in spec["components"]["schemas"].items():
        for field, prop in schema.get("properties", {}).items():
            if name in requests and not _bounded(prop):
                unbounded.append(f"{name}.{field}")
    assert not unbounded, unbounded


def _bounded(schema: dict) -> bool:
    """Not a number, or a number with a maximum (here, or on each numeric branch), or one value."""
    if "maximum" in schema or "const" in schema or "enum" in schema:
        return True
    if "anyOf" in schema:
        return all(_bounded(branch) for branch in schema["anyOf"])
    return schema.get("type") not in ("integer", "number")


def _request_schemas(spec: dict) -> set[str]:
    refs = set()
    for operations in spec["paths"].values():
        for operation in operations.values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                refs |= _refs(media.get("schema", {}), spec)
    return refs


def _refs(schema, spec, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    text = json.dumps(schema)
    for name in spec["components"]["schemas"]:
        if f'"#/components/schemas/{name}"' in text and name not in seen:
            seen.add(name)
            _refs(spec["components"]["schemas"][name], spec, seen)
    return seen


# -- temperature --------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", ["1e-300", "0.005", "-0.1", "2.5", "nan", "inf"])
@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/audio/transcriptions"])
def test_a_temperature_the_sampler_cannot_use_is_refused(env, clip, route, temperature) -> None:
    """1e-300 was accepted and the job then failed in torch (inf logits, NaN probabilities)."""
    client, ctx, headers = env
    before = stored(ctx)
    response = submit(client, headers, clip, route, temperature=temperature)
    assert response.status_code == 422, response.text
    assert error_of(response) == "invalid_temperature"
    assert "0 (greedy) or 0.01..2" in response.json()["error"]["message"]
    assert stored(ctx) == before


@pytest.mark.parametrize("temperature", [1e-300, 0.005, -0.5, 2.01])
def test_chat_completions_refuse_the_same_temperatures(env, clip, temperature) -> None:
    client, ctx, headers = env
    before = stored(ctx)
    response = chat(client, headers, clip, temperature=temperature)
    assert response.status_code == 422 and error_of(response) == "invalid_temperature"
    assert stored(ctx) == before


@pytest.mark.parametrize("temperature", ["0", "0.0", "0.01", "0.7", "2"])
def test_greedy_and_sane_temperatures_are_taken(env, clip, temperature) -> None:
    client, _, headers = env
    response = submit(client, headers, clip, temperature=temperature)
    assert response.status_code == 202, response.text
    assert response.json()["params"]["temperature"] == float(temperature)


def test_the_default_temperature_is_greedy(env, clip) -> None:
    client, _, headers = env
    response = submit(client, headers, clip)
    assert response.status_code == 202 and response.json()["params"]["temperature"] == 0.0


# -- the framework's own errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/jobs", "GET, POST"),
        ("PATCH", "/v1/jobs/some-id", "DELETE, GET"),
        ("DELETE", "/v1/keys", "GET, POST"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_a_405_names_every_method_the_path_takes(env, method, path, allow) -> None:
    client, _, headers = env
    response = client.request(method, path, headers=headers)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert error_of(response) == "method_not_allowed"


def test_every_framework_status_has_a_named_code(env) -> None:
    client, _, headers = env
    assert error_of(client.get("/v1/nothing-here", headers=headers)) == "not_found"
    assert http_code(400) == "malformed_request" and HTTP_CODES[413] == "upload_too_large"
    assert http_code(418) == "im_a_teapot" and http_code(431).startswith("request_header")
    assert all(http_code(status) != "http_error" for status in HTTPStatus if status >= 400)


MULTIPART = "multipart/form-data; boundary=b"
FILE_PART = (
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="c.flac"\r\n'
    b"Content-Type: audio/flac\r\n\r\n"
)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (MULTIPART, b'--b\r\nContent-Disposition: form-data; name="task"\r\n\r\ncaption'),
        (MULTIPART, b'--b\r\nContent-Disposition: form-data; name="task"\r\n\r\ncaption\r\n'),
        (MULTIPART, FILE_PART + b"fLaC\x00\x00\x00"),
        (MULTIPART, b"--b\r\nContent-Disposition: form-data\r\n\r\ncaption\r\n--b--\r\n"),
        (MULTIPART, b"--b\r\nContent-Disposition: bogus\r\n\r\ncaption\r\n--b--\r\n"),
        (MULTIPART, b""),
        (MULTIPART, b"this is no multipart body"),
        ("multipart/form-data", b'--b\r\nContent-Disposition: form-data; name="task"\r\n\r\nx'),
    ],
    ids=[
        "truncated-field",
        "no-closing-boundary",
        "truncated-file",
        "part-without-name",
        "bad-content-disposition",
        "empty",
        "not-multipart",
        "no-boundary",
    ],
)
@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/audio/transcriptions"])
def test_a_malformed_multipart_body_is_400_malformed_request(env, route, content_type, body):
    client, ctx, headers = env
    before = stored(ctx)
    response = client.post(route, headers={**headers, "Content-Type": content_type}, content=body)
    assert response.status_code == 400, response.text
    assert error_of(response) == "malformed_request" and response.json()["error"]["message"]
    assert stored(ctx) == before


# -- text that is not UTF-8 ---------------------------------------------------------------------


def multipart(fields: dict[str, bytes], clip: bytes, charset: str | None = None):
    """A multipart body with these text fields (raw bytes) and the clip, and its content type."""
    body = b""
    for name, value in fields.items():
        body += f'--b\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        body += value + b"\r\n"
    body += FILE_PART + clip + b"\r\n--b--\r\n"
    return body, MULTIPART + (f"; charset={charset}" if charset else "")


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/audio/transcriptions"])
def test_a_form_field_that_is_not_utf8_is_refused(env, clip, route) -> None:
    """Starlette decoded it as latin-1: the prompt b"\\xff\\xfehello" was stored as "ÿþhello"."""
    client, ctx, headers = env
    fields = {"task": b"ask"} if route == "/v1/jobs" else {"model": b"tiny"}
    body, content_type = multipart({**fields, "prompt": b"\xff\xfehello"}, clip)
    before = stored(ctx)
    response = client.post(route, headers={**headers, "Content-Type": content_type}, content=body)
    assert response.status_code == 422, response.text
    assert error_of(response) == "invalid_utf8"
    assert "'prompt'" in response.json()["error"]["message"]
    assert stored(ctx) == before


def test_utf8_text_and_a_declared_charset_are_read_as_sent(env, clip) -> None:
    client, _, headers = env
    for raw, charset in (("ÿþ héllo ✓".encode(), None), (b"\xff\xfe h\xe9llo", "latin-1")):
        body, content_type = multipart({"task": b"ask", "prompt": raw}, clip, charset)
        response = client.post(
            "/v1/jobs", headers={**headers, "Content-Type": content_type}, content=body
        )
        assert response.status_code == 202, response.text
        assert response.json()["prompt"] == raw.decode(charset or "utf-8")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"task=ask&prompt=%ff%fe", "invalid_utf8"),
        (b"task=ask&prompt=\xff\xfehello", "invalid_utf8"),
        (b"task=ask&pr%ffompt=x", "invalid_utf8"),
        ("task=ask&prompt=café&audio_url=http://127.0.0.1/x".encode(), "url_forbidden"),
    ],
    ids=["percent-escaped", "raw-bytes", "field-name", "utf8-is-fine"],
)
def test_urlencoded_forms_are_utf8_too(env, body, code) -> None:
    client, _, headers = env
    form = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    response = client.post("/v1/jobs", headers=form, content=body)
    assert response.status_code == 422 and error_of(response) == code, response.text


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", b'{"model": "\xff\xfe", "messages": []}', 422, "invalid_utf8"),
        ("/v1/keys", b'{"tenant": "t", "name": "\xc3("}', 422, "invalid_utf8"),
        ("/v1/annotations", b'{"dataset": "d\xff"}', 422, "invalid_utf8"),
        (
            "/v1/chat/completions",
            b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
            422,
            "invalid_utf8",
        ),
        ("/v1/keys", b"[" * 100_000 + b"]" * 100_000, 400, "malformed_request"),
        ("/v1/keys", b'{"tenant": ', 422, "invalid_request"),
    ],
    ids=["chat", "keys", "annotations", "lone-surrogate", "nested-too-deep", "truncated"],
)
def test_a_json_body_that_is_not_utf8_is_a_4xx(env, path, body, status, code) -> None:
    client, ctx, headers = env
    before = stored(ctx)
    json_headers = {**headers, "Content-Type": "application/json"}
    response = client.post(path, headers=json_headers, content=body)
    assert response.status_code == status, response.text
    assert error_of(response) == code
    assert stored(ctx) == before


# -- the OpenAPI document -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec(env):
    return env[0].get("/openapi.json").json()


def schema_of(spec: dict, name: str) -> dict:
    return spec["components"]["schemas"][name]


def test_the_document_lists_the_choices_from_their_definitions(spec) -> None:
    form = schema_of(spec, "Body_create_job_v1_jobs_post")["properties"]
    assert form["task"]["enum"] == list(TASKS)
    assert form["sampling"]["enum"] == ["greedy", "model"]
    assert form["priority"]["enum"] == ["normal", "high"]
    job = schema_of(spec, "JobOut")["properties"]
    assert job["status"] == {"$ref": "#/components/schemas/Status"}
    assert schema_of(spec, "Status")["enum"] == [str(s) for s in Status]
    assert schema_of(spec, "Stage")["enum"] == [str(s) for s in Stage]
    assert set(job["task"]["enum"]) == {*TASKS, "annotate"}
    move = spec["paths"]["/v1/registry/models/{name}/aliases/{alias}"]["post"]
    alias = next(p for p in move["parameters"] if p["name"] == "alias")
    assert alias["schema"]["enum"] == list(ALIASES)
    assert schema_of(spec, "Rollback")["properties"]["alias"]["enum"] == list(ALIASES)
    assert schema_of(spec, "KeyCreate")["properties"]["scopes"]["items"]["enum"] == list(SCOPES)
    listing = spec["paths"]["/v1/jobs"]["get"]["parameters"]
    status = next(p for p in listing if p["name"] == "status")["schema"]["anyOf"][0]
    assert status == {"$ref": "#/components/schemas/Status"}
    transcript = spec["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]
    ref = transcript["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert schema_of(spec, ref)["properties"]["response_format"]["enum"]


def operations(spec: dict):
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", method, operation


def test_every_status_a_route_answers_is_documented(spec) -> None:
    missing = []
    for name, method, operation in operations(spec):
        statuses = set(operation["responses"])
        need = set()
        if operation.get("security"):
            # no or a bad key, the wrong scope, the key's rate; at capacity, the database away
            need |= {"401", "403", "429", "503"}
        if method in ("post", "put", "patch"):
            need |= {"408", "413"}  # BodySizeLimit: a body that stops arriving, or too large
        if operation.get("parameters") or operation.get("requestBody"):
            need.add("422")
        content = operation.get("requestBody", {}).get("content", {})
        if {"application/json", "multipart/form-data"} & set(content):
            need.add("400")  # a body FastAPI parses
        missing += [f"{name}: {status}" for status in sorted(need - statuses)]
    assert not missing, missing
    public = {name for name, _, operation in operations(spec) if not operation.get("security")}
    assert public == {"GET /healthz", "GET /readyz"}, public
    assert "HTTPValidationError" not in json.dumps(spec)  # FastAPI's 422 is not our body


def test_every_error_has_the_error_body(spec) -> None:
    wrong = []
    for name, _, operation in operations(spec):
        for status, response in operation["responses"].items():
            if int(status) < 400 or name == "GET /readyz":  # readyz's 503 is its Health body
                continue
            content = response.get("content", {})
            schema = content.get("application/json", {}).get("schema")
            if list(content) != ["application/json"] or schema != {
                "$ref": "#/components/schemas/ErrorBody"
            }:
                wrong.append(f"{name}: {status} {content}")
    assert not wrong, wrong
