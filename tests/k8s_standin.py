"""A loopback stand-in for the slice of the Kubernetes API a TrainJob launcher uses.

It serves `trainjobs.trainer.kubeflow.org/v1alpha1` (create, get, delete), the job's pods
(list by label selector) and their logs (`follow`), the way the API server and Kubeflow
Trainer's controller answer them: a created TrainJob is validated against the real CRD schema
(../shared/schemas/kubeflow-trainer/, closed so that a misplaced field is refused like the
server's pruning would lose it), then its status moves one phase per read of the job along a
script, `created -> running -> complete` by default (or `... -> failed`, or `running` for ever),
with `numNodes` pods labelled as JobSet labels them. Nothing is timed: the phases advance on
reads, so a test decides how far a job gets by what its script says.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema

JOBS = re.compile(
    r"/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?"
)
PODS = re.compile(r"/api/v1/namespaces/([^/]+)/pods")
LOG = re.compile(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log")
NOW = "2026-08-20T10:00:00Z"


@dataclass
class Script:
    """What one TrainJob does: its phases, and each node's log lines."""

    phases: tuple[str, ...] = ("created", "running", "complete")
    logs: dict[int, list[str]] = field(default_factory=dict)
    failure: str = "jobset failed: node-0 exited with code 1"


@dataclass
class Job:
    body: dict[str, Any]
    script: Script
    phase: int = 0
    reads: int = 0


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": NOW,
    }


def status_for(phase: str, nodes: int, failure: str) -> dict[str, Any]:
    """The status Kubeflow Trainer writes in each phase (conditions and jobsStatus)."""
    created = _condition("Created", "JobsCreationSucceeded", "Succeeded to create Jobs")
    child = {"name": "node", "ready": 0, "succeeded": 0, "failed": 0, "active": 0, "suspended": 0}
    if phase == "running":
        child.update(active=nodes, ready=nodes)
    elif phase == "complete":
        child.update(succeeded=nodes)
    elif phase == "failed":
        child.update(failed=1)
    conditions = [created]
    if phase == "complete":
        conditions.append(_condition("Complete", "JobsCompleted", "jobset completed successfully"))
    if phase == "failed":
        conditions.append(_condition("Failed", "FailedJobs", failure))
    return {"conditions": conditions, "jobsStatus": [child]}


class StandIn:
    """The server and its state; `url` for the client, `scripts[name]` set before a create."""

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self.validator = jsonschema.Draft7Validator(schema) if schema else None
        self.scripts: dict[str, Script] = {}
        self.jobs: dict[tuple[str, str], Job] = {}
        self.deleted: list[tuple[str, str]] = []
        self.refused: list[str] = []
        # (method, path, query) of every request, in order: what the client asked the API for
        # (the chart's RBAC test checks each against the Role it renders).
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def phase_of(self, namespace: str, name: str) -> str | None:
        with self.lock:
            job = self.jobs.get((namespace, name))
            return job.script.phases[job.phase] if job else None

    # --- the resources -----------------------------------------------------------------------

    def create(self, namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        errors = [
            f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in (self.validator.iter_errors(body) if self.validator else [])
        ]
        if errors:
            self.refused.extend(errors)
            return 422, _status(422, "Invalid", "; ".join(errors))
        name = body["metadata"]["name"]
        with self.lock:
            if (namespace, name) in self.jobs:
                return 409, _status(409, "AlreadyExists", f'trainjobs "{name}" already exists')
            body = {**body, "metadata": {**body["metadata"], "uid": f"uid-{name}"}}
            self.jobs[(namespace, name)] = Job(body, self.scripts.get(name, Script()))
        return 201, body

    def read(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            job = self.jobs.get((namespace, name))
            if job is None:
                return 404, _status(404, "NotFound", f'trainjobs "{name}" not found')
            job.phase = min(job.reads, len(job.script.phases) - 1)
            job.reads += 1
            nodes = job.body["spec"]["trainer"].get("numNodes", 1)
            phase = job.script.phases[job.phase]
            status = status_for(phase, nodes, job.script.failure) if phase != "pending" else {}
            return 200, {**job.body, "status": status}

    def delete(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if self.jobs.pop((namespace, name), None) is None:
                return 404, _status(404, "NotFound", f'trainjobs "{name}" not found')
            self.deleted.append((namespace, name))
        return 200, _status(200, "Success", "deleted")

    def pods(self, namespace: str, selector: str) -> dict[str, Any]:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
        items = []
        with self.lock:
            for (ns, name), job in self.jobs.items():
                phase = job.script.phases[job.phase]
                if ns != namespace or phase not in ("running", "complete", "failed"):
                    continue
                pod_phase = {"running": "Running", "complete": "Succeeded"}.get(phase, "Failed")
                for node in range(job.body["spec"]["trainer"].get("numNodes", 1)):
                    labels = pod_labels(name, node)
                    if all(labels.get(k) == v for k, v in wanted.items()):
                        items.append(_pod(ns, name, node, labels, pod_phase))
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def log(self, namespace: str, pod: str) -> list[str] | None:
        with self.lock:
            for (ns, name), job in self.jobs.items():
                nodes = job.body["spec"]["trainer"].get("numNodes", 1)
                for node in range(nodes):
                    if ns == namespace and pod == pod_name(name, node):
                        return list(job.script.logs.get(node, []))
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)


def pod_name(job: str, node: int) -> str:
    return f"{job}-node-0-{node}-abcde"


def pod_labels(job: str, node: int) -> dict[str, str]:
    return {
        "jobset.sigs.k8s.io/jobset-name": job,
        "jobset.sigs.k8s.io/replicatedjob-name": "node",
        "jobset.sigs.k8s.io/job-index": "0",
        "batch.kubernetes.io/job-completion-index": str(node),
    }


def _pod(namespace: str, job: str, node: int, labels: dict[str, str], phase: str) -> dict:
    return {
        "metadata": {"name": pod_name(job, node), "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "node", "image": "x"}]},
        "status": {"phase": phase},
    }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure" if code >= 400 else
            "Success", "code": code, "reason": reason, "message": message}  # fmt: skip


def _make_handler(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # bodies end with the connection: a log streams

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def parse_request(self) -> bool:
            parsed = super().parse_request()
            if parsed:
                url = urllib.parse.urlsplit(self.path)
                with standin.lock:
                    standin.requests.append(
                        (self.command, url.path, dict(urllib.parse.parse_qsl(url.query)))
                    )
            return parsed

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def do_POST(self) -> None:
            found = JOBS.fullmatch(urllib.parse.urlsplit(self.path).path)
            if not found or found.group(2):
                return self._send(404, _status(404, "NotFound", self.path))
            self._send(*standin.create(found.group(1), self._body()))

        def do_DELETE(self) -> None:
            found = JOBS.fullmatch(urllib.parse.urlsplit(self.path).path)
            if not found or not found.group(2):
                return self._send(404, _status(404, "NotFound", self.path))
            self._body()
            self._send(*standin.delete(found.group(1), found.group(2)))

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if found := JOBS.fullmatch(url.path):
                if not found.group(2):
                    return self._send(405, _status(405, "MethodNotAllowed", "list"))
                return self._send(*standin.read(found.group(1), found.group(2)))
            if found := LOG.fullmatch(url.path):
                lines = standin.log(found.group(1), found.group(2))
                if lines is None:
                    return self._send(404, _status(404, "NotFound", found.group(2)))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                for line in lines:
                    self.wfile.write(line.encode() + b"\n")
                    self.wfile.flush()
                return None
            if found := PODS.fullmatch(url.path):
                return self._send(200, standin.pods(found.group(1), query.get("labelSelector", "")))
            return self._send(404, _status(404, "NotFound", self.path))

    return Handler


# --- the CRD -----------------------------------------------------------------------------------

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas"
TRAINER_SCHEMAS = SCHEMAS / "kubeflow-trainer"
TRAINJOB_CRD = TRAINER_SCHEMAS / "trainer.kubeflow.org_trainjobs.yaml"
RUNTIME = TRAINER_SCHEMAS / "torch_distributed.yaml"


def closed(schema: Any) -> Any:
    """The API server prunes fields a structural schema does not declare, silently: make every
    object with declared properties reject unknown ones, so a misplaced field fails a test."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        key: {name: closed(sub) for name, sub in value.items()}
        if key == "properties"
        else closed(value)
        for key, value in schema.items()
    }
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def trainjob_schema() -> dict[str, Any]:
    """The v1alpha1 TrainJob openAPIV3Schema of the real CRD, closed."""
    import yaml

    crd = yaml.safe_load(TRAINJOB_CRD.read_text())
    assert (
        crd["spec"]["group"] == "trainer.kubeflow.org"
        and crd["spec"]["names"]["kind"] == "TrainJob"
    )
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return closed(version["schema"]["openAPIV3Schema"])


def cel_rules(schema: dict[str, Any], obj: Any, path: str = "") -> list[tuple[str, str, Any]]:
    """(path, rule, value) for every x-kubernetes-validations rule on a field `obj` sets.
    jsonschema does not run CEL; the tests evaluate the rules they know and fail on others."""
    found = [(path, v["rule"], obj) for v in schema.get("x-kubernetes-validations", [])]
    if isinstance(obj, dict):
        for key, value in obj.items():
            sub = schema.get("properties", {}).get(key)
            if sub is not None:
                found += cel_rules(sub, value, f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for index, value in enumerate(obj):
            found += cel_rules(schema["items"], value, f"{path}[{index}]")
    return found
