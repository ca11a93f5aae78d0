"""Kubeflow pipelines: compiled files current and loadable; a local sft run end to end."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path

import mlflow
import pytest
import yaml

from pipelines.data import generate_dataset, read_manifest
from pipelines.runner import COMPILED_DIR, compile_all, compiled_files, run_local
from services.core.registry import Registry

pytestmark = pytest.mark.integration


def test_compiled_files_are_current_and_load_in_kfp(tmp_path) -> None:
    from kfp import components

    fresh = {p.name: p.read_text() for p in compile_all(tmp_path)}
    assert set(fresh) == set(compiled_files())
    for name, text in fresh.items():
        committed = COMPILED_DIR / name
        assert committed.is_file() and committed.read_text() == text, (
            f"{name} is stale: run `mossctl pipeline compile`"
        )
        spec, platform = list(yaml.safe_load_all(text))  # pipeline spec + Kubernetes settings
        assert spec["pipelineInfo"]["name"].startswith("moss-audio-")
        assert "kubernetes" in platform["platforms"]
        loaded = components.load_component_from_file(str(committed))
        assert loaded.name.startswith("moss-audio-")
    gpu = (COMPILED_DIR / "sft-gpu.yaml").read_text()
    assert "nvidia.com/gpu" in gpu and "nvidia.com/gpu" not in fresh["sft.yaml"]
    assert "moss-platform" in fresh["sft.yaml"]  # settings from the cluster secret


def team_manifest(home, name: str) -> tuple[str, str]:
    """A team's own dataset, committed as `mossctl datasets upload` does: generated clips, but
    labelled in the platform's format with captions, events and a free instruction each."""
    from services.core import dataset_store
    from services.core.settings import Settings
    from services.core.storage import LocalStorage

    storage = LocalStorage(Settings(home=home).resolved_storage_dir)
    key, _ = generate_dataset(storage, "gen", 30, seed=2, heldout_share=0.3)
    lines = []
    for clip in read_manifest(storage, key)[0]:
        audio = storage.get_bytes(clip["audio"])
        digest = hashlib.sha256(audio).hexdigest()
        dataset_store.put_audio(storage, "ops", name, digest, io.BytesIO(audio), len(audio))
        first = clip["events"][0]["label"]
        lines.append(json.dumps({
            "audio": f"audio/{digest}", "split": clip["split"], "events": clip["events"],
            "caption": clip["caption"],
            "instructions": [{"prompt": "Name the first sound.", "answer": first}],
        }))  # fmt: skip
    info = dataset_store.commit_manifest(storage, "ops", name, "\n".join(lines).encode())
    return info.manifest, info.digest


def test_local_sft_run_on_a_team_manifest_registers_a_version_with_lineage(
    mlflow_uri, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MOSS_MLFLOW_URI", mlflow_uri)
    monkeypatch.setenv("MOSS_HOME", str(tmp_path / "home"))
    dataset = f"ci-{uuid.uuid4().hex[:6]}"
    manifest, digest = team_manifest(tmp_path / "home", dataset)
    run_local(
        "sft",
        {"size": "tiny", "flavor": "instruct", "manifest": manifest, "steps": 3, "batch_size": 4},
        tmp_path / "kfp",
    )
    registry = Registry(mlflow_uri)
    versions = registry.client.search_model_versions("name='moss-audio-tiny-instruct'")
    mine = [v for v in versions if v.tags.get("data_digest") == digest]
    assert len(mine) == 1
    version = mine[0]
    run = registry.client.get_run(version.run_id)
    assert run.data.tags["code_version"] and run.data.params["steps"] == "3"
    assert run.data.params["manifest"] == manifest
    trained = json.loads(run.data.params["examples_by_kind"])
    assert {"instruction", "caption", "event_at", "timestamps"} <= set(trained)
    metrics = run.data.metrics
    for family_metric in ("event_qa_accuracy", "caption_wer", "instruction_token_f1", "aas_ms"):
        assert f"eval/{family_metric}" in metrics
    assert "eval/wer" not in metrics  # no speech in this dataset: no speech metric
    assert "train/loss" in metrics
    # What the figures were measured on, recorded on the version for the promotion gate.
    (evaluation,) = registry.evaluations(version.name, str(version.version)).values()
    assert evaluation["manifest"] == manifest and evaluation["manifest_digest"] == digest
    assert version.tags["evaluation_set"] == evaluation["evaluation_set"]
    assert set(evaluation["examples_per_family"]) == {"events", "caption", "instructions"}
    assert evaluation["evaluator_version"] and evaluation["metrics"]["examples"] > 0
    artifacts = {a.path for a in registry.client.list_artifacts(version.run_id)}
    assert {"checkpoint", "evaluation"} <= artifacts
    assert registry.alias_holder("moss-audio-tiny-instruct", "candidate") == str(version.version)


def test_local_annotate_pipeline_trains_on_unlabelled_audio(mlflow_uri, tmp_path, monkeypatch):
    """annotate -> sft -> evaluate -> register under kfp.local, on clips with no labels."""
    from pipelines.data import wav_bytes
    from services.core.settings import Settings
    from services.core.storage import LocalStorage
    from tests.annotation_clips import clip_set

    monkeypatch.setenv("MOSS_MLFLOW_URI", mlflow_uri)
    monkeypatch.setenv("MOSS_HOME", str(tmp_path / "home"))
    storage = LocalStorage(Settings(home=tmp_path / "home").resolved_storage_dir)
    lines = []
    for n, (audio, _) in enumerate(clip_set(seed=7, count=6)):
        storage.put_bytes(f"datasets/ops/field/clips/{n}.wav", wav_bytes(audio))
        lines.append({"audio": f"clips/{n}.wav", "split": "heldout" if n % 3 == 0 else "train"})
    manifest = "datasets/ops/field/manifest.jsonl"
    storage.put_bytes(manifest, "".join(json.dumps(x) + "\n" for x in lines).encode())
    annotators = {"speech": ["speech-descriptors"], "music": ["music-features"],
                  "general": ["signal-tags"]}  # fmt: skip
    run_local(
        "annotate",
        {"manifest": manifest, "annotators": json.dumps(annotators), "steps": 3, "batch_size": 4},
        tmp_path / "kfp",
    )
    sft = storage.get_bytes("datasets/ops/field/annotated/sft.jsonl")
    assert len(sft.splitlines()) == 6
    digest = hashlib.sha256(sft).hexdigest()
    registry = Registry(mlflow_uri)
    versions = registry.client.search_model_versions("name='moss-audio-tiny-instruct'")
    (version,) = [v for v in versions if v.tags.get("data_digest") == digest]
    run = registry.client.get_run(version.run_id)
    assert run.data.params["manifest"] == "datasets/ops/field/annotated/sft.jsonl"
    assert "eval/caption_wer" in run.data.metrics and "eval/event_qa_accuracy" in run.data.metrics
    # the labels it trained on travel with the checkpoint: the next annotation's vocabulary
    path = mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path="checkpoint/event_labels.json",
        dst_path=str(tmp_path / "labels"), tracking_uri=mlflow_uri,
    )  # fmt: skip
    labels = json.loads(Path(path).read_text())["event_labels"]
    trained = {e["label"] for x in map(json.loads, sft.splitlines()) if x["split"] == "train"
               for e in x.get("events", [])}  # fmt: skip
    assert labels and labels == sorted(trained)
