"""POST /v1/registry/models/import at the gateway: what it checks, stores and queues (the run
itself is tests/integration/test_import_api.py), and the rollback body's required alias."""

from __future__ import annotations

import io
import random
import tarfile

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from tests.jobs_env import make_context

ROUTE = "/v1/registry/models/import"


def checkpoint_tar(size: int = 2000) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("ckpt/config.json")
        data = b'{"pad": "' + random.Random(size).randbytes(size).hex().encode() + b'"}'
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("import")
    ctx = make_context(home, mlflow_uri="http://127.0.0.1:9", import_max_bytes=64 * 1024)
    queued: list[tuple[str, str, dict]] = []
    app = create_app(
        ctx.settings, ctx, run_sweeper=False, enqueue_pipeline=lambda *r: queued.append(r)
    )
    keys = {
        scope: {"Authorization": f"Bearer {ctx.store.create_key('acme', [scope])[0]}"}
        for scope in ("registry", "jobs", "admin")
    }
    keys["other"] = {"Authorization": f"Bearer {ctx.store.create_key('rival', ['registry'])[0]}"}
    with TestClient(app) as client:
        yield client, ctx, keys, queued


def stored(ctx) -> list[str]:
    return ctx.storage.list_keys("imports/")


def test_an_uploaded_archive_is_stored_under_the_tenant_and_queued(env) -> None:
    client, ctx, keys, queued = env
    archive = checkpoint_tar()
    response = client.post(
        ROUTE,
        headers=keys["admin"],  # an alias with it: admin only (below)
        files={"file": ("../../My Model.tar.gz", archive)},
        data={"name": "moss-audio-tiny-imported", "alias": "staging"},
    )
    assert response.status_code == 202, response.text
    run = response.json()
    assert response.headers["Location"].endswith(f"/v1/pipelines/runs/{run['run_id']}")
    run_id, pipeline, params = queued[-1]
    assert (run_id, pipeline) == (run["run_id"], "import")
    assert params["name"] == "moss-audio-tiny-imported" and params["alias"] == "staging"
    assert params["uploaded"] is True and params["actor"].startswith("acme:")
    key = params["key"]
    assert key.startswith("imports/acme/uploads/") and key.endswith("/My_Model.tar.gz")
    assert ctx.storage.get_bytes(key) == archive


def test_a_refused_upload_stores_nothing(env) -> None:
    client, ctx, keys, queued = env
    before, count = stored(ctx), len(queued)
    cases = [
        ({"file": ("x.tar", b"not an archive at all" * 50)}, {"name": "m"}, 415, "not_an_archive"),
        ({"file": ("x.tar", checkpoint_tar(100_000))}, {"name": "m"}, 413, "upload_too_large"),
        ({"file": ("x.tar", checkpoint_tar())}, {"name": "../m"}, 422, "invalid_request"),
        (
            {"file": ("x.tar", checkpoint_tar())},
            {"name": "m", "alias": "prod"},
            422,
            "invalid_alias",
        ),
        (
            {"file": ("x.tar", checkpoint_tar())},
            {"name": "m", "hub_id": "a/b"},
            422,
            "unknown_field",
        ),
        ({"other": ("x.tar", checkpoint_tar())}, {"name": "m"}, 422, "unknown_field"),
        ({"file": (None, "text")}, {"name": "m"}, 422, "archive_required"),
    ]
    for files, data, status, code in cases:
        response = client.post(ROUTE, headers=keys["registry"], files=files, data=data)
        assert response.status_code == status, (code, response.text)
        assert response.json()["error"]["code"] == code
    assert stored(ctx) == before and len(queued) == count


def test_only_an_admin_import_moves_an_alias(env) -> None:
    """Model names and aliases are the platform's: a `registry` key naming `alias` could move
    `production` of the model every tenant is served (the import promotes by force)."""
    client, ctx, keys, queued = env
    before, count = stored(ctx), len(queued)
    for alias in ("production", "candidate"):
        by_reference = client.post(
            ROUTE, headers=keys["registry"], json={"name": "m", "hub_id": "a/b", "alias": alias}
        )
        upload = client.post(
            ROUTE, headers=keys["registry"], files={"file": ("x.tar", checkpoint_tar())},
            data={"name": "m", "alias": alias},
        )  # fmt: skip
        for response in (by_reference, upload):
            assert response.status_code == 403, response.text
            error = response.json()["error"]
            assert error["code"] == "alias_admin_only" and "admin" in error["message"]
    assert stored(ctx) == before and len(queued) == count  # nothing stored, nothing queued
    plain = client.post(ROUTE, headers=keys["registry"], json={"name": "m", "hub_id": "a/b"})
    assert plain.status_code == 202 and "alias" not in queued[-1][2]
    admin = client.post(
        ROUTE, headers=keys["admin"], json={"name": "m", "hub_id": "a/b", "alias": "production"}
    )
    assert admin.status_code == 202 and queued[-1][2]["alias"] == "production"
    assert queued[-1][2]["actor"].startswith("acme:")  # the promotion is recorded with its actor


def test_the_sweeper_deletes_the_upload_of_a_run_cancelled_while_queued(env) -> None:
    from services.core.jobstore import RunStore
    from services.jobs.sweeper import _ended_uploads

    client, ctx, keys, queued = env
    runs = []
    for _ in range(2):
        response = client.post(
            ROUTE, headers=keys["registry"], files={"file": ("x.tar", checkpoint_tar())},
            data={"name": "m"},
        )  # fmt: skip
        assert response.status_code == 202, response.text
        runs.append((response.json()["run_id"], queued[-1][2]["key"]))
    (cancelled, gone), (waiting, kept) = runs
    response = client.delete(f"/v1/pipelines/runs/{cancelled}", headers=keys["registry"])
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    # A run's parameters cannot make the sweeper delete another tenant's object.
    forged = RunStore.of(ctx.store).create("acme", "import", {"key": "imports/rival/theirs.tar.gz",
                                           "uploaded": True}, "local")  # fmt: skip
    ctx.storage.put_bytes("imports/rival/theirs.tar.gz", checkpoint_tar())
    RunStore.of(ctx.store).request_cancel(forged.id)
    assert ctx.storage.exists(gone) and ctx.storage.exists(kept)
    _ended_uploads(ctx)  # what the gateway's sweeper does every pass
    assert not ctx.storage.exists(gone)  # its run never started: nothing else would delete it
    assert ctx.storage.exists(kept)  # still queued: the worker needs it
    assert ctx.storage.exists("imports/rival/theirs.tar.gz")
    assert (
        client.get(f"/v1/pipelines/runs/{waiting}", headers=keys["registry"]).json()["status"]
        == "queued"
    )


def test_a_key_must_be_the_tenants_own_and_exist(env) -> None:
    client, ctx, keys, queued = env
    ctx.storage.put_bytes("imports/acme/ckpt.tar.gz", checkpoint_tar())
    ctx.storage.put_bytes("imports/acme/folder/config.json", b"{}")
    ctx.storage.put_bytes("imports/rival/theirs.tar.gz", checkpoint_tar())
    for key in ("imports/acme/ckpt.tar.gz", "imports/acme/folder", "imports/acme/folder/"):
        response = client.post(ROUTE, headers=keys["registry"], json={"name": "m", "key": key})
        assert response.status_code == 202, response.text
        assert queued[-1][2] == {"name": "m", "key": key, "actor": queued[-1][2]["actor"],
                                 "uploaded": False}  # fmt: skip
    # Another tenant's key answers like a missing one (and names only what was asked).
    theirs = client.post(
        ROUTE, headers=keys["registry"], json={"name": "m", "key": "imports/rival/theirs.tar.gz"}
    )
    missing = client.post(
        ROUTE, headers=keys["registry"], json={"name": "m", "key": "imports/rival/nothing.tar.gz"}
    )
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["message"] == missing.json()["error"]["message"].replace(
        "nothing", "theirs"
    )
    for key in ("imports/acme/../rival/theirs.tar.gz", "audio/acme/x", "imports/acme//x"):
        response = client.post(ROUTE, headers=keys["registry"], json={"name": "m", "key": key})
        assert response.status_code == 404, (key, response.text)


def test_hub_ids_are_repo_ids_never_paths(env) -> None:
    client, _, keys, queued = env
    response = client.post(
        ROUTE,
        headers=keys["admin"],
        json={"name": "m", "hub_id": "OpenMOSS-Team/MOSS-Audio-4B-Instruct", "revision": "main"},
    )
    assert response.status_code == 202, response.text
    assert queued[-1][2]["hub_id"] == "OpenMOSS-Team/MOSS-Audio-4B-Instruct"
    assert queued[-1][2]["revision"] == "main"
    for hub_id in ("/etc/passwd", "../x", "a/b/c", "~/ckpt", "./x"):
        response = client.post(ROUTE, headers=keys["admin"], json={"name": "m", "hub_id": hub_id})
        assert response.status_code == 422, (hub_id, response.text)
    for body, code in [
        ({"name": "m"}, "source_required"),
        ({"name": "m", "hub_id": "a/b", "key": "imports/acme/ckpt.tar.gz"}, "source_required"),
        ({"name": "m", "key": "imports/acme/ckpt.tar.gz", "revision": "v1"}, "invalid_revision"),
        ({"name": "m", "hub_id": "a/b", "extra": 1}, "invalid_request"),
    ]:
        response = client.post(ROUTE, headers=keys["admin"], json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (422, code), body
    assert client.post(ROUTE, headers=keys["admin"], json=["a/b"]).status_code == 422


def test_only_admin_and_registry_keys_import(env) -> None:
    client, _, keys, _ = env
    body = {"name": "m", "hub_id": "a/b"}
    assert client.post(ROUTE, headers=keys["jobs"], json=body).status_code == 403
    assert client.post(ROUTE, headers=keys["other"], json=body).status_code == 202
    plain = client.post(
        ROUTE, headers={**keys["registry"], "Content-Type": "text/plain"}, content=b"a/b"
    )
    assert plain.status_code == 415 and plain.json()["error"]["code"] == "unsupported_media_type"


def test_rollback_needs_its_alias(env) -> None:
    client, _, keys, _ = env
    response = client.post("/v1/registry/models/m/rollback", headers=keys["admin"], json={})
    assert response.status_code == 422 and "alias" in response.json()["error"]["message"]


def test_promote_and_rollback_without_an_alias_exit_non_zero_with_one_line() -> None:
    from typer.testing import CliRunner

    from services.cli import app

    runner = CliRunner()
    for args in (
        ["promote", "m", "3"],
        ["rollback", "m"],
        ["promote", "m", "3", "--alias", "prod"],
    ):
        result = runner.invoke(app, ["models", *args])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "--alias" in lines[0], result.output


def test_the_cli_imports_through_mlflow_only_where_it_has_it(tmp_path) -> None:
    from services.cli.models import Via, choose_route
    from services.core.settings import Settings

    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    api_only = Settings(home=home, url="http://gw:8000", api_key="moss_x")
    assert choose_route(api_only) == Via.api
    both = Settings(home=home, url="http://gw:8000", api_key="moss_x", mlflow_uri="http://m:5000")
    assert choose_route(both) == Via.mlflow
    (home / "run" / "mlflow.url").write_text("http://127.0.0.1:5000\n")  # a `mossctl up` here
    assert choose_route(Settings(home=home)) == Via.mlflow
    assert choose_route(api_only) == Via.api  # MOSS_URL names another platform: its API


def test_a_folder_key_is_fetched_file_by_file(tmp_path) -> None:
    from pipelines.importer import ImportFailed, fetch_object
    from services.core.storage import LocalStorage

    storage = LocalStorage(tmp_path / "objects")
    storage.put_bytes("imports/acme/ckpt/config.json", b"{}")
    storage.put_bytes("imports/acme/ckpt/sub/weights.bin", b"\x01" * 100)
    said: list = []
    work = tmp_path / "work"
    work.mkdir()
    got = fetch_object(storage, "imports/acme/ckpt/", work, 1000, lambda *a: said.append(a))
    assert (got / "config.json").read_bytes() == b"{}"
    assert (got / "sub" / "weights.bin").read_bytes() == b"\x01" * 100
    assert said[-1] == ("download: imports/acme/ckpt/sub/weights.bin", 2, 2)
    for max_bytes, words in ((50, "MOSS_IMPORT_MAX_BYTES"), (1000, "no object")):
        again = tmp_path / f"again-{max_bytes}"
        again.mkdir()
        key = "imports/acme/ckpt" if max_bytes == 50 else "imports/acme/none"
        with pytest.raises(ImportFailed, match=words):
            fetch_object(storage, key, again, max_bytes, lambda *a: None)
        # Refused on the listing's sizes: not one byte downloaded first (a folder may be TBs).
        assert list((again / "files").iterdir()) == []


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("http://ops:s3cret@127.0.0.1:9", "import_failed"),  # the registry does not answer
        ("foo://ops:s3cret@127.0.0.1:9", "import_error"),  # MLflow's own error, not ours
    ],
)
def test_the_step_deletes_its_upload_however_it_ends_and_never_says_a_password(
    tmp_path, monkeypatch, capsys, uri, code
) -> None:
    """The run's error and its log are the tenant's to read: an operator's credentials in
    MOSS_MLFLOW_URI must not reach them, whichever way the step fails."""
    from pipelines.importer import ImportRefused, run_import
    from services.core.settings import get_settings
    from services.core.storage import LocalStorage

    monkeypatch.setenv("MOSS_HOME", str(tmp_path))
    monkeypatch.setenv("MOSS_MLFLOW_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    get_settings.cache_clear()
    try:
        storage = LocalStorage(get_settings().resolved_storage_dir)
        key = "imports/acme/uploads/0a/ckpt.tar.gz"
        storage.put_bytes(key, checkpoint_tar())
        with pytest.raises(ImportRefused) as refused:
            run_import("m", key=key, uploaded=True, actor="acme:k")
    finally:
        get_settings.cache_clear()
    message = str(refused.value)
    assert message.startswith(f"{code}: ") and "***@127.0.0.1:9" in message, message
    output = capsys.readouterr().out
    assert "s3cret" not in message + output and f'"code": "{code}"' in output
    assert not storage.exists(key)  # an archive of tens of GB: never left behind
