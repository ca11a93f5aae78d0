"""The pipeline steps as plain functions: prepare data, train, evaluate, register, promote.

Kubeflow components (pipelines/kfp_pipelines.py) are thin wrappers that call these, so the
same code runs in tests, in `kfp.local` and on a cluster. Steps hand each other references
only: a manifest key in the object store, an MLflow run id, a registered version. Settings
(object store, MLflow) come from `MOSS_*` variables, as everywhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import torch

from model import MossAudioModel, MossAudioProcessor, preset_config
from services.core.labels import read_event_labels, training_event_labels, write_event_labels
from services.core.modelref import ModelNotFound, parse, resolve
from services.core.progress import emit, one_line
from services.core.registry import (
    CHECKPOINT_ARTIFACT,
    PromotionRefused,
    Registry,
    code_version,
    describe_set,
    model_name,
)
from services.core.settings import Settings, get_settings
from services.core.sft import KINDS
from services.core.storage import make_storage

from .data import describe_dataset, generate_dataset, read_manifest
from .evaluate import evaluate, evaluation_record, first_per_kind
from .report import write_report
from .tracking import RUN_TAG
from .train import Examples, StepReport, TrainConfig, train

EVAL_KINDS = KINDS  # every family the held-out split has is scored
# Checkpoints small enough that promote_step scores the alias's holder itself, on a CPU, when
# the holder was not measured on the candidate's set (the tiny variant is about 80 MB; a 4B
# model, 8 GB, is scored by the evaluate pipeline, on a GPU).
RESCORE_MAX_BYTES = 2 * 1024**3


def tracking_uri() -> str:
    uri = Settings().mlflow_uri  # read now: a component runs once, in its own process
    if not uri:
        raise RuntimeError("MOSS_MLFLOW_URI is not set: the pipelines need an MLflow server")
    return uri


def prepare_data(
    name: str, num_clips: int, seed: int, manifest: str = "", speech_share: float = 0.5
) -> tuple[str, str]:
    """The dataset to use: `manifest` when given, else the generated dataset `name` (made once;
    `speech_share` of its clips are spoken commands, the rest sound events).

    Returns (manifest key, sha256 of the manifest).
    """
    storage = make_storage(get_settings())
    if manifest:
        _, digest = read_manifest(storage, manifest)
        return manifest, digest
    key = f"datasets/{name}/manifest.jsonl"
    if storage.exists(key):  # cached: the same name is the same data
        _, digest = read_manifest(storage, key)
        return key, digest
    return generate_dataset(storage, name, num_clips, seed=seed, speech_share=speech_share)


def annotate_step(
    manifest: str, annotators: str = "", asr_model: str = "", label_map: str = ""
) -> tuple[str, str, str]:
    """The annotation engine over a manifest's clips (the same code as the annotate worker):
    writes `annotated/captions.jsonl` and `annotated/sft.jsonl` beside the manifest and returns
    (sft manifest key, its sha256, captions manifest key). The labels a line has are kept;
    `label_map` (JSON) renames the engine's event labels. Items that fail are reported."""
    import hashlib
    import posixpath

    from services.annotation.engine import AnnotationConfig, Engine, annotate_all
    from services.annotation.vocabulary import check_label_map
    from services.core.datasets import annotation_item

    settings = get_settings()
    storage = make_storage(settings)
    raw = storage.get_bytes(manifest).decode("utf-8", errors="replace")
    folder = posixpath.dirname(manifest)
    items = []
    for number, text in enumerate(raw.splitlines(), 1):
        if not text.strip():
            continue
        line = json.loads(text)
        audio = line["audio"] if line["audio"].startswith("datasets/") else posixpath.join(
            folder, line["audio"])  # fmt: skip
        items.append(annotation_item(line, number, audio))
    config = AnnotationConfig(model=asr_model, max_seconds=settings.annotation_max_seconds)
    if annotators:
        config.annotators = json.loads(annotators)
    engine = Engine(config, settings)
    vocabulary = engine.vocabulary(check_label_map(json.loads(label_map)) if label_map else None)

    reported = [0]  # failures printed so far

    def progress(done: int, run: Any) -> None:
        for failure in run.failures[reported[0] :]:
            line = f"{failure['id']}: {failure['message']} [{failure['code']}]"
            print(one_line(line), flush=True)  # a clip id's line break must not start a line
        reported[0] = len(run.failures)
        if done % 10 == 0 or done == len(items):
            print(f"annotated {done}/{len(items)} ({len(run.failures)} failed)", flush=True)

    run = annotate_all(engine, items, storage.get_bytes, vocabulary, progress=progress)
    print(f"event labels: {json.dumps(run.labels)}", flush=True)
    if not run.sft:
        raise ValueError(f"{manifest}: no clip could be annotated ({len(run.failures)} failed)")
    out = {}
    for kind, lines in (("captions", run.captions), ("sft", run.sft)):
        key = posixpath.join(folder, "annotated", f"{kind}.jsonl")
        body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        storage.put_bytes(key, body)
        out[kind] = (key, hashlib.sha256(body).hexdigest())
    return out["sft"][0], out["sft"][1], out["captions"][0]


def _base_model(size: str, base: str, cache: Path) -> tuple[MossAudioModel, str | None, list[str]]:
    """A registry version (`models:/name@alias` or `models:/name/version`) or a fresh preset,
    with the event labels it was trained on (it keeps knowing them)."""
    if not base:
        torch.manual_seed(0)
        return MossAudioModel(preset_config(size)), None, []
    parsed = parse(base)
    if not parsed.registry:
        raise ValueError(f"{base}: a base model is models:/NAME@ALIAS or models:/NAME/N")
    settings = get_settings().model_copy(update={"mlflow_uri": tracking_uri(), "home": cache})
    try:
        spec = resolve(parsed, settings)
    except ModelNotFound as exc:
        raise ValueError(f"{base}: {exc}") from exc
    parent = f"models:/{spec.name}/{spec.registry_version}"
    return MossAudioModel.from_pretrained(spec.path), parent, read_event_labels(spec.path) or []


def train_step(
    size: str,
    flavor: str,
    stage: str,
    manifest: str,
    base_model: str = "",
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 3e-3,
    train_encoder: bool | None = None,
    decoder: str = "",
    seed: int = 0,
    max_minutes: float = 0.0,
    dropout: float = -1.0,
    kind_weights: str = "",
    vocab_shortlist: bool = False,
    conversations: bool = False,
    moss_run_id: str = "",
) -> str:
    """Train one stage and log it to MLflow (params, per-step metrics, lineage, checkpoint).

    Returns the MLflow run id. `max_minutes` stops early (with a checkpoint) when set;
    `dropout` < 0 keeps the model's rates; `kind_weights` is JSON, e.g. {"event_at": 2}.
    The MLflow run is tagged with the platform's pipeline run id (`moss_run_id`, else the
    worker's MOSS_PIPELINE_RUN_ID): on Kubeflow that is how the run's record finds it.
    """
    storage = make_storage(get_settings())
    clips, digest = read_manifest(storage, manifest)
    processor = MossAudioProcessor.from_pretrained(None)
    work = Path(tempfile.mkdtemp(prefix="moss-train-"))
    try:
        torch.manual_seed(seed)  # a fresh model's initial weights are part of the run's recipe
        model, parent, base_labels = _base_model(size, base_model, work / "base")
        thinking = flavor == "thinking" and stage.startswith("sft")
        if parent is None and train_encoder is None:
            train_encoder = True  # a fresh model has no trained encoder to keep frozen
        config = TrainConfig(
            stage="sft_thinking" if thinking else stage,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            train_encoder=train_encoder,
            decoder=decoder or None,
            seed=seed,
            max_seconds=60 * max_minutes,
            dropout=dropout if dropout >= 0 else None,
            kind_weights=json.loads(kind_weights) if kind_weights else None,
            vocab_shortlist=vocab_shortlist,
            conversations=conversations,
        )
        examples = Examples(
            clips,
            storage.get_bytes,
            processor,
            config.kinds,
            "train",
            thinking,
            conversations=conversations,
            seed=seed,
        )
        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_experiment(f"moss-audio-{size}-{flavor}")
        pipeline_run = moss_run_id or os.environ.get("MOSS_PIPELINE_RUN_ID", "")
        tags = {RUN_TAG: pipeline_run} if pipeline_run else None
        with mlflow.start_run(run_name=f"{stage}-{size}-{flavor}", tags=tags) as run:
            base = base_model or f"preset:{size}"
            trained_for = describe_dataset(clips, manifest)
            _log_inputs(config, examples, stage, size, flavor, manifest, digest, parent, base,
                        trained_for, kind_weights)  # fmt: skip
            print(f"training on {len(examples)} examples: {examples.kind_counts()}", flush=True)
            emit(pipeline_step="train", mlflow_run_id=run.info.run_id, total_steps=steps,
                 message=f"training on {len(examples)} examples")  # fmt: skip
            report = StepReport(steps, config.max_seconds)

            def log(step: int, metrics: dict[str, float]) -> None:
                if step % 10 == 0 or step == 1:
                    mlflow.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step=step)
                report(step, metrics)

            result = train(
                model,
                examples,
                config,
                output_dir=work / "checkpoint",
                processor=processor,
                on_step=log,
            )
            report.finish(result.steps, result.final_loss)
            if result.steps % 10:  # the last step's loss too (a Kubeflow run's record reads it)
                mlflow.log_metric("train/loss", result.final_loss, step=result.steps)
            mlflow.log_metric("train/steps_done", result.steps)
            # the vocabulary travels with the weights: annotation names sounds in these words
            write_event_labels(work / "checkpoint", {*base_labels, *training_event_labels(clips)})
            mlflow.log_artifacts(str(work / "checkpoint"), CHECKPOINT_ARTIFACT)
            return run.info.run_id
    finally:  # the checkpoint is in MLflow now: a run leaves no copy behind
        shutil.rmtree(work, ignore_errors=True)


def _log_inputs(config: TrainConfig, examples: Examples, stage: str, size: str, flavor: str,
                manifest: str, digest: str, parent: str | None, base: str, trained_for: str,
                kind_weights: str) -> None:  # fmt: skip
    """The run's lineage tags and recipe parameters: what `register_step` and a person comparing
    runs read back."""
    mlflow.set_tags(
        {
            "code_version": code_version(),
            "data_digest": digest,
            "parent_model": parent or "",
            "stage": stage,
            "variant": f"{size}-{flavor}",
            "trained_for": trained_for + (f", starting from {parent}" if parent else ""),
        }
    )
    mlflow.log_params(
        {
            **{k: v for k, v in config.__dict__.items() if k not in ("kinds", "kind_weights")},
            "kinds": ",".join(config.kinds),
            "kind_weights": kind_weights or "none",
            "manifest": manifest,
            "data_digest": digest,
            "base_model": base,
            "examples": len(examples),
            "examples_by_kind": json.dumps(examples.kind_counts()),
            "clips_skipped": len(examples.skipped),
        }
    )


def _score(checkpoint: str | Path, manifest: str, per_kind: int) -> tuple[dict[str, Any], list]:
    """Score a checkpoint directory on the held-out split of `manifest` (at most `per_kind`
    examples of each kind): its evaluation record (pipelines.evaluate) and predictions."""
    storage = make_storage(get_settings())
    clips, digest = read_manifest(storage, manifest)
    model = MossAudioModel.from_pretrained(checkpoint).eval()
    processor = MossAudioProcessor.from_pretrained(checkpoint)
    examples = Examples(clips, storage.get_bytes, processor, EVAL_KINDS, "heldout")
    examples.items = first_per_kind(examples.items, per_kind)
    if not examples.items:
        print(f"{manifest}: no held-out example to score (no clip has split heldout)", flush=True)
    metrics, predictions = evaluate(model, examples, processor)
    return evaluation_record(examples, metrics, manifest, digest, per_kind), predictions


def evaluate_step(
    run_id: str, manifest: str, per_kind: int = 100, model: str = "", version: str = ""
) -> list[dict[str, Any]]:
    """Evaluate the run's checkpoint on the held-out split of `manifest`, then on the model
    name's reference set (MOSS_EVAL_SETS, or its `eval_set` tag) when it has one; log metrics
    and reports. Returns the evaluations, the one on `manifest` first.

    A new run's own split is logged as `eval/*` (register_step records its evaluations on the
    version); with `version` (the evaluate pipeline: an existing registered version of
    `model`), every evaluation is recorded on that version and logged as `eval_<set>/*`, so
    the run's own figures stay what they were."""
    print("evaluating on the held-out split", flush=True)  # `mossctl up` shows the phase
    emit(pipeline_step="evaluate", mlflow_run_id=run_id, message="evaluating on the held-out split")
    mlflow.set_tracking_uri(tracking_uri())
    registry = Registry(tracking_uri())
    reference = registry.reference_manifest(model) if model else None
    client = mlflow.MlflowClient()
    history = _history(client, client.get_run(run_id).info.experiment_id, exclude=run_id)
    evaluations = []
    with tempfile.TemporaryDirectory(prefix="moss-eval-") as tmp:  # gone with its checkpoint copy
        work = Path(tmp)
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(work)
        )
        for key in dict.fromkeys([manifest, *([reference] if reference else [])]):
            if key != manifest:
                print(f"evaluating on the reference set {key}", flush=True)
            own = key == manifest and not version
            evaluation = _evaluate_on(local, key, per_kind, run_id, own, history, work)
            if version:
                registry.record_evaluation(model, version, evaluation)
            evaluations.append(evaluation)
            shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(evaluation["metrics"].items()))
            label = "evaluation" if key == manifest else "reference evaluation"
            print(f"{label}: {shown}", flush=True)
            print(f"evaluation set: {describe_set(evaluation)}", flush=True)
    return evaluations


def _evaluate_on(
    checkpoint: str, manifest: str, per_kind: int, run_id: str, own: bool, history: list, work: Path
) -> dict[str, Any]:
    """Score `checkpoint` on one set and log the figures and the report to the run: as `eval/*`
    for the run's own held-out split, as `eval_<set>/*` for any other set."""
    evaluation, predictions = _score(checkpoint, manifest, per_kind)
    prefix = "eval" if own else f"eval_{evaluation['evaluation_set'][:12]}"
    metrics = evaluation["metrics"]
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"{prefix}/{k}": v for k, v in metrics.items()})
        report = write_report(metrics, predictions, history if own else [], work / prefix)
        mlflow.log_artifacts(str(report), "evaluation" + ("" if own else f"/{prefix}"))
    return evaluation


def _history(client: Any, experiment: str, exclude: str) -> list[dict[str, float]]:
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"], max_results=50)
    return [
        {k.removeprefix("eval/"): v for k, v in r.data.metrics.items() if k.startswith("eval/")}
        for r in runs
        if r.info.run_id != exclude
    ]


def register_step(size: str, flavor: str, run_id: str, evaluations: list[dict[str, Any]]) -> str:
    """Register the run's checkpoint as a new version with its evaluations (the first, on its
    own held-out split, gives the listed metrics); alias `candidate`. Returns the version."""
    registry = Registry(tracking_uri())
    run = registry.client.get_run(run_id)
    name = model_name(size, flavor)
    version = registry.register(
        name,
        run_id,
        data_digest=run.data.tags.get("data_digest", ""),
        parent=run.data.tags.get("parent_model") or None,
        metrics=evaluations[0]["metrics"] if evaluations else {},
        description=f"{run.data.tags.get('stage', '')} run {run_id}",
        evaluations=evaluations,
    )
    trained_for = run.data.tags.get("trained_for")
    if trained_for:
        registry.client.set_model_version_tag(name, version, "trained_for", trained_for)
    registry.client.set_registered_model_alias(name, "candidate", version)
    emit(pipeline_step="register", mlflow_run_id=run_id, model=name, version=version)
    return version


def promote_step(
    size: str, flavor: str, version: str, alias: str, actor: str, model: str = ""
) -> str:
    """Apply the promotion gate; returns the decision as JSON (raises when refused).

    When the alias's holder was never measured on the candidate's evaluation set (or never
    evaluated at all, as an import) and its checkpoint is small (RESCORE_MAX_BYTES), it is
    scored on that set here first, and the evaluation recorded on the holder, so that the gate
    compares like with like; otherwise the gate refuses and says how to fix it (the evaluate
    pipeline). The decision is reported either way: a refused run's record shows why."""
    if not alias:
        return json.dumps({"skipped": True})
    name = model or model_name(size, flavor)
    registry = Registry(tracking_uri())
    plan = registry.comparison(name, version, alias)
    target, holder = plan.candidate, str(plan.holder)
    small = plan.mismatch and _checkpoint_bytes(registry, name, holder) <= RESCORE_MAX_BYTES
    if small and target.get("manifest"):
        print(
            f"v{holder} (holder of {alias}) was not measured on v{version}'s evaluation set "
            f"{describe_set(target)}: scoring it there first",
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="moss-rescore-") as work:
            checkpoint = registry.download(name, holder, Path(work) / "checkpoint")
            evaluation, _ = _score(checkpoint, target["manifest"], int(target.get("per_kind", 100)))
        registry.record_evaluation(name, holder, evaluation)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(evaluation["metrics"].items()))
        print(f"v{holder} on {describe_set(evaluation)}: {shown}", flush=True)
    try:
        decision = registry.promote(name, version, alias, actor)
    except PromotionRefused as exc:
        emit(pipeline_step="promote", model=name, version=version, decision=exc.decision)
        raise
    emit(pipeline_step="promote", model=name, version=version, decision=decision.as_dict())
    return json.dumps(decision.as_dict())


def _checkpoint_bytes(registry: Registry, name: str, version: str) -> int:
    """The size of a version's checkpoint artifact (what scoring it would load)."""
    run_id = registry.client.get_model_version(name, version).run_id

    def walk(path: str) -> int:
        items = registry.client.list_artifacts(run_id, path)
        return sum(walk(i.path) if i.is_dir else (i.file_size or 0) for i in items)

    return walk(CHECKPOINT_ARTIFACT)
