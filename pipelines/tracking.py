"""What MLflow knows of a pipeline run: the record fields a Kubeflow run cannot get from KFP.

A local run's steps report their progress as lines the pipeline worker reads (core.progress).
On Kubeflow those lines stay in the pods' logs, which the KFP v2beta1 API does not serve. The
train step tags its MLflow run with our run id (`moss_run_id`), so the worker finds that run in
MLflow and reads the same facts where the steps put them: the training loss and its step
(`train/loss`), the planned steps (the run's `steps` param), the version registered from the run,
and the promotion decision the pipeline's promote step recorded on that version.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

RUN_TAG = "moss_run_id"  # the MLflow run tag naming the pipeline run that trained it
EXPERIMENTS = "name LIKE 'moss-audio-%'"  # train_step's experiments: moss-audio-{size}-{flavor}
PIPELINE_ACTOR = "pipeline"  # promote_step's actor: its decision, not a later manual one
FINAL_WAIT_S = 30.0  # how long an ended run's last MLflow read may take before it is recorded


def tracked_fields(client: Any, run_id: str, promote_to: str = "") -> dict[str, Any]:
    """The record fields of pipeline run `run_id` that MLflow holds, with the names a local
    run's progress lines use: `mlflow_run_id`, `step`, `loss`, `total_steps`, `model`,
    `version`, `decision`. Empty until the train step has started its MLflow run.

    `client` is an `mlflow.MlflowClient`; its errors propagate (the caller keeps what it had)."""
    found = _trained_run(client, run_id)
    if found is None:
        return {}
    fields: dict[str, Any] = {"mlflow_run_id": found.info.run_id}
    history = client.get_metric_history(found.info.run_id, "train/loss")
    if history:
        last = max(history, key=lambda metric: metric.step)
        fields.update(step=last.step, loss=round(last.value, 5))
    steps = found.data.params.get("steps")
    if steps and steps.isdigit():
        fields["total_steps"] = int(steps)
    versions = client.search_model_versions(f"run_id = '{found.info.run_id}'")
    if versions:
        version = max(versions, key=lambda v: int(v.version))
        fields.update(model=version.name, version=str(version.version))
        decision = pipeline_decision(version.tags or {}, promote_to)
        if decision is not None:
            fields["decision"] = decision
    return fields


def _trained_run(client: Any, run_id: str) -> Any | None:
    """The MLflow run tagged with `run_id`, the newest if a retried task started two."""
    experiments = [e.experiment_id for e in client.search_experiments(filter_string=EXPERIMENTS)]
    if not experiments:
        return None
    safe = run_id.replace("'", "")  # our run ids are hex; never let one break the filter
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.{RUN_TAG} = '{safe}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def pipeline_decision(tags: dict[str, str], alias: str) -> dict[str, Any] | None:
    """The promote step's decision on a version for `alias` (`decision.{alias}.{stamp}` tags,
    services.core.registry): the earliest made by the pipeline, so that a person's later
    promotion of the same version is not shown as this run's."""
    if not alias:
        return None
    prefix = f"decision.{alias}."
    for key in sorted(key for key in tags if key.startswith(prefix)):
        try:
            decision = json.loads(tags[key])
        except ValueError:
            continue
        if isinstance(decision, dict) and decision.get("actor") == PIPELINE_ACTOR:
            return decision
    return None


class Tracked:
    """MLflow read beside the follow loop, in a thread of its own: an MLflow server that is slow
    or away (its client retries for a minute) never holds the loop, which must keep answering
    cancels. The last fields read are kept; a failed read keeps them."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read
        self.fields: dict[str, Any] = {}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moss-tracked")
        self.pending: Future | None = None

    def poll(self, wait_s: float = 0.0) -> dict[str, Any]:
        """Start a read if none runs; take its result if it is there within `wait_s`."""
        if self.pending is None:
            self.pending = self.pool.submit(self.read)
        try:
            result = self.pending.result(timeout=wait_s)
        except FutureTimeout:
            return self.fields
        except Exception:  # MLflow away, or the run not there yet: keep what we had
            result = None
        self.pending = None
        if result:
            self.fields = {**self.fields, **result}
        return self.fields

    def final(self, wait_s: float = FINAL_WAIT_S) -> dict[str, Any]:
        """A read started after the run ended (the last step's version and decision are in
        it), waited for a while."""
        if self.pending is not None:
            self.poll(wait_s)  # a read started before the end: stale, but let it land
        return self.poll(wait_s)

    def close(self) -> None:
        """Let the reading thread go (a read in flight ends on its own)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
