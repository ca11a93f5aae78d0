"""Settings: every knob is a `MOSS_*` environment variable (documented in docs/configuration.md).

One `Settings` object per process, read once at start-up. Secrets are `SecretStr`, so they never
appear in a repr or a log line.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.audio_sandbox import DecodeLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOSS_", extra="ignore")

    # Where the embedded stack keeps its state (database, objects, keys, checkpoints, logs).
    home: Path = Path(".moss")

    # Gateway
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: SecretStr | None = Field(
        default=None, description="Admin API key for `mossctl up`; generated once when unset."
    )
    max_upload_mb: float = 100.0
    max_audio_seconds: float = 3600.0
    # The checkpoint archive an import uploads (POST /v1/registry/models/import), and what an
    # archive extracts to on the pipeline worker: the 8B checkpoint is about 17 GB.
    import_max_bytes: int = Field(default=32 * 1024**3, gt=0)
    # Load shedding and slow clients (gateway.overload, gateway.limits, gateway.server):
    # requests running at once, and long polls/event streams held at once; how long a request
    # may wait for a slot before a 503; the time a request head and each body chunk may take.
    gateway_max_inflight: int = Field(default=64, ge=1)
    gateway_max_waiting: int = Field(default=1000, ge=1)
    gateway_queue_wait_s: float = Field(default=0.5, ge=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_idle_timeout_s: float = Field(default=30.0, gt=0)
    # The OpenAI-compatible routes answer synchronously up to this much audio (longer: /v1/jobs),
    # waiting at most sync_timeout_s for the job.
    sync_max_audio_seconds: float = 600.0
    # Admission: requests per minute per API key (a token bucket in Redis holding `rate_burst`;
    # 0: off), jobs a tenant may have queued or running, and the encode queue's depth past which
    # new jobs wait outside (503).
    rate_limit_per_minute: int = 1200
    rate_burst: int = 200
    max_active_jobs_per_tenant: int = 1000
    max_queue_depth: int = 10_000
    sync_timeout_s: float = 600.0
    # Webhooks: each ended job with a webhook_url is POSTed there, signed (docs/api.md); a failed
    # delivery is retried after webhook_backoff_s, doubling (at most an hour apart), until
    # webhook_retry_hours after the job ended.
    webhook_timeout_s: float = 10.0
    webhook_backoff_s: float = 10.0
    webhook_retry_hours: float = 24.0
    # User-named URLs (webhook_url, audio_url) may not reach loopback, private, link-local or
    # reserved addresses; these networks (comma-separated CIDRs) are allowed all the same.
    egress_allow_networks: str = ""
    # audio_url: the hosts it may name (comma-separated; `*`: any public host; empty: only the
    # object store, i.e. presigned URLs of MOSS_S3_ENDPOINT), fetched within this many seconds.
    audio_url_hosts: str = ""
    audio_url_timeout_s: float = 60.0
    # Data lifecycle: jobs that ended more than this many days ago lose their audio, features
    # and results (0: kept until DELETE /v1/jobs/{id}?purge=true).
    retention_days: float = 0.0
    # Audio is decoded in a child process (model.audio_sandbox) with these limits.
    decode_memory_mb: int = 2048
    decode_timeout_s: float = 120.0
    default_model: str = "tiny"

    # The CLI: the API it talks to (default http://MOSS_HOST:MOSS_PORT); it sends MOSS_API_KEY.
    url: str | None = None

    # State
    database_url: str | None = None  # default: SQLite under MOSS_HOME
    redis_url: str | None = None  # default for `mossctl up`: an embedded Valkey
    storage: Literal["local", "s3"] = "local"
    storage_dir: Path | None = None  # local backend root; default MOSS_HOME/objects
    s3_endpoint: str | None = None  # host:port or URL of any S3 API
    s3_bucket: str = "moss-audio"
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str | None = None
    s3_secure: bool = True

    # Models: name -> checkpoint directory, as "name=/path,other=/path"; plus a search root.
    models: str = ""
    models_dir: Path | None = None  # default MOSS_HOME/models: each subdirectory is a model

    # Model lifecycle
    mlflow_uri: str | None = None  # the MLflow tracking server (registry) URL
    kfp_host: str | None = None  # a Kubeflow Pipelines endpoint; unset: pipelines run locally
    kfp_poll_s: float = Field(default=5.0, gt=0)  # how often a Kubeflow run's state is read
    # The image pipeline components run in on a cluster (read when a pipeline is compiled).
    pipeline_image: str = "ghcr.io/moss-audio/platform:0.1.0"
    # Kubeflow Trainer: where the distributed pipelines' train step creates its TrainJob (unset:
    # the namespace of the pod the step runs in) and the ClusterTrainingRuntime it names.
    trainer_namespace: str | None = None
    trainer_runtime: str = "torch-distributed"
    # Per alias, the metric limits a version must meet (JSON); unset: the registry's defaults.
    promotion_thresholds: str | None = None
    # Per model name, the manifest key of a reference evaluation set every candidate is scored
    # on besides its own held-out split (JSON {"name": "datasets/.../manifest.jsonl"}); a
    # registered model's tag `eval_set` does the same for a name not listed here.
    eval_sets: str | None = None
    # `mossctl up` with no model trains the tiny variant first: at most this many steps/minutes.
    bootstrap_steps: int = 2000
    bootstrap_minutes: float = 9.9

    # Logs of the gateway and the workers: `text` lines, or `json` (one object per line); both
    # carry the request id and the job id.
    log_format: Literal["text", "json"] = "text"
    # OpenTelemetry traces (gateway -> queue -> worker) to OTEL_EXPORTER_OTLP_ENDPOINT; needs
    # the `otel` extra.
    otel_enabled: bool = False

    # Workers
    # Transcription of longer audio is cut at quiet points into segments of at most this many
    # seconds, run in parallel; caption, ask and chat always see the whole clip.
    max_segment_seconds: float = 120.0
    generator_max_batch: int = 8
    # The engine's KV cache: a budget in MB split into slots of this many tokens (prompt and
    # answer); a request longer than a slot runs alone.
    kv_cache_mb: int = 1024
    engine_slot_tokens: int = 4096
    # Keys/values of audio prefixes kept for further questions about the same audio (0: off).
    prefix_cache_mb: int = 256
    # Share the feature cache and the prompt-prefix cache across tenants: saves the encoder on
    # audio another tenant sent, but tells a tenant (cache_hit, timing) that someone did.
    shared_cache: bool = False
    generator_concurrency: int = 8
    # Jobs one encoder process holds at once (Celery threads); their clips, waiting together, are
    # encoded in one pass of at most this many seconds of audio.
    encoder_concurrency: int = 4
    encoder_batch_seconds: float = 120.0
    # Annotation (docs/annotation.md): jobs one annotate worker runs at once; the annotators of
    # each branch (JSON: built-in names or module:Class; unset: the defaults); the speech model
    # of `moss-transcribe` (unset: MOSS_DEFAULT_MODEL); the longest clip decoded; the items one
    # annotation job may hold.
    annotate_concurrency: int = 1
    annotators: str | None = None
    annotation_model: str | None = None
    annotation_max_seconds: float = 600.0
    annotation_max_items: int = 10_000
    # Intra-op threads of torch in this process (unset: torch's default, every core). Set it to
    # the cores a worker may use; `mossctl up` splits the machine's cores between its workers.
    torch_threads: int | None = None
    task_time_limit_s: int = 1800
    task_max_retries: int = 10  # 1, 2, 4, ... 30 s apart: about 3 minutes in all
    sweep_after_s: int = 120  # a running job whose heartbeat is older than this is re-enqueued
    heartbeat_s: float = 5.0
    # workers: how long a job-store or object-store call keeps retrying while its server is away
    dependency_retry_s: float = 60.0
    # how often the sweeper pings the workers and gives back the stages of those gone
    orphan_check_s: float = 5.0
    # a job waiting this long for a stage whose queue is empty is sent again (its message lost)
    lost_message_after_s: float = 15.0
    device: str = "cpu"
    # The weights' dtype in workers and predictors. auto: bfloat16 on CUDA (as the release
    # runs), float32 elsewhere: a CPU without bf16 units prefills ~4x slower in bfloat16 and
    # float32 matches the reference exactly (docs/benchmarks.md, "Decoder dtype on a CPU").
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_new_tokens: int = 512

    # Inference: in the worker (`local`) or on KServe predictors (`kserve`, Open Inference
    # Protocol via tritonclient). URLs are host:port (or http://host:port) of the predictors.
    inference_backend: Literal["local", "kserve", "openai"] = "local"
    kserve_encoder_url: str | None = None
    kserve_generator_url: str | None = None
    kserve_protocol: Literal["http", "grpc"] = "grpc"  # measured: docs/benchmarks.md
    # `openai`: an OpenAI-compatible MOSS-Audio server (e.g. vLLM's, http://vllm:8000/v1), the
    # model id it serves, and its API key if it wants one.
    openai_base_url: str | None = None
    openai_model: str = "OpenMOSS-Team/MOSS-Audio-8B-Instruct"
    openai_api_key: SecretStr | None = None

    @field_validator("eval_sets")
    @classmethod
    def _eval_sets(cls, value: str | None) -> str | None:
        import json

        if value and not (
            isinstance(parsed := json.loads(value), dict)
            and all(isinstance(v, str) and v for v in parsed.values())
        ):
            raise ValueError('must be a JSON object {"model name": "manifest key"}')
        return value

    @field_validator("max_upload_mb", "max_audio_seconds")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'moss.db').resolve()}"

    @property
    def resolved_storage_dir(self) -> Path:
        return (self.storage_dir or self.home / "objects").resolve()

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.home / "models").resolve()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(memory_mb=self.decode_memory_mb, timeout_s=self.decode_timeout_s)


@functools.cache
def get_settings() -> Settings:
    return Settings()
