"""Pipelines (admin): queue a run of `pretrain`, `sft` or `evaluate` for the pipeline worker."""

from __future__ import annotations

from fastapi import APIRouter

from ...core import lifecycle
from ..deps import Admin, App
from ..errors import ERRORS
from ..schemas import ErrorBody, PipelineRun, PipelineRunOut

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])


@router.post(
    "/{name}/runs",
    status_code=202,
    response_model=PipelineRunOut,
    responses={**ERRORS, 503: {"model": ErrorBody}},
)
def run_pipeline(app: App, name: str, body: PipelineRun, _: Admin) -> dict:
    """Queue a run; the pipeline worker submits it to Kubeflow when configured, else runs it
    with kfp.local."""
    return lifecycle.start_pipeline(app.settings, app.enqueue_pipeline, name, body.params)
