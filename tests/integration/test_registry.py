"""The MLflow registry against a real tracking server: lineage, the promotion gate, rollback."""

from __future__ import annotations

import json
import uuid

import mlflow
import pytest

from services.core.registry import (
    CHECKPOINT_ARTIFACT,
    EvaluationSetMismatch,
    PromotionRefused,
    Registry,
)

pytestmark = pytest.mark.integration
THRESHOLDS = {"production": {"event_qa_accuracy": 0.5}}


def logged_run(registry: Registry, tmp_path, metrics: dict | None = None) -> str:
    """An MLflow run holding a checkpoint artifact (and `metrics`), as the train step leaves
    one; its id."""
    mlflow.set_tracking_uri(registry.tracking_uri)
    checkpoint = tmp_path / f"ckpt-{uuid.uuid4().hex[:6]}"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "moss_audio"}')
    # by name: an experiment id an earlier test set in this process may not exist here
    mlflow.set_experiment("tests")
    with mlflow.start_run() as run:
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(checkpoint), CHECKPOINT_ARTIFACT)
    return run.info.run_id


def version_with(registry: Registry, name: str, metrics: dict, tmp_path) -> str:
    run_id = logged_run(registry, tmp_path, metrics)
    return registry.register(name, run_id, data_digest="d" * 64, parent=None, metrics=metrics)


def test_versions_carry_lineage_and_download(mlflow_uri, tmp_path) -> None:
    registry = Registry(mlflow_uri)
    name = f"moss-audio-test-{uuid.uuid4().hex[:6]}"
    version = version_with(registry, name, {"event_qa_accuracy": 0.7}, tmp_path)
    info = registry.client.get_model_version(name, version)
    assert info.tags["data_digest"] == "d" * 64 and info.tags["code_version"]
    assert registry.version_metrics(name, version) == {"event_qa_accuracy": 0.7}
    local = registry.download(name, version, tmp_path / "cache" / version)
    assert (local / "config.json").is_file()
    listed = next(m for m in registry.models() if m["name"] == name)
    assert listed["versions"][0]["metrics"] == {"event_qa_accuracy": 0.7}


def test_gate_refuses_worse_accepts_better_and_rolls_back(mlflow_uri, tmp_path) -> None:
    registry = Registry(mlflow_uri)
    name = f"moss-audio-test-{uuid.uuid4().hex[:6]}"
    good = version_with(registry, name, {"event_qa_accuracy": 0.8, "aas_ms": 300.0}, tmp_path)
    bad = version_with(registry, name, {"event_qa_accuracy": 0.4, "aas_ms": 200.0}, tmp_path)
    worse = version_with(registry, name, {"event_qa_accuracy": 0.7, "aas_ms": 250.0}, tmp_path)
    better = version_with(registry, name, {"event_qa_accuracy": 0.9, "aas_ms": 280.0}, tmp_path)

    assert registry.promote(name, good, "production", "ci", THRESHOLDS).accepted
    with pytest.raises(PromotionRefused, match=r"event_qa_accuracy 0\.4 < threshold 0\.5"):
        registry.promote(name, bad, "production", "ci", THRESHOLDS)
    with pytest.raises(PromotionRefused, match="regresses"):
        registry.promote(name, worse, "production", "ci", THRESHOLDS)
    assert registry.alias_holder(name, "production") == good
    decision = registry.promote(name, better, "production", "alice", THRESHOLDS)
    assert decision.holder == good and decision.holder_metrics["event_qa_accuracy"] == 0.8
    assert registry.alias_holder(name, "production") == better
    recorded = registry.client.get_model_version(name, bad).tags
    assert any(k.startswith("decision.production.") for k in recorded)

    with pytest.raises(TypeError):  # the alias has no default: a slip moves nothing
        registry.rollback(name, actor="bob")
    assert registry.alias_holder(name, "production") == better
    assert registry.rollback(name, "production", actor="bob") == good
    assert registry.alias_holder(name, "production") == good
    with pytest.raises(ValueError, match="no earlier version"):
        registry.rollback(name, "production")


def test_gate_checks_the_families_a_version_was_evaluated_on(mlflow_uri, tmp_path) -> None:
    registry = Registry(mlflow_uri)
    name = f"moss-audio-test-{uuid.uuid4().hex[:6]}"
    thresholds = {
        "production": {"event_qa_accuracy": 0.5, "wer": 0.5},
        "models": {name: {"production": {"wer": 0.2}}},
    }
    speech = version_with(registry, name, {"wer": 0.15, "cer": 0.05}, tmp_path)
    decision = registry.promote(name, speech, "production", "ci", thresholds)
    assert decision.accepted and "skipped: events" in decision.reason
    assert decision.thresholds == {"event_qa_accuracy": 0.5, "wer": 0.2}  # its name's limit
    loose = version_with(registry, name, {"wer": 0.3}, tmp_path)
    with pytest.raises(PromotionRefused, match=r"wer 0\.3 > threshold 0\.2"):
        registry.promote(name, loose, "production", "ci", thresholds)
    captions = version_with(registry, name, {"caption_wer": 0.4}, tmp_path)
    with pytest.raises(PromotionRefused, match="none of the families"):
        registry.promote(name, captions, "production", "ci", thresholds)
    # Another model name gets the defaults: 0.3 passes the shared wer limit of 0.5.
    other = f"{name}-b"
    assert registry.promote(other, version_with(registry, other, {"wer": 0.3}, tmp_path),
                            "production", "ci", thresholds).accepted  # fmt: skip


def evaluation(digest: str, manifest: str, examples: int, **metrics: float) -> dict:
    """An evaluation record as pipelines.evaluate.evaluation_record writes it."""
    return {
        "evaluation_set": digest * 64 if len(digest) == 1 else digest,
        "manifest": manifest,
        "per_kind": 100,
        "examples": examples,
        "examples_per_family": {"events": examples // 2, "speech": examples - examples // 2},
        "evaluator_version": "test",
        "metrics": metrics,
        "at": f"2026-12-0{examples % 9 + 1}T00:00:00+00:00",
    }


def evaluated_version(registry: Registry, name: str, tmp_path, *evaluations: dict) -> str:
    """A version with recorded evaluations, the first on its own held-out split."""
    run_id = logged_run(registry, tmp_path)
    return registry.register(
        name, run_id, data_digest=uuid.uuid4().hex * 2, parent=None,
        metrics=evaluations[0]["metrics"], evaluations=list(evaluations),
    )  # fmt: skip


def test_figures_from_different_sets_are_refused_never_compared(mlflow_uri, tmp_path) -> None:
    """The issue's case: v1 scored on 487 generated examples, v2 on 12 of a user's clips. The
    API refuses (409 evaluation_set_mismatch) with the run that fixes it; once v1 is scored on
    v2's set, the gate compares the two there, both ways."""
    from pipelines.runner import coerce
    from services.core import lifecycle
    from services.core.errors import ApiError
    from services.core.settings import Settings

    registry = Registry(mlflow_uri)
    settings = Settings(mlflow_uri=mlflow_uri)
    name = f"moss-audio-test-{uuid.uuid4().hex[:6]}"
    generated = evaluation("a", "datasets/events-speech-v2/manifest.jsonl", 487, wer=0.25,
                           event_qa_accuracy=0.9, timestamp_error_median_s=0.5)  # fmt: skip
    users = evaluation("b", "datasets/ops/mine/manifest.jsonl", 12, wer=0.29,
                       event_qa_accuracy=0.95, timestamp_error_median_s=0.4)  # fmt: skip
    v1 = evaluated_version(registry, name, tmp_path, generated)
    v2 = evaluated_version(registry, name, tmp_path, users)
    assert lifecycle.promote(settings, name, "production", v1, "ci")["accepted"]

    with pytest.raises(ApiError) as refused:
        lifecycle.promote(settings, name, "production", v2, "alice")
    assert refused.value.status == 409 and refused.value.code == "evaluation_set_mismatch"
    message = refused.value.message
    assert "a" * 12 in message and "b" * 12 in message and "487 examples" in message
    assert "regresses" not in message and registry.alias_holder(name, "production") == v1
    request = json.loads(message.split("POST /v1/pipelines/evaluate/runs ", 1)[1].split(" (or")[0])
    assert request["params"] == {"model": name, "version": v1,
                                 "manifest": users["manifest"], "per_kind": 100}  # fmt: skip
    coerce("evaluate", request["params"])  # the evaluate pipeline takes exactly these
    recorded = [json.loads(v) for k, v in registry.version_tags(name, v2).items()
                if k.startswith("decision.production.")]  # fmt: skip
    assert recorded[0]["accepted"] is False and recorded[0]["evaluation_set"] is None

    # What the evaluate pipeline records: v1 on v2's set, where v1 is worse.
    registry.record_evaluation(name, v1, evaluation("b", users["manifest"], 12, wer=0.4,
                               event_qa_accuracy=0.8, timestamp_error_median_s=0.6))  # fmt: skip
    decision = lifecycle.promote(settings, name, "production", v2, "alice")
    assert decision["accepted"] and decision["evaluation_set"] == "b" * 64
    assert decision["evaluation_manifest"] == users["manifest"]
    assert decision["candidate_metrics"]["wer"] == 0.29 and decision["holder_metrics"]["wer"] == 0.4
    assert decision["thresholds"]["wer"] == 0.5 and decision["examples_per_family"]
    # And v1 back: refused on the same set (0.4 vs 0.29), not on its own 487 examples (0.25).
    with pytest.raises(PromotionRefused, match=r"wer regresses: 0\.4 vs 0\.29"):
        registry.promote(name, v1, "production", "bob")
    listed = next(m for m in registry.models() if m["name"] == name)["versions"][0]
    assert listed["evaluation_set"] == "a" * 64 and listed["metrics"]["wer"] == 0.25
    assert {e["evaluation_set"][:1] for e in listed["evaluations"]} == {"a", "b"}


def test_the_reference_set_comes_first_and_force_is_recorded(
    mlflow_uri, tmp_path, monkeypatch
) -> None:
    registry = Registry(mlflow_uri)
    name = f"moss-audio-test-{uuid.uuid4().hex[:6]}"
    reference = "datasets/ref/manifest.jsonl"
    monkeypatch.setenv("MOSS_EVAL_SETS", json.dumps({name: reference}))
    own, ref = "datasets/own/m.jsonl", "r"
    holder = evaluated_version(
        registry, name, tmp_path,
        evaluation("c", own, 40, event_qa_accuracy=0.6),
        evaluation(ref, reference, 50, event_qa_accuracy=0.7),
    )  # fmt: skip
    assert registry.promote(name, holder, "production", "ci", THRESHOLDS).accepted
    # Worse on the holder's own split, better on the reference set: judged on the reference.
    candidate = evaluated_version(
        registry, name, tmp_path,
        evaluation("c", own, 40, event_qa_accuracy=0.5),
        evaluation(ref, reference, 50, event_qa_accuracy=0.8),
    )  # fmt: skip
    decision = registry.promote(name, candidate, "production", "ci", THRESHOLDS)
    assert decision.evaluation_set == "r" * 64
    assert decision.holder_metrics == {"event_qa_accuracy": 0.7}
    monkeypatch.delenv("MOSS_EVAL_SETS")
    registry.client.set_registered_model_tag(name, "eval_set", reference)
    assert registry.reference_manifest(name) == reference

    elsewhere = evaluation("z", "datasets/z/m.jsonl", 9, event_qa_accuracy=0.9)
    other = evaluated_version(registry, name, tmp_path, elsewhere)
    with pytest.raises(EvaluationSetMismatch):
        registry.promote(name, other, "production", "ci", THRESHOLDS)
    forced = registry.promote(name, other, "production", "ci", THRESHOLDS, force=True)
    assert forced.accepted and forced.evaluation_set is None
    assert forced.reason.startswith(f"forced by ci, over: v{other} and v{candidate}")
    assert registry.alias_holder(name, "production") == other


def test_a_holder_never_evaluated_is_not_passed_over_on_thresholds(mlflow_uri, tmp_path) -> None:
    """The main path: a fine-tune of an imported model. The import has no figures, so there is
    no set to compare on: refused (409 evaluation_set_mismatch, with the evaluate run that
    scores the import on the candidate's set), never passed on thresholds alone. With no holder
    at all, the thresholds decide, and the record says on which set, comparing nothing."""
    from services.core import lifecycle
    from services.core.errors import ApiError
    from services.core.settings import Settings

    registry = Registry(mlflow_uri)
    settings = Settings(mlflow_uri=mlflow_uri)
    name = f"moss-audio-test-{uuid.uuid4().hex[:6]}"
    mine = evaluation("e", "datasets/ops/mine/manifest.jsonl", 12, wer=0.2,
                      event_qa_accuracy=0.9, timestamp_error_median_s=0.4)  # fmt: skip
    fresh = evaluated_version(registry, f"{name}-new", tmp_path, mine)
    first = lifecycle.promote(settings, f"{name}-new", "production", fresh, "ci")
    assert first["accepted"] and first["holder"] is None and first["evaluation_set"] is None
    assert first["thresholds_set"] == "e" * 64 and first["evaluation_manifest"] == mine["manifest"]
    assert "with no holder to compare against" in first["reason"]

    run_id = registry.client.get_model_version(f"{name}-new", fresh).run_id
    imported = registry.register_import(name, run_id, source="OpenMOSS/MOSS-Audio-4B-Instruct",
                                        revision="abc", checkpoint_sha256="0" * 64,
                                        trained_for="[]")  # fmt: skip
    registry.promote(name, imported, "production", "import", force=True, reason="import")
    tuned = evaluated_version(registry, name, tmp_path, mine)
    with pytest.raises(ApiError) as refused:
        lifecycle.promote(settings, name, "production", tuned, "alice")
    assert refused.value.status == 409 and refused.value.code == "evaluation_set_mismatch"
    assert f"v{imported} has no evaluation" in refused.value.message
    request = json.loads(
        refused.value.message.split("POST /v1/pipelines/evaluate/runs ", 1)[1].split(" (or")[0]
    )
    assert request["params"] == {"model": name, "version": imported,
                                 "manifest": mine["manifest"], "per_kind": 100}  # fmt: skip
    (recorded,) = [json.loads(v) for k, v in registry.version_tags(name, tuned).items()
                   if k.startswith("decision.production.")]  # fmt: skip
    assert recorded["accepted"] is False and recorded["holder"] == imported
    assert recorded["evaluation_set"] is None and recorded["thresholds_set"] is None
    assert registry.alias_holder(name, "production") == imported

    # Scored there (what the evaluate run records), the import is compared like any holder.
    registry.record_evaluation(name, imported, evaluation("e", mine["manifest"], 12, wer=0.3,
                               event_qa_accuracy=0.8, timestamp_error_median_s=0.5))  # fmt: skip
    decision = lifecycle.promote(settings, name, "production", tuned, "alice")
    assert decision["accepted"] and decision["evaluation_set"] == decision["thresholds_set"]
    assert decision["evaluation_set"] == "e" * 64 and decision["holder_metrics"]["wer"] == 0.3
