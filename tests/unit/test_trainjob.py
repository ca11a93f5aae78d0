"""The TrainJob that `mossctl train --trainjob` prints and the distributed step creates, checked
against the real Kubeflow Trainer CRD and the upstream torch-distributed runtime
(../shared/schemas/kubeflow-trainer/)."""

from __future__ import annotations

import re
from dataclasses import replace

import jsonschema
import pytest
import yaml

from model.config import PRESETS
from pipelines import trainer_k8s
from pipelines.trainjob import (
    GPU,
    PLATFORM_SETTINGS,
    SIZES,
    STAGES,
    TrainSpec,
    check_spec,
    render_trainjob,
    train_argv,
    trainjob,
)
from services.core.settings import Settings
from tests.k8s_standin import RUNTIME, TRAINJOB_CRD, cel_rules, trainjob_schema

pytestmark = pytest.mark.skipif(not TRAINJOB_CRD.is_file(), reason=f"no CRD at {TRAINJOB_CRD}")

BASE = TrainSpec(manifest="s3://moss-audio/datasets/sft.jsonl", output="s3://moss-audio/runs/r1")
OPTIONS = {
    "name": "moss-train-r1",
    "namespace": "audio",
    "image": "ghcr.io/moss-audio/platform:0.1.0-cuda",
}
SPECS = {
    "one-gpu": BASE,
    "two-nodes-of-8": replace(BASE, size="8b", nodes=2, nproc_per_node=8, batch_size=64),
    "lora-resume-base": replace(
        BASE,
        size="4b",
        flavor="thinking",
        stage="sft_thinking",
        decoder="lora",
        base="models:/moss-audio-4b-thinking@production",
        resume="s3://moss-audio/runs/r0/state",
        nproc_per_node=4,
        activation_checkpointing=True,
        freeze_encoder=True,
        freeze_adapter=True,
    ),
}
# The CEL rules of the CRD on the fields a TrainJob of ours sets, as Python. A rule not listed
# here fails test_cel_rules: someone must read it before the object is trusted.
KNOWN_RULES = {
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')": lambda job: bool(
        re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    ),
    "size(self.metadata.name) <= 63": lambda job: len(job["metadata"]["name"]) <= 63,
    "self >= 1": lambda value: value >= 1,
    "self == oldSelf": lambda value: True,  # immutability: holds on create
}


def schema_errors(job: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(trainjob_schema())
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(job)
    ]


@pytest.mark.parametrize("case", SPECS)
def test_trainjob_validates_against_the_crd(case):
    job = yaml.safe_load(render_trainjob(SPECS[case], **OPTIONS))
    assert schema_errors(job) == []
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")


@pytest.mark.parametrize("case", SPECS)
def test_cel_rules(case):
    job = trainjob(SPECS[case], **OPTIONS)
    rules = cel_rules(trainjob_schema(), job)
    assert {rule for _, rule, _ in rules} <= set(KNOWN_RULES), rules
    assert any("numProcPerNode" in path for path, _, _ in rules)
    for path, rule, value in rules:
        assert KNOWN_RULES[rule](value), f"{path}: {rule}"


def test_a_misplaced_field_is_refused():
    """The validator is closed: `envFrom` (which the CRD's trainer lacks) or a string node count
    fails, so the checks above can fail. That is why settings are one secretKeyRef each."""
    job = trainjob(BASE, **OPTIONS)
    job["spec"]["trainer"]["envFrom"] = [{"secretRef": {"name": "moss-platform"}}]
    job["spec"]["trainer"]["numNodes"] = "2"
    errors = schema_errors(job)
    assert any("envFrom" in e for e in errors) and any("numNodes" in e for e in errors), errors


def test_the_job_runs_mossctl_train_on_the_torch_runtime():
    spec = SPECS["two-nodes-of-8"]
    trainer = trainjob(spec, **OPTIONS)["spec"]["trainer"]
    runtime = yaml.safe_load(RUNTIME.read_text())
    assert trainjob(spec, **OPTIONS)["spec"]["runtimeRef"] == {"name": runtime["metadata"]["name"]}
    assert "torch" in runtime["spec"]["mlPolicy"]  # the plugin that injects PET_* for torchrun
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    (container,) = replicated["template"]["spec"]["template"]["spec"]["containers"]
    assert replicated["name"] == container["name"] == trainer_k8s.TRAINER_CONTAINER
    assert trainer["command"] + trainer["args"] == train_argv(spec)
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"] == {"limits": {GPU: 8}}
    assert trainer["image"] == OPTIONS["image"]


def test_platform_settings_come_from_the_secret():
    env = trainjob(BASE, **OPTIONS, secret="team-settings")["spec"]["trainer"]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert list(refs) == list(PLATFORM_SETTINGS)
    assert all(r == {"name": "team-settings", "key": k, "optional": True} for k, r in refs.items())
    fields = {f"MOSS_{name.upper()}" for name in Settings.model_fields}
    assert set(PLATFORM_SETTINGS) <= fields  # each is a real setting (services/core/settings.py)


def test_argv_carries_every_flag():
    spec = SPECS["lora-resume-base"]
    argv = train_argv(spec)
    assert argv[:3] == ["mossctl", "train", spec.manifest] and argv[-1] == "--json"
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    pairs = {"--size": "4b", "--flavor": "thinking", "--stage": "sft_thinking", "--decoder": "lora",
             "--base": spec.base, "--resume": spec.resume, "--output": spec.output,
             "--nproc-per-node": "4", "--nodes": "1", "--lr": "0.001"}  # fmt: skip
    assert all(flags.get(k) == v for k, v in pairs.items()), flags
    for flag in ("--activation-checkpointing", "--freeze-encoder", "--freeze-adapter"):
        assert flag in argv
    assert "--train-encoder" in train_argv(replace(spec, freeze_encoder=False))
    assert "--freeze-encoder" not in train_argv(BASE) and "--base" not in train_argv(BASE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"manifest": "data/sft.jsonl"}, "MANIFEST must be an object-store URL"),
        ({"output": "/tmp/run"}, "--output must be an object-store URL"),
        ({"output": "s3://moss-audio"}, "--output must be an object-store URL"),
        ({"resume": "./state"}, "--resume must be an object-store URL"),
        ({"base": "/models/4b"}, "--base must be a model reference"),
        ({"size": "13b"}, "--size must be one of tiny, small, 4b, 8b"),
        ({"decoder": "frozen"}, "--decoder must be one of full, lora"),
        ({"nodes": 0}, "--nodes must be at least 1"),
        ({"nproc_per_node": 3, "batch_size": 8}, "not a multiple of the world size 3"),
    ],
)
def test_bad_flags_are_refused_with_one_line(change, message):
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        trainjob(replace(BASE, **change), **OPTIONS)
    assert "\n" not in str(caught.value)


def test_bad_job_options_are_refused():
    with pytest.raises(ValueError, match="must equal the GPUs per node"):
        trainjob(replace(BASE, nproc_per_node=2), **OPTIONS, gpus_per_node=8)
    with pytest.raises(ValueError, match="DNS label"):
        trainjob(BASE, **{**OPTIONS, "name": "Moss_Train"})
    with pytest.raises(ValueError, match="DNS label"):
        trainjob(BASE, **{**OPTIONS, "name": "m" * 64})


def test_a_cpu_job_asks_for_no_gpu():
    spec = replace(BASE, nproc_per_node=2)
    trainer = trainjob(spec, **OPTIONS, gpus_per_node=0, cpu="4", memory="16Gi")["spec"]["trainer"]
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "4", "memory": "16Gi"},
                                           "limits": {"memory": "16Gi"}}  # fmt: skip
    assert schema_errors(trainjob(spec, **OPTIONS, gpus_per_node=0)) == []


def test_local_runs_need_no_urls():
    check_spec(replace(BASE, manifest="data/sft.jsonl", output="out"))  # only --trainjob needs them


def test_names_match_the_model_and_the_trainer():
    from pipelines.train import STAGES as TRAIN_STAGES

    assert set(SIZES) == set(PRESETS)
    assert set(STAGES) == set(TRAIN_STAGES)
