"""Imports through the gateway on the real stack (the session's `stack`: gateway, pipeline
worker running kfp.local, MLflow, the local object store): `mossctl models import` with only a
URL and a key (a directory, packed and uploaded), an object-store key, and hostile archives
uploaded over HTTP (zip and the caps: tests/unit/test_archive.py). The hub
path itself cannot be reached from here; tests/integration/test_import.py covers it through a
hub cache, and tests/unit/test_registry_import.py what the route checks.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from services.core.archive import pack
from services.core.registry import Registry
from services.core.storage import LocalStorage
from tests.hub_layout import write_hub_checkpoint, write_hub_tokenizer

pytestmark = pytest.mark.integration
MOSSCTL = str(Path(sys.executable).with_name("mossctl"))
NAME = "moss-audio-tiny-via-api"
TENANT = "importers"
ROUTE = "/v1/registry/models/import"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tokenizer = tmp_path_factory.mktemp("tokenizer")
    write_hub_tokenizer(tokenizer)
    directory = tmp_path_factory.mktemp("ckpt") / "MOSS-Audio-tiny"
    write_hub_checkpoint(directory, tokenizer_from=tokenizer)
    return directory


@pytest.fixture(scope="module")
def key(api) -> str:
    """A key of its own tenant with the `registry` scope only (no admin, no jobs)."""
    created = api.post("/v1/keys", json={"tenant": TENANT, "scopes": ["registry"]})
    assert created.status_code == 201, created.text
    return created.json()["key"]


@pytest.fixture(scope="module")
def imported(stack, checkpoint, key, tmp_path_factory) -> dict:
    """`mossctl models import DIR` with nothing but MOSS_URL and the key (no MLflow URI, a
    MOSS_HOME without a stack): the directory is packed, uploaded and followed."""
    home = tmp_path_factory.mktemp("client-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOSS_", "MLFLOW_"))}
    env |= {"MOSS_URL": stack.url, "MOSS_API_KEY": key, "MOSS_HOME": str(home)}
    args = [MOSSCTL, "models", "import", str(checkpoint), "--name", NAME]  # no alias: not admin
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    return {"done": done, "env": env}


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def follow(api, key: str, run_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/v1/pipelines/runs/{run_id}", headers=headers(key)).json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        time.sleep(0.3)
    raise TimeoutError(f"run {run_id} still {run['status']} after {timeout} s: {run}")


def version_of(api, name: str) -> dict | None:
    for model in api.get("/v1/registry/models").json():
        if model["name"] == name:
            return model
    return None


def storage(stack) -> LocalStorage:
    return LocalStorage(stack.settings.resolved_storage_dir)


def test_mossctl_imports_with_only_the_url_and_a_key(api, stack, checkpoint, imported) -> None:
    done = imported["done"]
    assert done.returncode == 0, done.stderr
    assert f"registered {NAME} v1 from" in done.stdout
    model = version_of(api, NAME)
    assert model is not None and model["aliases"] == {}
    (version,) = model["versions"]
    assert version["metrics_status"] == "imported" and version["run_id"], version
    assert version["source"].startswith(f"upload:imports/{TENANT}/uploads/"), version
    assert version["source"].endswith("/MOSS-Audio-tiny.tar")
    # Lineage: the SHA-256 of every file, as the direct import records it.
    registry = Registry(stack.mlflow_uri)
    tags = registry.version_tags(NAME, "1")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in checkpoint.iterdir()}
    listing = "".join(f"{files[p]}  {p}\n" for p in sorted(files)).encode()
    assert tags["checkpoint_sha256"] == hashlib.sha256(listing).hexdigest()
    assert not any(k.startswith("decision.") for k in tags)  # nothing promoted
    assert storage(stack).list_keys(f"imports/{TENANT}/uploads/") == []  # the run is done with it


def test_an_object_store_key_is_imported_and_only_an_admin_moves_its_alias(
    api, stack, checkpoint, key, imported
):
    target = stack.settings.resolved_storage_dir / "imports" / TENANT / "ckpt.tar"
    target.parent.mkdir(parents=True, exist_ok=True)
    pack(checkpoint, target)
    body = {"name": NAME, "key": f"imports/{TENANT}/ckpt.tar"}
    refused = api.post(ROUTE, headers=headers(key), json={**body, "alias": "production"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "alias_admin_only"
    response = api.post(ROUTE, headers=headers(key), json=body)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/pipelines/runs/{response.json()['run_id']}"
    run = follow(api, key, response.json()["run_id"])
    # The same files as the CLI's upload: the version already there, its alias moved.
    assert run["status"] == "succeeded", run
    assert (run["model"], run["version"]) == (NAME, "1") and run["mlflow_run_id"]
    assert run["progress"]["pipeline_step"] == "import"
    assert "registered before" in run["progress"]["message"]
    assert version_of(api, NAME)["aliases"] == {}
    assert target.is_file()  # the tenant's own object stays
    # An admin's import with an alias: an explicit promotion, recorded with its actor.
    admin = api.post(
        ROUTE, files={"file": ("ckpt.tar", target.read_bytes())},
        data={"name": NAME, "alias": "candidate"},
    )  # fmt: skip
    assert admin.status_code == 202, admin.text
    assert follow(api, stack.api_key, admin.json()["run_id"])["status"] == "succeeded"
    assert version_of(api, NAME)["aliases"] == {"candidate": "1"}
    tags = Registry(stack.mlflow_uri).version_tags(NAME, "1")
    (decision,) = (v for k, v in tags.items() if k.startswith("decision.candidate."))
    assert "promoted explicitly" in decision, decision
    # Another tenant's key answers like a missing one.
    assert (
        api.post(ROUTE, json={"name": NAME, "key": f"imports/{TENANT}/ckpt.tar"}).status_code == 404
    )


def hostile(kind: str, checkpoint: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(checkpoint / "config.json", "ckpt/config.json")
        info = tarfile.TarInfo("ckpt/../../escaped.txt" if kind == "traversal" else "ckpt/x")
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 5
            tar.addfile(info, io.BytesIO(b"owned"))
    return buffer.getvalue()


def test_a_hostile_archive_fails_its_run_and_registers_nothing(api, stack, checkpoint, key):
    response = api.post(
        ROUTE, headers=headers(key), files={"file": ("x.tar", hostile("traversal", checkpoint))},
        data={"name": "hostile-traversal"},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    run = follow(api, key, response.json()["run_id"])
    assert run["status"] == "failed", run
    error = run["progress"]["error"]
    assert error["code"] == "archive_unsafe_member" and "climbs out" in error["message"], run
    assert "archive_unsafe_member" in run["error"]["message"], run["error"]
    assert version_of(api, "hostile-traversal") is None
    assert storage(stack).list_keys(f"imports/{TENANT}/uploads/") == []
    assert not (stack.settings.home / "escaped.txt").exists()


def test_mossctl_exits_non_zero_with_the_runs_error(api, checkpoint, imported, tmp_path) -> None:
    archive = tmp_path / "linked.tar"
    archive.write_bytes(hostile("symlink", checkpoint))
    args = [MOSSCTL, "models", "import", str(archive), "--name", "hostile-symlink"]
    done = subprocess.run(args, env=imported["env"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.stdout, done.stderr)
    line = done.stderr.strip().splitlines()[-1]
    assert "symbolic link" in line and "[archive_unsafe_member]" in line, done.stderr
    assert version_of(api, "hostile-symlink") is None


def test_a_folder_on_s3_with_a_climbing_key_is_refused_before_anything_is_written(
    s3_endpoint, tmp_path
) -> None:
    """A folder import trusts no object key: S3 lets any client (here boto3; our own storage
    refuses such keys) write `ckpt/../../x`, and the listing hands it back as it is."""
    import uuid

    import boto3

    from pipelines.importer import fetch_object
    from services.core.archive import ArchiveRefused
    from services.core.storage import S3Storage

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    storage = S3Storage(s3_endpoint, bucket, "test", "test", region="us-east-1", secure=False)
    other = boto3.client(
        "s3", endpoint_url=f"http://{s3_endpoint}", aws_access_key_id="test",
        aws_secret_access_key="test", region_name="us-east-1",
    )  # fmt: skip
    folder = f"imports/{TENANT}/ckpt/"
    other.put_object(Bucket=bucket, Key=f"{folder}config.json", Body=b"{}")
    other.put_object(Bucket=bucket, Key=f"{folder}../../../../escaped/x.txt", Body=b"owned")
    assert storage.list_sizes(folder)[f"{folder}config.json"] == 2  # the listing's sizes
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    with pytest.raises(ArchiveRefused, match="climbs out") as refused:
        fetch_object(storage, folder, work, 10_000, lambda *a: None)
    assert refused.value.code == "archive_unsafe_member"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "files", "work"]
