"""Like-for-like promotion with real evaluations: tiny checkpoints scored by the pipelines' own
steps on two generated held-out sets. The API refuses a promotion across sets and names the
evaluate run that fixes it; that run records the holder's figures on the candidate's set; the
pipelines' promote step scores the holder itself, an imported one never evaluated too, and
reports its decision when it refuses. Figures are compared only on one set."""

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
from services.core.progress import parse
from services.core.registry import CHECKPOINT_ARTIFACT, PromotionRefused, Registry
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


def logged_checkpoint(mlflow_uri: str, checkpoint) -> str:
    """A run holding `checkpoint` as its artifact, as the train step leaves one; its id."""
    mlflow.set_tracking_uri(mlflow_uri)
    # by name: an experiment id an earlier test set in this process may not exist here
    mlflow.set_experiment("tests")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(checkpoint), CHECKPOINT_ARTIFACT)
    return run.info.run_id


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
        run_id = logged_checkpoint(mlflow_uri, checkpoint)
        evaluations = evaluations or evaluate_step(run_id, manifest, per_kind=1)
        version = registry.register(
            name, run_id, data_digest="0" * 64, parent=None,
            metrics=evaluations[0]["metrics"], evaluations=evaluations,
        )  # fmt: skip
        return version, run_id

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

    # An imported holder, never evaluated (a fine-tune replacing a released model): not passed
    # on thresholds alone, but scored on the candidate's set first and compared there.
    imported = registry.register_import(
        name, logged_checkpoint(mlflow_uri, checkpoint), source="hub", revision=None,
        checkpoint_sha256="0" * 64, trained_for="[]",
    )  # fmt: skip
    registry.promote(name, imported, "production", "import", force=True, reason="import")
    result = json.loads(promote_step("tiny", "instruct", v2, "production", "pipeline", name))
    assert result["accepted"] and result["holder"] == imported
    assert result["evaluation_set"] == result["thresholds_set"] == users_set
    assert users_set in registry.evaluations(name, imported)
    assert result["holder_metrics"] == result["candidate_metrics"]
    print("like-for-like decision:", json.dumps(result, indent=2))  # quoted in reports (-s)


def test_a_refused_promote_step_reports_its_decision(pipeline_env, mlflow_uri, tmp_path,
                                                     monkeypatch, capsys) -> None:  # fmt: skip
    """The run record's `decision` is the gate's, a refusal too: promote_step prints it as a
    progress line before the refusal fails the step."""
    registry = Registry(mlflow_uri)
    name = f"moss-audio-test-{uuid.uuid4().hex[:6]}"
    scored = {"evaluation_set": "c" * 64, "manifest": "datasets/x/manifest.jsonl",
              "per_kind": 1, "examples": 8, "metrics": {"event_qa_accuracy": 0.6}}  # fmt: skip
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "moss_audio"}')
    versions = []
    for _ in range(2):  # two versions measured on one set: compared, no scoring needed
        run_id = logged_checkpoint(mlflow_uri, checkpoint)
        versions.append(registry.register(name, run_id, data_digest="0" * 64, parent=None,
                        metrics=scored["metrics"], evaluations=[scored]))  # fmt: skip
    first = json.loads(promote_step("tiny", "instruct", versions[0], "production", "ci", name))
    assert first["accepted"] and first["holder"] is None and first["evaluation_set"] is None
    monkeypatch.setenv("MOSS_PROMOTION_THRESHOLDS", '{"production": {"event_qa_accuracy": 0.9}}')
    capsys.readouterr()
    with pytest.raises(PromotionRefused) as refused:
        promote_step("tiny", "instruct", versions[1], "production", "ci", name)
    reported = [f for f in map(parse, capsys.readouterr().out.splitlines()) if f]
    assert reported[-1]["pipeline_step"] == "promote" and reported[-1]["version"] == versions[1]
    decision = reported[-1]["decision"]
    assert decision == refused.value.decision and decision["accepted"] is False
    assert "event_qa_accuracy 0.6 < threshold 0.9" in decision["reason"]
    assert decision["evaluation_set"] == "c" * 64
    assert registry.alias_holder(name, "production") == versions[0]
