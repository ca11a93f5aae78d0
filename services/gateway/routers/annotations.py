"""Annotation jobs (`datasets` scope): the annotation engine over a tenant's uploaded audio
(docs/annotation.md). A job like any other: read it at /v1/jobs/{id} (progress, result),
follow /v1/jobs/{id}/events, cancel it with DELETE /v1/jobs/{id}; its outputs are datasets."""

from __future__ import annotations

from fastapi import APIRouter

from ...jobs.annotations import submit_annotation
from ..bodies import StrictRoute
from ..deps import Ctx, Datasets
from ..errors import AUTHENTICATED, BODY, responses
from ..schemas import AnnotationCreate, JobOut

router = APIRouter(
    prefix="/v1/annotations",
    tags=["annotations"],
    route_class=StrictRoute,
    responses=AUTHENTICATED,
)


@router.post("", status_code=202, response_model=JobOut, responses={**BODY, **responses(404)})
def create_annotation(ctx: Ctx, body: AnnotationCreate, who: Datasets) -> JobOut:
    """Annotate the dataset's clips (or `items`, audio uploaded to it): a job whose result names
    two new datasets, `NAME-captions` (one unified caption per clip) and `NAME-sft` (instruction
    pairs for every task), with the items that failed and why. Labels the items already have
    are kept; the engine adds only the missing ones."""
    items = None if body.items is None else [i.model_dump(exclude_none=True) for i in body.items]
    job = submit_annotation(ctx, who, body.dataset, items, body.webhook_url, body.label_map)
    return JobOut.of(job)
