"""Kubeflow pipelines (kfp v2): `pretrain`, `sft`, `evaluate`, `annotate` (annotate -> sft
-> evaluate -> register) and `import` (a released checkpoint into the registry); no
`from __future__` import here: kfp reads the annotations as types.

Each is a chain of lightweight components that import the project (the cluster runs them in the
platform image, `MOSS_PIPELINE_IMAGE`; `kfp.local` runs them in this environment) and call the
plain functions of pipelines/components.py. Components pass references only (manifest keys, run
ids, versions). On a cluster the tasks get the platform's settings from the `moss-platform`
secret, GPUs for the 4B/8B variants, retries, and caching off where runs must not be reused.
"""

from typing import NamedTuple

from kfp import dsl

from services.core.queue import PIPELINE_NAMES
from services.core.settings import Settings

IMAGE = Settings().pipeline_image
SECRET = "moss-platform"
SECRET_ENV = {
    k: k
    for k in (
        "MOSS_MLFLOW_URI",
        "MOSS_STORAGE",
        "MOSS_S3_ENDPOINT",
        "MOSS_S3_BUCKET",
        "MOSS_S3_ACCESS_KEY",
        "MOSS_S3_SECRET_KEY",
        "MOSS_S3_SECURE",
    )
}


@dsl.component(base_image=IMAGE)
def prepare_data(
    name: str, num_clips: int, seed: int, manifest: str, speech_share: float
) -> NamedTuple("Data", [("manifest", str), ("digest", str)]):
    from collections import namedtuple

    from pipelines.components import prepare_data as run

    key, digest = run(name, num_clips, seed, manifest, speech_share)
    return namedtuple("Data", ["manifest", "digest"])(key, digest)


@dsl.component(base_image=IMAGE)
def annotate(manifest: str, annotators: str, asr_model: str, label_map: str) -> NamedTuple(
    "Annotated", [("manifest", str), ("digest", str), ("captions", str)]
):
    from collections import namedtuple

    from pipelines.components import annotate_step

    sft, digest, captions = annotate_step(manifest, annotators, asr_model, label_map)
    return namedtuple("Annotated", ["manifest", "digest", "captions"])(sft, digest, captions)


@dsl.component(base_image=IMAGE)
def train(
    size: str,
    flavor: str,
    stage: str,
    manifest: str,
    base_model: str,
    steps: int,
    batch_size: int,
    lr: float,
    max_minutes: float,
    dropout: float,
    kind_weights: str,
    vocab_shortlist: bool,
    conversations: bool,
    moss_run_id: str,
) -> str:
    from pipelines.components import train_step

    return train_step(
        size,
        flavor,
        stage,
        manifest,
        base_model,
        steps,
        batch_size,
        lr,
        max_minutes=max_minutes,
        dropout=dropout,
        kind_weights=kind_weights,
        vocab_shortlist=vocab_shortlist,
        conversations=conversations,
        moss_run_id=moss_run_id,
    )


@dsl.component(base_image=IMAGE)
def evaluate(
    size: str, flavor: str, model: str, run_id: str, manifest: str, per_kind: int, version: str
) -> str:
    """The evaluations (JSON list): on the manifest's held-out split, then the reference set."""
    import json

    from pipelines.components import evaluate_step
    from services.core.registry import model_name

    name = model or model_name(size, flavor)
    return json.dumps(evaluate_step(run_id, manifest, per_kind, name, version))


@dsl.component(base_image=IMAGE)
def register(size: str, flavor: str, run_id: str, evaluations: str) -> str:
    import json

    from pipelines.components import register_step

    return register_step(size, flavor, run_id, json.loads(evaluations))


@dsl.component(base_image=IMAGE)
def promote(size: str, flavor: str, model: str, version: str, alias: str) -> str:
    from pipelines.components import promote_step

    return promote_step(size, flavor, version, alias, actor="pipeline", model=model)


@dsl.component(base_image=IMAGE)
def version_run(size: str, flavor: str, model: str, version: str) -> str:
    from pipelines.components import tracking_uri
    from services.core.registry import Registry, model_name

    name = model or model_name(size, flavor)
    return Registry(tracking_uri()).client.get_model_version(name, version).run_id


def _cluster_options(task: dsl.PipelineTask, gpu: bool = False, local: bool = False) -> None:
    """Settings, retries and GPUs on a cluster. Local runs get no retries: kfp.local honours
    them, and re-running a refused promotion or a broken step only delays the error."""
    from kfp import kubernetes

    kubernetes.use_secret_as_env(task, secret_name=SECRET, secret_key_to_env=SECRET_ENV)
    if not local:
        task.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2)
    if gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        task.set_memory_request("64G").set_cpu_request("8")


def training_pipeline(stage: str, gpu: bool, local: bool = False):
    """`pretrain` or `sft`; `gpu` (a compile-time choice) requests a GPU for train/evaluate."""

    @dsl.pipeline(
        name=f"moss-audio-{stage}" + ("-gpu" if gpu else ""),
        description=f"{stage}: prepare data, train, evaluate, register, optionally promote.",
    )
    def pipeline(
        size: str = "tiny",
        flavor: str = "instruct",
        dataset: str = "events-speech-v2",
        num_clips: int = 600,
        speech_share: float = 0.5,
        manifest: str = "",
        base_model: str = "",
        steps: int = 300,
        batch_size: int = 16,
        lr: float = 3e-3,
        max_minutes: float = 0.0,
        dropout: float = -1.0,
        kind_weights: str = "",
        vocab_shortlist: bool = False,
        conversations: bool = False,
        promote_to: str = "",
        moss_run_id: str = "",
    ) -> None:
        data = prepare_data(
            name=dataset, num_clips=num_clips, seed=0, manifest=manifest, speech_share=speech_share
        )
        _cluster_options(data, local=local)
        _train_evaluate_register(
            data.outputs["manifest"], gpu, local, stage=stage, size=size, flavor=flavor,
            base_model=base_model, steps=steps, batch_size=batch_size, lr=lr,
            max_minutes=max_minutes, dropout=dropout, kind_weights=kind_weights,
            vocab_shortlist=vocab_shortlist, conversations=conversations, promote_to=promote_to,
            moss_run_id=moss_run_id,
        )  # fmt: skip

    return pipeline


def _train_evaluate_register(manifest, gpu: bool, local: bool, promote_to, **train_args) -> None:
    """train -> evaluate on the same manifest -> register -> promote (when promote_to is set)."""
    size, flavor = train_args["size"], train_args["flavor"]
    trained = train(manifest=manifest, **train_args)
    trained.set_caching_options(False)  # every run is a new model
    _cluster_options(trained, gpu=gpu, local=local)
    evaluated = evaluate(
        size=size, flavor=flavor, model="", run_id=trained.output, manifest=manifest,
        per_kind=100, version="",
    )  # fmt: skip
    evaluated.set_caching_options(False)
    _cluster_options(evaluated, gpu=gpu, local=local)
    registered = register(
        size=size, flavor=flavor, run_id=trained.output, evaluations=evaluated.output
    )
    registered.set_caching_options(False)
    _cluster_options(registered, local=local)
    promoted = promote(
        size=size, flavor=flavor, model="", version=registered.output, alias=promote_to
    )
    promoted.set_caching_options(False)
    _cluster_options(promoted, local=local)


def annotate_pipeline(gpu: bool, local: bool = False):
    """Annotate a manifest's clips, then train on the SFT manifest, evaluate, register."""

    @dsl.pipeline(
        name="moss-audio-annotate" + ("-gpu" if gpu else ""),
        description="annotate -> sft -> evaluate -> register: retrain on unlabelled audio.",
    )
    def pipeline(
        manifest: str,
        annotators: str = "",
        asr_model: str = "",
        label_map: str = "",
        size: str = "tiny",
        flavor: str = "instruct",
        base_model: str = "",
        steps: int = 300,
        batch_size: int = 16,
        lr: float = 3e-3,
        max_minutes: float = 0.0,
        conversations: bool = False,
        promote_to: str = "",
        moss_run_id: str = "",
    ) -> None:
        annotated = annotate(
            manifest=manifest, annotators=annotators, asr_model=asr_model, label_map=label_map
        )
        annotated.set_caching_options(False)
        _cluster_options(annotated, local=local)
        _train_evaluate_register(
            annotated.outputs["manifest"], gpu, local, stage="sft", size=size, flavor=flavor,
            base_model=base_model, steps=steps, batch_size=batch_size, lr=lr,
            max_minutes=max_minutes, dropout=-1.0, kind_weights="", vocab_shortlist=False,
            conversations=conversations, promote_to=promote_to, moss_run_id=moss_run_id,
        )  # fmt: skip

    return pipeline


def evaluate_pipeline(gpu: bool, local: bool = False):
    """Score a registered version (`model`, or moss-audio-{size}-{flavor}) on a manifest's
    held-out split (and the name's reference set) and record the evaluations on the version:
    what the promotion gate's `evaluation_set_mismatch` asks for."""

    @dsl.pipeline(
        name="moss-audio-evaluate" + ("-gpu" if gpu else ""),
        description="Evaluate a registered version on a dataset and record it on the version; "
        "optionally promote it.",
    )
    def pipeline(
        size: str = "tiny",
        flavor: str = "instruct",
        model: str = "",
        version: str = "1",
        dataset: str = "events-speech-v2",
        num_clips: int = 600,
        speech_share: float = 0.5,
        manifest: str = "",
        per_kind: int = 100,
        promote_to: str = "",
    ) -> None:
        data = prepare_data(
            name=dataset, num_clips=num_clips, seed=0, manifest=manifest, speech_share=speech_share
        )
        _cluster_options(data, local=local)
        run = version_run(size=size, flavor=flavor, model=model, version=version)
        _cluster_options(run, local=local)
        evaluated = evaluate(
            size=size, flavor=flavor, model=model, run_id=run.output,
            manifest=data.outputs["manifest"], per_kind=per_kind, version=version,
        )  # fmt: skip
        evaluated.set_caching_options(False)
        _cluster_options(evaluated, gpu=gpu, local=local)
        promoted = promote(size=size, flavor=flavor, model=model, version=version, alias=promote_to)
        promoted.after(evaluated)
        promoted.set_caching_options(False)
        _cluster_options(promoted, local=local)

    return pipeline


@dsl.component(base_image=IMAGE)
def import_checkpoint(
    name: str,
    hub_id: str,
    key: str,
    revision: str,
    alias: str,
    trained_for: str,
    actor: str,
    uploaded: bool,
) -> str:
    from pipelines.importer import run_import

    return run_import(
        name, hub_id=hub_id, key=key, revision=revision, alias=alias, trained_for=trained_for,
        actor=actor, uploaded=uploaded,
    ).version  # fmt: skip


def import_pipeline(local: bool = False):
    """One step: download (hub) or fetch (object store) a checkpoint, check its layout,
    register it with lineage (POST /v1/registry/models/import queues it). No GPU: nothing is
    run, the model is only built on the meta device to check its tensor names."""

    @dsl.pipeline(
        name="moss-audio-import",
        description="Import a hub-layout checkpoint (hub repo or object-store key) into the "
        "registry, with lineage; optionally move an alias to it.",
    )
    def pipeline(
        name: str,
        hub_id: str = "",
        key: str = "",
        revision: str = "",
        alias: str = "",
        trained_for: str = "",
        actor: str = "",
        uploaded: bool = False,
    ) -> None:
        task = import_checkpoint(
            name=name, hub_id=hub_id, key=key, revision=revision, alias=alias,
            trained_for=trained_for, actor=actor, uploaded=uploaded,
        )  # fmt: skip
        task.set_caching_options(False)  # the same files import to the version already there
        _cluster_options(task, local=local)

    return pipeline


def pipeline(name: str, gpu: bool = False, local: bool = False):
    """The pipeline function for `pretrain`, `sft`, `evaluate`, `annotate` or `import`."""
    if name == "import":
        return import_pipeline(local)
    if name == "evaluate":
        return evaluate_pipeline(gpu, local)
    if name in ("pretrain", "sft"):
        return training_pipeline(name, gpu, local)
    if name == "annotate":
        return annotate_pipeline(gpu, local)
    raise ValueError(f"unknown pipeline {name!r}: use {', '.join(PIPELINE_NAMES)}")
