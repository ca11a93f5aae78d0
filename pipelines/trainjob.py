"""The Kubeflow Trainer v2 `TrainJob` that runs `mossctl train` across GPUs and nodes.

A cluster run is the same command as a local one: every pod of the TrainJob runs
`mossctl train MANIFEST ... --nodes M --nproc-per-node N`, and the `torch-distributed`
ClusterTrainingRuntime injects `PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`,
`PET_MASTER_ADDR` and `PET_MASTER_PORT` into each pod, which the command hands to torchrun.
Nothing is copied into the pods: the manifest, the output and a resume folder are object-store
URLs (`s3://bucket/key`), because the pods share no disk with whoever created the job.

The platform's settings (object store, MLflow) reach the pods from one Secret (`moss-platform`
by default; the chart renders it with `trainer.enabled`). The TrainJob CRD has no `envFrom`
(only `env` with `valueFrom`), so each setting is its own optional `secretKeyRef`: a key the
Secret lacks leaves the setting at its default.

This module builds the object only (no Kubernetes client); pipelines/trainer_k8s.py creates it
on a cluster and follows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
DEFAULT_RUNTIME = "torch-distributed"
DEFAULT_SECRET = "moss-platform"
SIZES = ("tiny", "small", "4b", "8b")  # model.config.PRESETS (a test keeps them equal)
STAGES = ("pretrain", "sft", "sft_thinking")  # pipelines.train.STAGES (a test keeps them equal)
FLAVORS = ("instruct", "thinking")
DECODERS = ("full", "lora")
# The settings a training pod reads (services/core/settings.py, MOSS_ prefix).
PLATFORM_SETTINGS = (
    "MOSS_STORAGE",
    "MOSS_S3_ENDPOINT",
    "MOSS_S3_BUCKET",
    "MOSS_S3_ACCESS_KEY",
    "MOSS_S3_SECRET_KEY",
    "MOSS_S3_REGION",
    "MOSS_S3_SECURE",
    "MOSS_MLFLOW_URI",
)
OBJECT_URL = re.compile(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/\S+")
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
GPU = "nvidia.com/gpu"


@dataclass(frozen=True)
class TrainSpec:
    """The flags of one `mossctl train` run (the same names, underscores for dashes).

    `freeze_encoder` None keeps the stage's rule (pipelines/train.py STAGES); True/False
    overrides it. `freeze_adapter` also freezes the adapter and the DeepStack mergers."""

    manifest: str
    output: str
    size: str = "tiny"
    flavor: str = "instruct"
    base: str = ""
    stage: str = "sft"
    decoder: str = "full"
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    resume: str = ""
    nodes: int = 1
    nproc_per_node: int = 1
    activation_checkpointing: bool = False
    freeze_encoder: bool | None = None
    freeze_adapter: bool = False

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node


def check_spec(spec: TrainSpec) -> None:
    """Raise ValueError (one line) for flags no run could use, before anything is created."""
    for field, value, allowed in (
        ("--size", spec.size, SIZES),
        ("--flavor", spec.flavor, FLAVORS),
        ("--stage", spec.stage, STAGES),
        ("--decoder", spec.decoder, DECODERS),
    ):
        if value not in allowed:
            raise ValueError(f"{field} must be one of {', '.join(allowed)} (got {value!r})")
    for field, number in (
        ("--steps", spec.steps),
        ("--batch-size", spec.batch_size),
        ("--nodes", spec.nodes),
        ("--nproc-per-node", spec.nproc_per_node),
    ):
        if number < 1:
            raise ValueError(f"{field} must be at least 1 (got {number})")
    if spec.batch_size % spec.world_size:
        raise ValueError(
            f"--batch-size {spec.batch_size} is not a multiple of the world size "
            f"{spec.world_size} (--nodes x --nproc-per-node): every rank takes an equal slice"
        )
    if not spec.lr > 0:
        raise ValueError(f"--lr must be positive (got {spec.lr})")


def check_cluster_paths(spec: TrainSpec) -> None:
    """A TrainJob's pods share no disk with the caller: MANIFEST, --output and --resume must be
    object-store URLs, and --base a model reference, never a local path."""
    for field, value in (("MANIFEST", spec.manifest), ("--output", spec.output)):
        if not OBJECT_URL.fullmatch(value):
            raise ValueError(
                f"{field} must be an object-store URL such as s3://bucket/path for a TrainJob "
                f"(got {value!r}): the pods cannot read this machine's files"
            )
    if spec.resume and not OBJECT_URL.fullmatch(spec.resume):
        raise ValueError(
            f"--resume must be an object-store URL for a TrainJob (got {spec.resume!r})"
        )
    if spec.base.startswith(("/", "./", "../", "~", "file:")):
        raise ValueError(
            f"--base must be a model reference (models:/NAME@ALIAS, a hub id, s3://...) for a "
            f"TrainJob, not a local path (got {spec.base!r})"
        )


def train_argv(spec: TrainSpec) -> list[str]:
    """The `mossctl train ...` argv every pod runs (flags named as in services/cli/train.py).

    `--json` is always on: the last line of rank 0's output is the run's result, which the
    launcher relays."""
    argv = ["mossctl", "train", spec.manifest, "--size", spec.size, "--flavor", spec.flavor]
    if spec.base:
        argv += ["--base", spec.base]
    argv += ["--stage", spec.stage, "--decoder", spec.decoder, "--steps", str(spec.steps)]
    argv += ["--batch-size", str(spec.batch_size), "--lr", repr(spec.lr), "--seed", str(spec.seed)]
    argv += ["--output", spec.output]
    if spec.resume:
        argv += ["--resume", spec.resume]
    argv += ["--nodes", str(spec.nodes), "--nproc-per-node", str(spec.nproc_per_node)]
    if spec.activation_checkpointing:
        argv.append("--activation-checkpointing")
    if spec.freeze_encoder is not None:
        argv.append("--freeze-encoder" if spec.freeze_encoder else "--train-encoder")
    if spec.freeze_adapter:
        argv.append("--freeze-adapter")
    return [*argv, "--json"]


def platform_env(secret: str) -> list[dict[str, Any]]:
    """One optional secretKeyRef per setting (the CRD's trainer has `env`, not `envFrom`)."""
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "MOSS_HOME", "value": "/tmp/moss"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},  # log lines reach the step as they come
    ]
    env += [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for key in PLATFORM_SETTINGS
    ]
    return env


def resources_per_node(spec: TrainSpec, gpus: int, cpu: str, memory: str) -> dict[str, Any]:
    """Requests/limits of one node's pod: one process per GPU when GPUs are asked for."""
    if gpus and gpus != spec.nproc_per_node:
        raise ValueError(
            f"--nproc-per-node {spec.nproc_per_node} must equal the GPUs per node ({gpus}): "
            "one process per GPU"
        )
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    limits: dict[str, Any] = {GPU: gpus} if gpus else {}
    if memory:
        limits["memory"] = memory
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def trainjob(
    spec: TrainSpec,
    *,
    name: str,
    namespace: str,
    image: str,
    runtime: str = DEFAULT_RUNTIME,
    gpus_per_node: int | None = None,
    secret: str = DEFAULT_SECRET,
    cpu: str = "",
    memory: str = "",
    labels: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The TrainJob object (a dict, as the Kubernetes API takes it) for `spec`.

    `gpus_per_node` None means one GPU per process; 0 a CPU-only job (gloo). `env` adds plain
    variables (the pipeline run's id, MOSS_PIPELINE_RUN_ID, so rank 0 tags its MLflow run)."""
    check_spec(spec)
    check_cluster_paths(spec)
    if not DNS_LABEL.fullmatch(name) or len(name) > 63:
        raise ValueError(f"TrainJob name {name!r} must be a DNS label (a-z, 0-9, -; 63 at most)")
    if not runtime:
        raise ValueError("the ClusterTrainingRuntime name must not be empty")
    gpus = spec.nproc_per_node if gpus_per_node is None else gpus_per_node
    argv = train_argv(spec)
    trainer: dict[str, Any] = {
        "image": image,
        "command": argv[:2],
        "args": argv[2:],
        "numNodes": spec.nodes,
        "numProcPerNode": spec.nproc_per_node,
        "env": platform_env(secret) + [{"name": k, "value": v} for k, v in (env or {}).items()],
    }
    resources = resources_per_node(spec, gpus, cpu, memory)
    if resources:
        trainer["resourcesPerNode"] = resources
    meta_labels = {
        "app.kubernetes.io/part-of": "moss-audio",
        "app.kubernetes.io/component": "training",
        "moss-audio/size": spec.size,
        "moss-audio/stage": spec.stage.replace("_", "-"),
        **(labels or {}),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {"runtimeRef": {"name": runtime}, "trainer": trainer},
    }


def render_trainjob(spec: TrainSpec, **options: Any) -> str:
    """The TrainJob as YAML (what `mossctl train --trainjob` prints); options as trainjob()."""
    return yaml.safe_dump(trainjob(spec, **options), sort_keys=False)
