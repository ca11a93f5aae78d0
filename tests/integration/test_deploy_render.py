"""`mossctl deploy render`: the production version's checkpoint becomes the predictors'
storageUri in the Helm values (against a real MLflow server)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import yaml

from services.cli.deploy import DeployError, storage_uri
from services.core.registry import Registry
from tests.integration.test_registry import version_with

pytestmark = pytest.mark.integration
THRESHOLDS = {"production": {"event_qa_accuracy": 0.5}}


def render(mlflow_uri: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "deploy", "render", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MOSS_MLFLOW_URI": mlflow_uri},
    )


def test_render_follows_production_with_a_canary(mlflow_uri, tmp_path) -> None:
    registry = Registry(mlflow_uri)
    name = f"moss-audio-test-{uuid.uuid4().hex[:6]}"
    first = version_with(registry, name, {"event_qa_accuracy": 0.7}, tmp_path)
    second = version_with(registry, name, {"event_qa_accuracy": 0.9}, tmp_path)
    registry.promote(name, first, "production", "ci", THRESHOLDS)
    base = tmp_path / "values.yaml"
    base.write_text("gateway:\n  replicas: 2\nkserve:\n  encoder:\n    gpus: 1\n")
    out = tmp_path / "rendered.yaml"
    args = ["--values", str(base), "-o", str(out), "--model", name]
    args += ["--artifacts-destination", "s3://moss-audio/mlflow"]

    assert render(mlflow_uri, *args).returncode == 0
    values = yaml.safe_load(out.read_text())
    run_id = registry.client.get_model_version(name, first).run_id
    uri = values["kserve"]["encoder"]["storageUri"]
    assert uri.startswith("s3://moss-audio/mlflow/") and uri.endswith(
        f"{run_id}/artifacts/checkpoint"
    )
    assert values["kserve"]["generator"]["storageUri"] == uri
    assert values["kserve"]["encoder"]["gpus"] == 1 and values["gateway"]["replicas"] == 2
    assert (
        values["kserve"]["modelVersion"] == first and "canaryTrafficPercent" not in values["kserve"]
    )

    registry.promote(name, second, "production", "ci", THRESHOLDS)
    assert render(mlflow_uri, *args, "--canary", "10").returncode == 0
    values = yaml.safe_load(out.read_text())
    assert values["kserve"]["modelVersion"] == second
    assert values["kserve"]["canaryTrafficPercent"] == 10
    assert values["kserve"]["encoder"]["storageUri"] != uri


def test_render_errors_say_what_to_fix(mlflow_uri, tmp_path) -> None:
    base = tmp_path / "values.yaml"
    base.write_text("{}\n")
    missing = render(mlflow_uri, "--values", str(base), "-o", str(tmp_path / "o.yaml"),
                     "--model", "moss-audio-none")  # fmt: skip
    assert missing.returncode != 0 and "no version of 'moss-audio-none'" in missing.stderr
    assert not (tmp_path / "o.yaml").exists()


def test_storage_uri_translation() -> None:
    assert storage_uri("mlflow-artifacts:/1/abc/artifacts/checkpoint", "s3://b/mlflow/") == (
        "s3://b/mlflow/1/abc/artifacts/checkpoint"
    )
    assert storage_uri("s3://b/x/checkpoint", None) == "s3://b/x/checkpoint"
    with pytest.raises(DeployError, match="--artifacts-destination"):
        storage_uri("mlflow-artifacts:/1/abc/artifacts/checkpoint", None)
    with pytest.raises(DeployError, match="local to the MLflow host"):
        storage_uri("/var/mlflow/1/abc/artifacts/checkpoint", None)
