"""Run a TrainJob from a pipeline step: create it, follow it to its end, relay what it says.

The step (a KFP pod, or a kfp.local process) talks to the Kubernetes API with the `kubernetes`
client: `CustomObjectsApi` for `trainjobs.trainer.kubeflow.org/v1alpha1`, `CoreV1Api` for the
job's pods and their logs (what the chart's `trainer.enabled` grants the pipeline runner).

- Status: a TrainJob has the conditions Created, Suspended, Complete and Failed; "running" is
  read from `status.jobsStatus` (a child Job with active pods). Every change is one progress
  line (services/core/progress.py) and a plain log line.
- Logs: one thread per training pod streams its log (`follow`). The first node's lines are
  printed as they are, so its `MOSS_PROGRESS` lines (step, loss) become the step's own; other
  nodes' lines are prefixed `[node N]`, so they are read but never merged as progress twice.
- The result: the last line of the first node that is a JSON object (`mossctl train --json`).
- Failed: TrainJobFailed with the condition's reason and message; the job is kept so its pods
  can be inspected. Cancelled (SIGTERM, what a run's cancel sends the step) or the follower's
  own crash: the job is deleted (with its pods), never left holding GPUs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from services.core import progress
from services.core.settings import Settings

from .trainjob import TrainSpec, trainjob

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
TRAINER_CONTAINER = "node"  # the torch-distributed runtime's trainer container and job
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
NODE_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobFailed(RuntimeError):
    """The TrainJob ended Failed (its reason and message are in the text)."""


class Cancelled(BaseException):
    """The step was told to stop (SIGTERM)."""


def api_client(host: str | None = None) -> Any:
    """A Kubernetes API client: `host` as given (tests), the pod's service account in a
    cluster, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    from kubernetes import client, config

    if host:
        configuration = client.Configuration()
        configuration.host = host
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except config.ConfigException:  # $KUBECONFIG as it is now (the client reads it at import)
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    return client.ApiClient()


def default_namespace() -> str:
    """The namespace of the pod this runs in (its service account says), else `default`."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def state_of(job: dict[str, Any]) -> tuple[str, str]:
    """(state, detail) of a TrainJob: failed, complete, suspended, running, created or pending."""
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}

    def true(kind: str) -> dict[str, Any] | None:
        found = conditions.get(kind)
        return found if found and found.get("status") == "True" else None

    for kind, state in (("Failed", "failed"), ("Complete", "complete"), ("Suspended", "suspended")):
        if found := true(kind):
            detail = ": ".join(x for x in (found.get("reason"), found.get("message")) if x)
            return state, detail
    active = sum(int(j.get("active") or 0) for j in status.get("jobsStatus") or [])
    if active:
        return "running", f"{active} active"
    if true("Created"):
        return "created", ""
    return "pending", ""


@dataclass
class _Relay:
    """Streams the training pods' logs to `out`; keeps the first node's last JSON object."""

    core: Any
    namespace: str
    name: str
    out: TextIO
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: dict[str, threading.Thread] = field(default_factory=dict)
    result: dict[str, Any] | None = None

    def poll(self) -> None:
        """Start a log stream for every training pod that has started and has none yet."""
        selector = f"{JOBSET_LABEL}={self.name},{REPLICATED_JOB_LABEL}={TRAINER_CONTAINER}"
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        for pod in pods.items:
            if pod.metadata.name in self.started:
                continue
            if (pod.status.phase or "Pending") in ("Pending", "Unknown"):
                continue
            node = (pod.metadata.labels or {}).get(NODE_INDEX_LABEL, "0")
            thread = threading.Thread(
                target=self._stream, args=(pod.metadata.name, node), daemon=True
            )
            self.started[pod.metadata.name] = thread
            thread.start()

    def _stream(self, pod: str, node: str) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        try:
            for line in watch.Watch().stream(
                self.core.read_namespaced_pod_log,
                name=pod,
                namespace=self.namespace,
                container=TRAINER_CONTAINER,
            ):
                self._line(line, node)
        except ApiException as exc:
            if exc.status == 400:  # its container is not up yet: the next poll tries again
                with self.lock:
                    self.started.pop(pod, None)
                return
            # the pod went away: what it said so far was relayed
            self._line(f"(log of {pod} ended: {exc.status} {exc.reason})", node)

    def _line(self, line: str, node: str) -> None:
        with self.lock:
            if node == "0":
                print(line, file=self.out, flush=True)
                if line.startswith("{"):
                    try:
                        parsed = json.loads(line)
                    except ValueError:
                        parsed = None
                    if isinstance(parsed, dict):
                        self.result = parsed
            else:
                print(f"[node {node}] {line}", file=self.out, flush=True)

    def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for the streams of finished pods to deliver their last lines."""
        deadline = time.monotonic() + timeout_s
        for thread in list(self.started.values()):
            thread.join(max(0.0, deadline - time.monotonic()))


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Cancelled()


def run_trainjob(
    job: dict[str, Any],
    *,
    client: Any = None,
    poll_s: float = 5.0,
    out: TextIO | None = None,
    on_state: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Create `job`, follow it to Complete and return the first node's result object
    (`mossctl train --json`'s last line; {} if it printed none). Raises TrainJobFailed."""
    from kubernetes import client as k8s

    out = out or sys.stdout
    api = client or api_client()
    custom, core = k8s.CustomObjectsApi(api), k8s.CoreV1Api(api)
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    previous, created = None, False
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
        created = True  # from here on the job is ours to delete (never one that was there)
        print(f"created TrainJob {namespace}/{name}", file=out, flush=True)
        relay = _Relay(core, namespace, name, out)
        state = _follow(custom, relay, namespace, name, poll_s, out, on_state)
    except BaseException as exc:
        if created:
            _delete(custom, namespace, name, out, why=type(exc).__name__)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    relay.drain(timeout_s=30.0)
    if state[0] == "failed":
        raise TrainJobFailed(f"TrainJob {name} failed: {state[1] or 'no reason given'}")
    return relay.result or {}


def _follow(custom, relay: _Relay, namespace: str, name: str, poll_s: float, out: TextIO,
            on_state: Callable[[str, str], None] | None) -> tuple[str, str]:  # fmt: skip
    """Poll the job until it is complete or failed; relay each state change and new pods."""
    last = None
    while True:
        job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        state = state_of(job)
        if state != last:
            last = state
            text = f"TrainJob {name}: {state[0]}" + (f" ({state[1]})" if state[1] else "")
            with relay.lock:
                print(text, file=out, flush=True)
                progress.emit(out, pipeline_step="train", message=text)
            if on_state is not None:
                on_state(*state)
        if state[0] in ("running", "complete", "failed"):
            relay.poll()
        if state[0] in ("complete", "failed"):
            return state
        time.sleep(poll_s)


def _delete(custom, namespace: str, name: str, out: TextIO, why: str) -> None:
    """Delete the TrainJob and, through the owner references, its JobSet and pods."""
    from kubernetes.client.rest import ApiException

    try:
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground"
        )
        print(f"deleted TrainJob {namespace}/{name} ({why})", file=out, flush=True)
    except ApiException as exc:
        if exc.status != 404:
            print(f"could not delete TrainJob {name}: {exc.status} {exc.reason}", file=out)


# --- the distributed training step ------------------------------------------------------------


def object_url(key: str, bucket: str) -> str:
    """A pipeline's object-store key (`datasets/x.jsonl`) as the URL the pods read."""
    return key if key.startswith("s3://") else f"s3://{bucket}/{key.lstrip('/')}"


def job_name(size: str, stage: str, run: str) -> str:
    """`moss-<size>-<stage>-<run>`, a DNS label of 63 characters at most."""
    suffix = "".join(c for c in run.lower() if c.isalnum())[:12] or secrets.token_hex(6)
    return f"moss-{size}-{stage.replace('_', '-')}-{suffix}"[:63].rstrip("-")


def distributed_train_step(
    size: str,
    flavor: str,
    stage: str,
    manifest: str,
    base_model: str = "",
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 3e-3,
    nodes: int = 1,
    gpus_per_node: int = 1,
    decoder: str = "full",
    seed: int = 0,
    moss_run_id: str = "",
    namespace: str = "",
    runtime: str = "",
    image: str = "",
    poll_s: float = 10.0,
) -> str:
    """The training step of the distributed pipelines: one TrainJob of `nodes` x `gpus_per_node`
    processes running `mossctl train`, followed to its end. Returns the MLflow run id rank 0
    logged (from its result line, else the run tagged with `moss_run_id`), as train_step does,
    so evaluation, registration and the gate run unchanged on the exported checkpoint.

    `namespace`, `runtime` and `image` default to MOSS_TRAINER_NAMESPACE (else the step's own
    pod's namespace), MOSS_TRAINER_RUNTIME and MOSS_PIPELINE_IMAGE: on a cluster the chart's
    `moss-platform` Secret sets them."""
    settings = Settings()
    if settings.storage != "s3":
        raise ValueError("a TrainJob needs the object store (MOSS_STORAGE=s3): pods share no disk")
    run = moss_run_id or os.environ.get("MOSS_PIPELINE_RUN_ID", "")
    name = job_name(size, stage, run)
    spec = TrainSpec(
        manifest=object_url(manifest, settings.s3_bucket),
        output=object_url(f"training/{name}", settings.s3_bucket),
        size=size,
        flavor=flavor,
        base=base_model,
        stage="sft_thinking" if flavor == "thinking" and stage.startswith("sft") else stage,
        decoder=decoder or "full",
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        nodes=nodes,
        nproc_per_node=max(1, gpus_per_node),
    )
    job = trainjob(
        spec,
        name=name,
        namespace=namespace or settings.trainer_namespace or default_namespace(),
        image=image or settings.pipeline_image,
        runtime=runtime or settings.trainer_runtime,
        gpus_per_node=gpus_per_node,
        env={"MOSS_PIPELINE_RUN_ID": run} if run else None,
    )
    progress.emit(pipeline_step="train", total_steps=steps,
                  message=f"TrainJob {name}: {nodes} x {gpus_per_node} GPUs")  # fmt: skip
    result = run_trainjob(job, poll_s=poll_s)
    run_id = result.get("mlflow_run_id") or _tagged_run(run)
    if not run_id:
        raise RuntimeError(f"TrainJob {name} finished but names no MLflow run (no mlflow_run_id)")
    progress.emit(pipeline_step="train", mlflow_run_id=run_id, message=f"TrainJob {name} done")
    return str(run_id)


def _tagged_run(run: str) -> str:
    """The MLflow run rank 0 tagged with the pipeline run id, or ""."""
    if not run or not Settings().mlflow_uri:
        return ""
    from mlflow.tracking import MlflowClient

    from .tracking import _trained_run

    found = _trained_run(MlflowClient(Settings().mlflow_uri), run)
    return found.info.run_id if found else ""
