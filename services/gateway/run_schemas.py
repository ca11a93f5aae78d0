"""The pipeline-run resource as the API shows it (`GET /v1/pipelines/runs/{id}` and the list).

A run's progress comes from its steps' output (core.progress): the record is shown as the
worker merged it, but a value of the wrong type for a documented key is left out here rather
than failing the answer (a step's output is not ours to trust).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..core.jobstate import Status
from ..core.jobstore import PipelineRun
from .schemas import ErrorDetail, _utc

NUMBERS = {"step": int, "total_steps": int, "loss": float, "lr": float, "eta_s": float}
TEXTS = ("pipeline_step", "message")


class RunProgress(BaseModel):
    """Where the run stands, as its steps last said (each key optional; other keys a step
    prints are kept as they are)."""

    model_config = ConfigDict(extra="allow")
    pipeline_step: str | None = Field(
        None, description="The pipeline step now running: prepare-data, train, evaluate, ..."
    )
    step: int | None = Field(None, description="Training step done (or any counted work).")
    total_steps: int | None = None
    loss: float | None = Field(None, description="Training loss at `step`.")
    lr: float | None = Field(None, description="Learning rate at `step`.")
    eta_s: float | None = Field(None, description="Seconds the step expects to take still.")
    message: str | None = Field(None, description="What the step is doing, for people.")

    @classmethod
    def of(cls, progress: dict[str, Any] | None) -> RunProgress:
        clean: dict[str, Any] = {}
        for key, value in (progress or {}).items():
            if key in NUMBERS:
                if isinstance(value, int | float) and not isinstance(value, bool):
                    clean[key] = NUMBERS[key](value)
            elif key in TEXTS:
                if isinstance(value, str):
                    clean[key] = value
            elif key not in ("mlflow_run_id", "model", "version", "decision"):
                clean[key] = value  # the results have fields of their own
        return cls(**clean)


class PipelineRunDetail(BaseModel):
    id: str
    tenant: str
    name: str = Field(description="The pipeline: pretrain, sft, evaluate, annotate, ...")
    mode: Literal["local", "kubeflow"]
    status: Status = Field(description="queued, running, succeeded, failed or cancelled.")
    params: dict[str, Any]
    progress: RunProgress
    mlflow_run_id: str | None = Field(description="The training run in MLflow, once known.")
    model: str | None = Field(description="The registered model the run made a version of.")
    version: str | None = Field(description="That version.")
    decision: dict[str, Any] | None = Field(description="The promotion gate's decision, if any.")
    error: ErrorDetail | None = Field(description="Why the run failed (or was cancelled).")
    kubeflow_run_id: str | None = Field(description="The run on Kubeflow (mode kubeflow).")
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    url: str = Field(description="This resource.")
    log: str = Field(description="The run's log route (`?follow=true` until the run ends).")

    @classmethod
    def of(cls, run: PipelineRun) -> PipelineRunDetail:
        url = f"/v1/pipelines/runs/{run.id}"
        return cls(
            id=run.id, tenant=run.tenant, name=run.name, mode=run.mode, status=run.status,
            params=run.params or {}, progress=RunProgress.of(run.progress),
            mlflow_run_id=run.mlflow_run_id, model=run.model, version=run.version,
            decision=run.decision if isinstance(run.decision, dict) else None,
            error=run.error, kubeflow_run_id=run.kubeflow_run_id,
            cancel_requested=bool(run.cancel_requested), created_at=_utc(run.created_at),
            started_at=_utc(run.started_at), finished_at=_utc(run.finished_at), url=url,
            log=f"{url}/log",
        )  # fmt: skip


class PipelineRunList(BaseModel):
    runs: list[PipelineRunDetail]
    total: int
    limit: int
    offset: int
