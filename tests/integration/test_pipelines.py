"""Kubeflow pipelines: compiled files current and loadable; a local sft run end to end."""

from __future__ import annotations

import uuid

import pytest
import yaml

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


def test_local_sft_run_registers_a_version_with_lineage(mlflow_uri, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MOSS_MLFLOW_URI", mlflow_uri)
    monkeypatch.setenv("MOSS_HOME", str(tmp_path / "home"))
    dataset = f"ci-{uuid.uuid4().hex[:6]}"
    run_local(
        "sft",
        {
            "size": "tiny",
            "flavor": "instruct",
            "dataset": dataset,
            "num_clips": 30,
            "steps": 3,
            "batch_size": 4,
        },
        tmp_path / "kfp",
    )
    registry = Registry(mlflow_uri)
    versions = registry.client.search_model_versions("name='moss-audio-tiny-instruct'")
    mine = [
        v
        for v in versions
        if v.tags.get("data_digest")
        and registry.client.get_run(v.run_id).data.params.get("manifest", "").find(dataset) >= 0
    ]
    assert len(mine) == 1
    version = mine[0]
    run = registry.client.get_run(version.run_id)
    assert run.data.tags["code_version"] and run.data.params["steps"] == "3"
    assert "eval/event_qa_accuracy" in run.data.metrics and "train/loss" in run.data.metrics
    assert version.tags["data_digest"] == run.data.tags["data_digest"]
    artifacts = {a.path for a in registry.client.list_artifacts(version.run_id)}
    assert {"checkpoint", "evaluation"} <= artifacts
    assert registry.alias_holder("moss-audio-tiny-instruct", "candidate") == str(version.version)
