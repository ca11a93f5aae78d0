"""Request and response bodies of the API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.sampling import MAX_NEW_TOKENS, MAX_TEMPERATURE, SAMPLING_MODES, TEMPERATURE_RULE
from model.tasks import TASKS

from ..core.imports import HUB_ID_PATTERN, REVISION_PATTERN
from ..core.jobstate import ANNOTATION_TASK, Stage, Status
from ..core.modelref import ALIASES, NAME_PATTERN
from ..core.queue import PRIORITIES

# The choices of the API's fields, each from its one definition (the OpenAPI document lists
# them as enums; a value outside them is 422 `invalid_<field>`).
Task = Literal[TASKS]  # what POST /v1/jobs takes
JobTask = Literal[(*TASKS, ANNOTATION_TASK)]  # what a job is (annotation jobs too)
Sampling = Literal[SAMPLING_MODES]
Priority = Literal[PRIORITIES]
Alias = Literal[ALIASES]
# What an API key may carry (deps.principal); `registry`: import checkpoints (and read the runs).
SCOPES = ("jobs", "priority", "datasets", "registry", "admin")
Scope = Literal[SCOPES]
# Documented ranges of the sampling fields; model.sampling.check_sampling enforces them (for
# every entry point, with its own codes: `invalid_max_new_tokens`, `invalid_temperature`).
MAX_NEW_TOKENS_RANGE = {"minimum": 1, "maximum": MAX_NEW_TOKENS}
TEMPERATURE_RANGE = {"minimum": 0, "maximum": MAX_TEMPERATURE}
TEMPERATURE_HELP = f"{TEMPERATURE_RULE}; other values are refused (422 `invalid_temperature`)."


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable, e.g. `upload_too_large`.")
    message: str = Field(description="What went wrong and what to do, for people.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class TimedSegment(BaseModel):
    start: float | None = Field(description="Seconds from the start of the file; null: untimed")
    end: float | None = Field(description="Seconds; null for a point in time or an untimed line")
    text: str
    flag: str | None = Field(
        default=None,
        description="Why the item is not a clean span: `no_timestamp` (a line the model wrote "
        "without a time, kept as is) or `end_before_start`.",
    )


class AnsweredBy(BaseModel):
    ref: str = Field(description="The model the job named (`name` or `name@alias`)")
    registry_version: str | None = Field(default=None, description="MLflow version, if any")
    digest: str | None = Field(default=None, description="Digest of the weights that answered")
    name: str | None = None
    alias: str | None = None
    source: str | None = Field(default=None, description="Hub repo, registry run or `local`")
    trained_for: str | None = Field(default=None, description="What the model was trained for")


class TokenUsage(BaseModel):
    prompt_tokens: int = Field(description="Prompt tokens, audio included")
    completion_tokens: int


class JobResult(BaseModel):
    text: str
    segments: list[TimedSegment] | None = None
    thinking: str | None = None
    finish_reason: str | None = Field(
        default=None,
        description="`stop`: the model ended its answer; `length`: an answer (of a segment) "
        "ran into max_new_tokens and is cut there",
    )
    model: AnsweredBy | None = None
    usage: TokenUsage | None = None


class AnnotatedDataset(BaseModel):
    dataset: str = Field(description="The tenant's dataset the output was committed as.")
    manifest: str = Field(description="Its manifest's object key (a pipeline's `manifest`).")
    digest: str
    clips: int


class AnnotationFailure(BaseModel):
    id: str | None
    code: str
    message: str


class AnnotationResult(BaseModel):
    items: int
    annotated: int
    failed: int
    captions: AnnotatedDataset | None = Field(None, description="Unified-caption manifest.")
    sft: AnnotatedDataset | None = Field(None, description="Instruction pairs (SFT) manifest.")
    failures: list[AnnotationFailure] = Field(description="The first 20 failed items.")
    failures_key: str = Field(description="Every failed item, as JSONL in the object store.")
    seconds: float | None = None
    labels: dict[str, Any] | None = Field(
        None,
        description="How the engine's event labels were named: the vocabulary and where it came "
        "from, the labels mapped (from, to, events) and those kept unmapped (label: events).",
    )


# A label's time or a clip's length past a day belongs to no clip the platform decodes (and an
# unbounded number is how `offset` once overflowed the database).
MAX_LABEL_SECONDS = 86_400
# A time as sent: an integer stays an integer (given labels are kept byte for byte).
Seconds = (
    Annotated[int, Field(ge=0, le=MAX_LABEL_SECONDS)]
    | Annotated[float, Field(ge=0, le=MAX_LABEL_SECONDS)]
)
Duration = (
    Annotated[int, Field(gt=0, le=MAX_LABEL_SECONDS)]
    | Annotated[float, Field(gt=0, le=MAX_LABEL_SECONDS)]
)


class LabelSegment(BaseModel):
    """Times are kept as sent (an integer stays one): given labels are kept byte for byte."""

    model_config = {"extra": "forbid", "allow_inf_nan": False}
    start: Seconds
    end: Seconds
    text: str = Field(min_length=1)
    speaker: str | None = None


class LabelEvent(BaseModel):
    model_config = {"extra": "forbid", "allow_inf_nan": False}
    label: str = Field(min_length=1)
    start: Seconds
    end: Seconds


class LabelInstruction(BaseModel):
    model_config = {"extra": "forbid"}
    prompt: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class LabelExample(BaseModel):
    model_config = {"extra": "forbid"}
    task: Literal["transcribe", "transcribe_timestamps", "caption", "ask", "chat"]
    kind: str = Field(min_length=1)
    prompt: str | None = None
    answer: str = Field(min_length=1)


class AnnotationItem(BaseModel):
    """A manifest line (docs/datasets.md) whose audio is uploaded to the dataset: the labels it
    has are kept as they are; the engine adds the others (docs/annotation.md)."""

    model_config = {"extra": "forbid", "allow_inf_nan": False}
    audio: str = Field(description="`audio/<sha256>` of audio uploaded to the dataset.")
    id: str | None = Field(None, max_length=256)
    split: Literal["train", "heldout", "test"] | None = None
    language: str | None = Field(None, max_length=16)
    duration: Duration | None = None
    transcript: str | None = None
    segments: list[LabelSegment] | None = None
    events: list[LabelEvent] | None = None
    caption: str | None = Field(None, min_length=1)
    instructions: list[LabelInstruction] | None = None
    examples: list[LabelExample] | None = None
    provenance: dict[str, str] | None = Field(
        None, description="Where each label came from (an earlier annotation's); default `given`."
    )


class AnnotationCreate(BaseModel):
    model_config = {"extra": "forbid"}
    dataset: str = Field(description="The tenant's dataset whose audio is annotated.")
    items: list[AnnotationItem] | None = Field(
        None, description="The clips to annotate (default: every clip of the dataset's manifest)."
    )
    webhook_url: str | None = Field(None, max_length=2048)
    label_map: dict[str, str] | None = Field(
        None,
        description='Renames the engine\'s event labels, e.g. {"low tone": "low beep"} '
        "(default: the served model's training labels; 422 `invalid_label_map`).",
    )


class WebhookAttempt(BaseModel):
    at: datetime
    status_code: int | None = Field(description="The receiver's answer; null: no answer")
    error: str | None = Field(default=None, description="Why no 2xx came back")
    duration_ms: float


class WebhookDeliveryOut(BaseModel):
    id: str = Field(description="Also sent as `Moss-Webhook-Id`: the same on every retry")
    event: Literal["job.succeeded", "job.failed", "job.cancelled"]
    status: Literal["pending", "delivered", "failed"] = Field(
        description="pending: retrying with backoff; failed: given up after the horizon"
    )
    attempts: list[WebhookAttempt]
    next_attempt_at: datetime | None


class WebhookOut(BaseModel):
    url: str
    deliveries: list[WebhookDeliveryOut] | None = Field(
        default=None, description="Attempts so far (GET /v1/jobs/{id} only; null in lists)"
    )


class JobOut(BaseModel):
    id: str
    status: Status
    stage: Stage = Field(description="queued, encode, encoded, generate, annotate or done.")
    progress: float = Field(ge=0, le=1)
    task: JobTask
    prompt: str | None
    model: str
    audio_seconds: float
    params: dict[str, Any]
    result: JobResult | AnnotationResult | None
    error: ErrorDetail | None
    timings: dict[str, Any] = Field(description="Per stage: started_at, finished_at, seconds.")
    attempts: int = Field(description="Stage runs so far (more than 2: a stage was retried).")
    priority: Priority = "normal"
    webhook: WebhookOut | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    purged_at: datetime | None = Field(
        default=None, description="When the audio, features and result were deleted"
    )

    @classmethod
    def of(cls, job: Any, deliveries: list[Any] | None = None) -> JobOut:
        webhook = None
        if job.webhook_url:
            shown = None
            if deliveries is not None:
                shown = [
                    WebhookDeliveryOut(
                        id=d.id, event=d.event, status=d.status, attempts=d.attempts or [],
                        next_attempt_at=_utc(d.next_attempt_at) if d.status == "pending" else None,
                    )
                    for d in deliveries
                ]  # fmt: skip
            webhook = WebhookOut(url=job.webhook_url, deliveries=shown)
        return cls(
            id=job.id,
            status=job.status,
            stage=job.stage,
            progress=job.progress,
            task=job.task,
            prompt=job.prompt,
            model=job.model,
            audio_seconds=job.audio_seconds,
            params=job.params or {},
            result=job.result,
            error=job.error,
            timings=job.timings or {},
            attempts=job.attempts,
            created_at=_utc(job.created_at),
            updated_at=_utc(job.updated_at),
            finished_at=_utc(job.finished_at),
            priority=job.priority or "normal",
            webhook=webhook,
            purged_at=_utc(job.purged_at),
        )


class JobList(BaseModel):
    jobs: list[JobOut]
    total: int
    limit: int
    offset: int


class KeyCreate(BaseModel):
    tenant: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    scopes: list[Scope] = Field(default_factory=lambda: ["jobs"])
    name: str = Field(default="", max_length=128)


class KeyOut(BaseModel):
    id: str
    tenant: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret. Shown once; only its hash is stored.")
    webhook_secret: str = Field(
        description="Signs the webhooks of this key's jobs (Moss-Webhook-Signature). Shown "
        "once; POST /v1/keys/{id}/webhook-secret makes a new one."
    )


class WebhookSecret(BaseModel):
    key_id: str
    webhook_secret: str = Field(description="Shown once. The previous secret stops at once.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite drops the zone; we store UTC
        return value.replace(tzinfo=UTC)
    return value


def key_out(record: Any, **extra: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "tenant": record.tenant,
        "name": record.name,
        "prefix": record.prefix,
        "scopes": list(record.scopes),
        "created_at": _utc(record.created_at),
        "revoked_at": _utc(record.revoked_at),
        **extra,
    }


class AliasMove(BaseModel):
    version: str = Field(description="The version the alias should point at.")
    force: bool = Field(default=False, description="Skip the gate (recorded as forced).")


class Rollback(BaseModel):
    alias: Alias = Field(description="The alias to move back (required: no default).")


class ImportRequest(BaseModel):
    """An import of a checkpoint by reference (JSON); an archive is uploaded as multipart."""

    model_config = {"extra": "forbid"}
    name: str = Field(pattern=NAME_PATTERN, description="The registered model name.")
    hub_id: str | None = Field(
        None, pattern=HUB_ID_PATTERN, description="A hub repo (`org/name`) to download."
    )
    key: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Instead of `hub_id`: an object-store key under `imports/{tenant}/`: an "
        "archive (.tar, .tar.gz, .zip) or a folder of checkpoint files.",
    )
    revision: str | None = Field(
        None, pattern=REVISION_PATTERN, description="With `hub_id`: a branch, tag or commit."
    )
    alias: Alias | None = Field(
        None,
        description="Move this alias to the imported version: an explicit promotion, recorded "
        "with the actor; admin keys only (403 `alias_admin_only` for a `registry` key).",
    )
    trained_for: str | None = Field(
        None, max_length=500, description="What the checkpoint was trained for (lineage)."
    )


class PipelineRun(BaseModel):
    params: dict[str, Any] = Field(
        default_factory=dict, description='Pipeline parameters, e.g. {"size": "tiny"}.'
    )


class PipelineRunOut(BaseModel):
    run_id: str = Field(description="Names the run's log and outputs.")
    mode: Literal["local", "kubeflow"] = Field(description="Where the pipeline worker runs it.")
    status: Status = Field(description="queued (or the first run's status, for a replay).")
    url: str = Field(description="The run's resource: `GET` it, follow `/events`, `DELETE` it.")
    log: str = Field(description="The path of the run's log route (`GET` it; `?follow=true`).")


class RollbackOut(BaseModel):
    name: str
    alias: Alias
    version: str = Field(description="The version the alias points at now.")


class Decision(BaseModel):
    """A promotion decision, as recorded on the version."""

    model: str
    version: str
    alias: Alias
    accepted: bool
    reason: str
    actor: str
    at: str
    candidate_metrics: dict[str, float]
    holder: str | None = None
    holder_metrics: dict[str, float] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=dict)
    evaluation_set: str | None = Field(
        default=None,
        description="The digest of the evaluation set both sides' figures above were measured "
        "on (docs/registry.md); null when no holder's figures were compared (no holder, no "
        "common set, a holder never evaluated).",
    )
    thresholds_set: str | None = Field(
        default=None,
        description="The digest of the set the thresholds were checked on (the candidate's "
        "figures above): `evaluation_set` when a holder was compared, the candidate's own with "
        "no holder; null when the gate judged no figures (a refusal across sets).",
    )
    evaluation_manifest: str | None = Field(
        default=None, description="The manifest of `thresholds_set`."
    )
    examples_per_family: dict[str, int] = Field(
        default_factory=dict,
        description="How many examples of each label family `thresholds_set` scored.",
    )


class OpenAIModel(BaseModel):
    """One model id in the OpenAI list shape (what `client.models.list()` reads)."""

    id: str = Field(description="What a request names as `model`: `name` or `name@alias`.")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds: when the model (or its checkpoint) appeared.")
    owned_by: str = Field(description="`registry` or `local` (a checkpoint directory).")


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class ModelEntry(BaseModel):
    """A registered model (versions with lineage and metrics) or a local checkpoint."""

    model_config = ConfigDict(extra="allow")

    name: str
    aliases: dict[str, str]
    versions: list[dict[str, Any]]
    source: Literal["registry", "local"]
    default: bool = Field(description="What a job without `model` gets.")
    trained_for: str | None = None


class DatasetOut(BaseModel):
    name: str
    manifest: str = Field(description="The object key a pipeline run takes as `manifest`.")
    digest: str = Field(description="sha256 of the committed manifest: the dataset's identity.")
    clips: int
    splits: dict[str, int]
    families: list[str] = Field(description="The label families the clips have.")
    created_at: str
    skipped_lines: int = Field(0, description="Lines of the upload left out (bad).")
    problems: list[str] = Field(default_factory=list, description="Why (line and field).")


class AudioCheck(BaseModel):
    digests: list[str] = Field(max_length=100_000, description="sha256 of each clip to send.")


class AudioMissing(BaseModel):
    missing: list[str] = Field(description="The digests the store does not have yet.")
