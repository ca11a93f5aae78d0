"""A Kubeflow run's record completed from MLflow: the loopback KFP v2beta1 API server
(tests/unit/test_pipeline_runs.py) gives its states, a real MLflow server what its steps made
(the train step's run tagged with our run id, its loss, the version registered from it, the
pipeline's promotion decision). MLflow away: the run is followed to its end all the same."""

from __future__ import annotations

import uuid

import mlflow
import pytest
from mlflow import MlflowClient

from pipelines.follow import RunLog
from pipelines.kubeflow import follow_kubeflow
from pipelines.runner import coerce
from pipelines.tracking import RUN_TAG, Tracked, tracked_fields
from services.core.jobstate import Status
from services.core.registry import CHECKPOINT_ARTIFACT, Registry
from services.core.storage import LocalStorage
from tests.unit.test_pipeline_runs import kfp_api, read_log, runs  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


@pytest.fixture
def storage(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "objects")


def trained_on_kubeflow(mlflow_uri: str, tmp_path, run_id: str) -> tuple[str, str, str]:
    """What a Kubeflow sft run leaves in MLflow: the train step's run (tagged with our run id,
    `steps` param, `train/loss` every 10 steps), a version registered from it and the promote
    step's decision on it. Returns (MLflow run id, model name, version)."""
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment(f"moss-audio-test-{uuid.uuid4().hex[:6]}")
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "moss_audio"}')
    with mlflow.start_run(tags={RUN_TAG: run_id}) as trained:
        mlflow.log_params({"steps": 30, "stage": "sft"})
        for step, loss in ((1, 4.2), (10, 2.5), (20, 1.75)):
            mlflow.log_metric("train/loss", loss, step=step)
        mlflow.log_artifacts(str(checkpoint), CHECKPOINT_ARTIFACT)
    registry = Registry(mlflow_uri)
    name = f"moss-audio-test-{uuid.uuid4().hex[:6]}"
    version = registry.register(name, trained.info.run_id, data_digest="d" * 64, parent=None,
                                metrics={"event_qa_accuracy": 0.9})  # fmt: skip
    registry.promote(name, version, "staging", actor="pipeline", thresholds={})
    return trained.info.run_id, name, version


def test_a_kubeflow_runs_record_gets_its_loss_mlflow_run_version_and_decision(
    kfp_api,  # noqa: F811  (the fixture imported above)
    runs,  # noqa: F811
    storage,
    mlflow_uri,
    tmp_path,
) -> None:
    run = runs.create("acme", "sft", {"promote_to": "staging"}, "kubeflow")
    runs.start(run.id)
    mlflow_run, name, version = trained_on_kubeflow(mlflow_uri, tmp_path, run.id)
    other = runs.create("acme", "sft", {}, "kubeflow")  # its MLflow run is not this one's
    assert tracked_fields(MlflowClient(mlflow_uri), other.id) == {}
    fake = kfp_api(["RUNNING", "RUNNING", "SUCCEEDED"])
    tracked = Tracked(lambda: tracked_fields(MlflowClient(mlflow_uri), run.id, "staging"))
    try:
        outcome = follow_kubeflow(fake.client(), "kfp-7", runs, run.id,
                                  RunLog(storage, run.log_key), 0.05, tracked=tracked)  # fmt: skip
    finally:
        tracked.close()
    assert outcome.status == Status.SUCCEEDED
    record = runs.get(run.id)
    assert (record.mlflow_run_id, record.model, record.version) == (mlflow_run, name, version)
    assert record.progress["loss"] == 1.75
    assert (record.progress["step"], record.progress["total_steps"]) == (20, 30)
    assert record.progress["kubeflow_state"] == "SUCCEEDED"  # KFP's fields are kept beside
    assert record.decision["accepted"] and record.decision["alias"] == "staging"
    assert record.decision["actor"] == "pipeline"
    assert "step 20/30 loss 1.750 (MLflow)" in read_log(storage, run.log_key)


def test_mlflow_away_leaves_the_kubeflow_run_followed_to_its_end(
    kfp_api,  # noqa: F811  (the fixture imported above)
    runs,  # noqa: F811
    storage,
    monkeypatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    from services.stack import free_port

    away = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = runs.create("acme", "sft", {}, "kubeflow")
    runs.start(run.id)
    fake = kfp_api(["RUNNING", "SUCCEEDED"])
    tracked = Tracked(lambda: tracked_fields(MlflowClient(away), run.id))
    try:
        outcome = follow_kubeflow(fake.client(), "kfp-8", runs, run.id,
                                  RunLog(storage, run.log_key), 0.05, tracked=tracked)  # fmt: skip
    finally:
        tracked.close()
    assert outcome.status == Status.SUCCEEDED
    record = runs.get(run.id)
    assert record.mlflow_run_id is None and "loss" not in record.progress
    assert record.progress["kubeflow_state"] == "SUCCEEDED"


def test_a_caller_cannot_set_the_run_id_parameter() -> None:
    with pytest.raises(ValueError, match="no parameter moss_run_id"):
        coerce("sft", {"moss_run_id": "someone-elses"})
    assert "moss_run_id" not in coerce("sft", {"steps": "3"})
