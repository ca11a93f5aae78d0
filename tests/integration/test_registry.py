"""The MLflow registry against a real tracking server: lineage, the promotion gate, rollback."""

from __future__ import annotations

import uuid

import mlflow
import pytest

from services.core.registry import CHECKPOINT_ARTIFACT, PromotionRefused, Registry

pytestmark = pytest.mark.integration
THRESHOLDS = {"production": {"event_qa_accuracy": 0.5}}


def version_with(registry: Registry, name: str, metrics: dict, tmp_path) -> str:
    mlflow.set_tracking_uri(registry.tracking_uri)
    checkpoint = tmp_path / f"ckpt-{uuid.uuid4().hex[:6]}"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "moss_audio"}')
    with mlflow.start_run() as run:
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(checkpoint), CHECKPOINT_ARTIFACT)
    return registry.register(
        name, run.info.run_id, data_digest="d" * 64, parent=None, metrics=metrics
    )


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
