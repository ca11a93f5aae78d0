"""Like-for-like promotion with real evaluations: tiny checkpoints scored by the pipelines' own
steps on two generated held-out sets. The API refuses a promotion across sets and names the
evaluate run that fixes it; that run records the holder's figures on the candidate's set; the
pipelines' promote step scores the holder itself. Figures are compared only on one set."""

from __future__ import annotations

import json
import uuid

import mlflow
import pytest

from pipelines.components import evaluate_step, promote_step
from pipelines.data import generate_dataset
from pipelines.runner import coerce
from services.core import lifecycle
from services.core.errors import ApiError
from services.core.registry import CHECKPOINT_ARTIFACT, Registry
from services.core.settings import Settings, get_settings
from services.core.storage import make_storage
from tests.jobs_env import write_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline_env(mlflow_uri, tmp_path, monkeypatch):
    """The settings a pipeline step reads, for steps run in this process; no thresholds, so
    that the comparison with the holder is all the gate decides (random weights meet none)."""
    monkeypatch.setenv("MOSS_MLFLOW_URI", mlflow_uri)
    monkeypatch.setenv("MOSS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MOSS_PROMOTION_THRESHOLDS", json.dumps({"production": {}}))
    get_settings.cache_clear()
    yield make_storage(get_settings())
    get_settings.cache_clear()


def test_promotion_across_sets_is_rescored_or_refused(pipeline_env, mlflow_uri, tmp_path):
    tag = uuid.uuid4().hex[:6]
    generated, _ = generate_dataset(pipeline_env, f"gen-{tag}", 6, seed=1, heldout_share=0.5)
    users, _ = generate_dataset(pipeline_env, f"mine-{tag}", 6, seed=2, heldout_share=0.5)
    registry = Registry(mlflow_uri)
    name = f"moss-audio-test-{tag}"
    checkpoint = write_checkpoint(tmp_path / "checkpoint", seed=3)  # one set of weights for all

    def registered(manifest: str, evaluations: list[dict] | None = None) -> tuple[str, str]:
        """register_step's part: a run with the checkpoint, evaluated by the evaluate step
        unless `evaluations` are given, registered with them."""
        mlflow.set_tracking_uri(mlflow_uri)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(checkpoint), CHECKPOINT_ARTIFACT)
        evaluations = evaluations or evaluate_step(run.info.run_id, manifest, per_kind=1)
        version = registry.register(
            name, run.info.run_id, data_digest="0" * 64, parent=None,
            metrics=evaluations[0]["metrics"], evaluations=evaluations,
        )  # fmt: skip
        return version, run.info.run_id

    # v1 holds production, scored on the bootstrap set (its figures there do not matter).
    bootstrap = {"evaluation_set": "a" * 64, "manifest": generated, "per_kind": 1,
                 "examples": 487, "metrics": {"event_qa_accuracy": 0.9}}  # fmt: skip
    v1, v1_run = registered(generated, [bootstrap])
    v2, _ = registered(users)
    settings = Settings()
    assert lifecycle.promote(settings, name, "production", v1, "ci")["accepted"]
    with pytest.raises(ApiError) as refused:
        lifecycle.promote(settings, name, "production", v2, "ci")
    assert refused.value.code == "evaluation_set_mismatch"
    assert registry.alias_holder(name, "production") == v1

    # The fix the refusal names: the evaluate pipeline's evaluate step on v1 with its params.
    body = refused.value.message.split("POST /v1/pipelines/evaluate/runs ", 1)[1]
    params = coerce("evaluate", json.loads(body.split(" (or", 1)[0])["params"])
    assert params["version"] == v1 and params["manifest"] == users
    evaluate_step(v1_run, params["manifest"], params["per_kind"], params["model"], v1)
    (users_set,) = registry.evaluations(name, v2)
    assert users_set in registry.evaluations(name, v1)  # the same questions: the same digest
    decision = lifecycle.promote(settings, name, "production", v2, "ci")
    assert decision["accepted"] and decision["evaluation_set"] == users_set
    assert decision["holder_metrics"] == decision["candidate_metrics"]  # same weights, same set

    # The pipelines' promote step: v2 holds production and was never scored on v3's set.
    v3, _ = registered(generated)
    result = json.loads(promote_step("tiny", "instruct", v3, "production", "pipeline", name))
    (generated_set,) = registry.evaluations(name, v3)
    assert result["accepted"] and result["holder"] == v2
    assert result["evaluation_set"] == generated_set != bootstrap["evaluation_set"]
    assert generated_set in registry.evaluations(name, v2)
    assert result["holder_metrics"] == result["candidate_metrics"]
    assert registry.alias_holder(name, "production") == v3
