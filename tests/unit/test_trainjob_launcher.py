"""The TrainJob launcher against a loopback stand-in of the Kubernetes API (tests/k8s_standin.py):
the real `kubernetes` client creates the job, follows its status and streams its pods' logs.
No cluster run was done; the stand-in answers as the API server and the Trainer controller do."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from kubernetes.client.rest import ApiException

from pipelines import trainer_k8s
from pipelines.trainer_k8s import TrainJobFailed, api_client, run_trainjob, state_of
from pipelines.trainjob import TrainSpec, trainjob
from services.core import progress
from tests.k8s_standin import Script, StandIn, status_for, trainjob_schema

ROOT = Path(__file__).resolve().parents[2]
NS = "audio"
SPEC = TrainSpec(
    manifest="s3://moss-audio/datasets/sft.jsonl",
    output="s3://moss-audio/runs/r1",
    size="8b",
    nodes=2,
    nproc_per_node=8,
    batch_size=16,
)
RESULT = {"world_size": 16, "steps": 2, "losses": [3.5, 3.1], "output": SPEC.output,
          "mlflow_run_id": "0123abcd"}  # fmt: skip
NODE0 = [
    "rank 0 of 16 up",
    'MOSS_PROGRESS {"step": 1, "total_steps": 2, "loss": 3.5}',
    'MOSS_PROGRESS {"step": 2, "total_steps": 2, "loss": 3.1}',
    json.dumps(RESULT),
]
NODE1 = ["rank 8 of 16 up", 'MOSS_PROGRESS {"step": 1, "loss": 9.9}']


def job(name: str) -> dict:
    return trainjob(SPEC, name=name, namespace=NS, image="ghcr.io/moss-audio/platform:0.1.0-cuda")


@pytest.fixture
def standin():
    with StandIn(schema=trainjob_schema()) as server:
        yield server


def test_a_job_that_completes_returns_its_result_and_relays_logs(standin):
    standin.scripts["moss-ok"] = Script(logs={0: NODE0, 1: NODE1})
    out, states = io.StringIO(), []
    result = run_trainjob(
        job("moss-ok"), client=api_client(standin.url), poll_s=0, out=out,
        on_state=lambda state, detail: states.append(state),
    )  # fmt: skip
    assert result == RESULT
    assert states == ["created", "running", "complete"]
    lines = out.getvalue().splitlines()
    # the first node's progress lines are the step's own; another node's are never merged
    steps = [p for p in map(progress.parse, lines) if p and "step" in p]
    assert steps == [
        {"step": 1, "total_steps": 2, "loss": 3.5},
        {"step": 2, "total_steps": 2, "loss": 3.1},
    ]
    assert '[node 1] MOSS_PROGRESS {"step": 1, "loss": 9.9}' in lines
    messages = [p["message"] for p in map(progress.parse, lines) if p and "message" in p]
    assert messages == [
        "TrainJob moss-ok: created",
        "TrainJob moss-ok: running (2 active)",
        "TrainJob moss-ok: complete (JobsCompleted: jobset completed successfully)",
    ]
    assert standin.phase_of(NS, "moss-ok") == "complete" and standin.deleted == []


def test_a_failed_job_fails_the_step_with_its_reason_and_is_kept(standin):
    standin.scripts["moss-bad"] = Script(
        phases=("created", "running", "failed"),
        logs={0: ["Traceback (most recent call last):", "RuntimeError: rank 3: out of memory"]},
        failure="jobset failed: node-0 exited with code 1",
    )
    out = io.StringIO()
    with pytest.raises(
        TrainJobFailed, match="FailedJobs: jobset failed: node-0 exited with code 1"
    ):
        run_trainjob(job("moss-bad"), client=api_client(standin.url), poll_s=0, out=out)
    assert "RuntimeError: rank 3: out of memory" in out.getvalue().splitlines()
    assert standin.deleted == [] and standin.phase_of(NS, "moss-bad") == "failed"


def test_a_crash_of_the_follower_deletes_the_job(standin):
    standin.scripts["moss-crash"] = Script(phases=("created", "running"))

    def crash(state: str, detail: str) -> None:
        if state == "running":
            raise ConnectionError("lost the API")

    with pytest.raises(ConnectionError):
        run_trainjob(job("moss-crash"), client=api_client(standin.url), poll_s=0,
                     out=io.StringIO(), on_state=crash)  # fmt: skip
    assert standin.deleted == [(NS, "moss-crash")]


def test_sigterm_deletes_the_job(standin):
    """A cancelled run's step gets SIGTERM: the job (and its pods) must not keep the GPUs."""
    standin.scripts["moss-cancel"] = Script(phases=("created", "running"), logs={0: ["step 1"]})
    code = (
        "import json, sys\n"
        "from pipelines.trainer_k8s import api_client, run_trainjob\n"
        "run_trainjob(json.loads(sys.argv[2]), client=api_client(sys.argv[1]), poll_s=0.05)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, standin.url, json.dumps(job("moss-cancel"))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while standin.phase_of(NS, "moss-cancel") != "running" and child.poll() is None:
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode != 0, stdout
    assert standin.deleted == [(NS, "moss-cancel")], (stdout, stderr)
    assert "deleted TrainJob audio/moss-cancel (Cancelled)" in stdout
    assert "Cancelled" in stderr


def test_a_job_refused_by_the_schema_is_not_created(standin):
    bad = job("moss-invalid")
    bad["spec"]["trainer"]["envFrom"] = [{"secretRef": {"name": "moss-platform"}}]
    with pytest.raises(ApiException) as caught:
        run_trainjob(bad, client=api_client(standin.url), poll_s=0, out=io.StringIO())
    assert caught.value.status == 422 and "envFrom" in standin.refused[0]
    assert standin.deleted == []


def test_a_name_taken_leaves_the_other_job_alone(standin):
    standin.scripts["moss-taken"] = Script(phases=("running",))
    run_trainjob_job = job("moss-taken")
    standin.create(NS, run_trainjob_job)
    with pytest.raises(ApiException) as caught:
        run_trainjob(job("moss-taken"), client=api_client(standin.url), poll_s=0, out=io.StringIO())
    assert caught.value.status == 409
    assert standin.deleted == [] and standin.phase_of(NS, "moss-taken") == "running"


def test_state_of_reads_conditions_and_child_jobs():
    assert state_of({}) == ("pending", "")
    assert state_of({"status": status_for("created", 2, "")}) == ("created", "")
    assert state_of({"status": status_for("running", 2, "")}) == ("running", "2 active")
    assert state_of({"status": status_for("failed", 2, "boom")}) == ("failed", "FailedJobs: boom")
    suspended = {"conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended"}]}
    assert state_of({"status": suspended}) == ("suspended", "Suspended")
    not_yet = {"conditions": [{"type": "Complete", "status": "False"}]}
    assert state_of({"status": not_yet}) == ("pending", "")


def test_the_namespace_defaults_to_the_pods_own(tmp_path, monkeypatch):
    path = tmp_path / "namespace"
    monkeypatch.setattr(trainer_k8s, "SERVICE_ACCOUNT_NAMESPACE", path)
    assert trainer_k8s.default_namespace() == "default"
    path.write_text("ml-pipelines\n")
    assert trainer_k8s.default_namespace() == "ml-pipelines"


def test_spec_nodes_reach_the_pods(standin):
    """The stand-in lists one pod per node of the job it was given, as JobSet would."""
    standin.scripts["moss-four"] = Script(logs={n: [f"node {n}"] for n in range(4)})
    out = io.StringIO()
    spec = replace(SPEC, nodes=4, nproc_per_node=2)
    four = trainjob(spec, name="moss-four", namespace=NS, image="x:1")
    assert run_trainjob(four, client=api_client(standin.url), poll_s=0, out=out) == {}
    lines = out.getvalue().splitlines()
    assert "node 0" in lines and all(f"[node {n}] node {n}" in lines for n in (1, 2, 3))


@pytest.fixture
def cluster(standin, tmp_path, monkeypatch):
    """The step's own client configuration (a kubeconfig) pointing at the stand-in."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": standin.url}}],
            "users": [{"name": "step", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "standin", "user": "step"}}],
            "current-context": "c",
        })
    )  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("MOSS_STORAGE", "s3")
    monkeypatch.setenv("MOSS_S3_BUCKET", "team-bucket")
    monkeypatch.delenv("MOSS_MLFLOW_URI", raising=False)
    return standin


def test_the_distributed_step_creates_the_job_and_returns_its_mlflow_run(cluster):
    name = trainer_k8s.job_name("8b", "sft", "run42")
    cluster.scripts[name] = Script(logs={0: NODE0})
    run_id = trainer_k8s.distributed_train_step(
        "8b", "instruct", "sft", "datasets/sft/manifest.jsonl", steps=2, batch_size=16,
        nodes=2, gpus_per_node=8, moss_run_id="run42", namespace=NS, image="img:1", poll_s=0,
    )  # fmt: skip
    assert run_id == RESULT["mlflow_run_id"]
    trainer = cluster.jobs[(NS, name)].body["spec"]["trainer"]
    args = trainer["args"]
    assert args[0] == "s3://team-bucket/datasets/sft/manifest.jsonl"
    assert args[args.index("--output") + 1] == f"s3://team-bucket/training/{name}"
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    assert {"name": "MOSS_PIPELINE_RUN_ID", "value": "run42"} in trainer["env"]


def test_the_distributed_step_refuses_a_local_store_and_a_result_without_a_run(
    cluster, monkeypatch
):
    name = trainer_k8s.job_name("tiny", "pretrain", "run43")
    cluster.scripts[name] = Script(logs={0: ['{"world_size": 2}']})
    options = {"moss_run_id": "run43", "namespace": NS, "image": "img:1", "poll_s": 0}
    with pytest.raises(RuntimeError, match=f"TrainJob {name} finished but names no MLflow run"):
        trainer_k8s.distributed_train_step("tiny", "instruct", "pretrain", "datasets/a.jsonl",
                                           batch_size=2, gpus_per_node=2, **options)  # fmt: skip
    monkeypatch.setenv("MOSS_STORAGE", "local")
    with pytest.raises(ValueError, match="a TrainJob needs the object store"):
        trainer_k8s.distributed_train_step("tiny", "instruct", "sft", "datasets/a.jsonl", **options)


def test_job_names_are_dns_labels():
    assert trainer_k8s.job_name("4b", "sft_thinking", "Run_7F3A") == "moss-4b-sft-thinking-run7f3a"
    assert len(trainer_k8s.job_name("8b", "pretrain", "x" * 100)) <= 63
    assert trainer_k8s.job_name("8b", "sft", "") != trainer_k8s.job_name("8b", "sft", "")


def test_the_distributed_step_reads_namespace_runtime_and_image_from_the_settings(
    cluster, monkeypatch
):
    """What the chart's moss-platform Secret sets (MOSS_TRAINER_*, MOSS_PIPELINE_IMAGE) is where
    the job goes and what it names; the pod's own namespace only when none is set."""
    monkeypatch.setenv("MOSS_TRAINER_NAMESPACE", "training")
    monkeypatch.setenv("MOSS_TRAINER_RUNTIME", "torch-distributed-gpu")
    monkeypatch.setenv("MOSS_PIPELINE_IMAGE", "registry.example.com/moss:2-cuda")
    name = trainer_k8s.job_name("4b", "sft", "run44")
    cluster.scripts[name] = Script(logs={0: NODE0})
    trainer_k8s.distributed_train_step("4b", "instruct", "sft", "datasets/a.jsonl", steps=2,
                                       batch_size=8, gpus_per_node=8, moss_run_id="run44",
                                       poll_s=0)  # fmt: skip
    body = cluster.jobs[("training", name)].body
    assert body["spec"]["runtimeRef"]["name"] == "torch-distributed-gpu"
    assert body["spec"]["trainer"]["image"] == "registry.example.com/moss:2-cuda"
    monkeypatch.delenv("MOSS_TRAINER_NAMESPACE")
    monkeypatch.setattr(trainer_k8s, "SERVICE_ACCOUNT_NAMESPACE", Path("/nonexistent/namespace"))
    other = trainer_k8s.job_name("4b", "sft", "run45")
    cluster.scripts[other] = Script(logs={0: NODE0})
    trainer_k8s.distributed_train_step("4b", "instruct", "sft", "datasets/a.jsonl", steps=2,
                                       batch_size=8, gpus_per_node=8, moss_run_id="run45",
                                       poll_s=0)  # fmt: skip
    assert ("default", other) in cluster.jobs
    assert cluster.jobs[("default", other)].body["spec"]["runtimeRef"]["name"] == (
        "torch-distributed-gpu"
    )
