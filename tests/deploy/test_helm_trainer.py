"""The chart's Kubeflow Trainer part (`trainer.enabled`), rendered with Helm's own library.

What it must give the distributed pipelines: the pipeline runner's ServiceAccount may create,
follow and delete TrainJobs and read their pods and logs (and nothing more), and the
`moss-platform` Secret holds every setting the steps and the training pods read, with the same
S3 keys the object store starts with and endpoints that resolve from another namespace.

The Role is checked against the requests the real launcher (pipelines/trainer_k8s.py, the
`kubernetes` client) sends to the loopback stand-in of the API server, so a call added to the
launcher without its permission fails here. The resource names come from the real CRD in
../shared/schemas/kubeflow-trainer/. No cluster was used. The generic checks of
tests/deploy/test_helm.py (lint, Kubernetes schemas, labels, references) run over the
`trainer-*` combinations there too.
"""

from __future__ import annotations

import copy
import io
import os
import re
from typing import Any

import helm_python
import pytest
import yaml

from pipelines import kfp_pipelines, trainer_k8s
from pipelines.trainjob import PLATFORM_SETTINGS, TrainSpec, trainjob
from services.core.settings import Settings
from tests.deploy.test_helm import (
    CHART,
    EXTERNAL_EXISTING_SECRETS,
    NAMESPACE,
    RELEASE,
    TRAINER_KUBEFLOW,
    TRAINER_TWO_NAMESPACES,
    of_kind,
    render_docs,
    render_values,
    secrets_by_name,
)
from tests.k8s_standin import TRAINJOB_CRD, Script, StandIn, trainjob_schema

PLATFORM = "moss-platform"
CREDENTIALS = f"{RELEASE}-moss-audio-credentials"
STEP_VERBS = {"create", "get", "list", "watch", "delete"}
POD_VERBS = {"get", "list", "watch"}


def _crd_names() -> tuple[str, str]:
    crd = yaml.safe_load(TRAINJOB_CRD.read_text())
    return crd["spec"]["group"], crd["spec"]["names"]["plural"]


def _platform_secrets(docs: list[dict]) -> dict[str, dict[str, str]]:
    """namespace -> decoded data of each rendered moss-platform Secret."""
    found = {}
    for secret in of_kind(docs, "Secret"):
        if secret["metadata"]["name"] == PLATFORM:
            name = {"metadata": {"name": PLATFORM}, "kind": "Secret"}
            found[secret["metadata"]["namespace"]] = secrets_by_name([{**secret, **name}])[PLATFORM]
    return found


def _rules(docs: list[dict]) -> tuple[str, list[dict]]:
    (role,) = of_kind(docs, "Role")
    return role["metadata"]["namespace"], role["rules"]


def allowed(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


def test_off_by_default_nothing_is_granted_or_rendered():
    docs = render_docs("defaults")
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    assert not _platform_secrets(docs)
    for backend in ("minio", "mlflow"):  # only the release's own pods reach them
        (policy,) = [p for p in of_kind(docs, "NetworkPolicy")
                     if p["metadata"]["name"] == f"{RELEASE}-moss-audio-{backend}"]  # fmt: skip
        assert "namespaceSelector" not in yaml.safe_dump(policy["spec"]), backend


@pytest.mark.parametrize("combo", ["trainer-kubeflow", "trainer-two-namespaces"])
def test_the_role_grants_trainjobs_and_pod_logs_to_the_pipeline_runner_only(combo):
    docs = render_docs(combo)
    values = TRAINER_KUBEFLOW if combo == "trainer-kubeflow" else TRAINER_TWO_NAMESPACES
    runner = {"serviceAccount": "pipeline-runner", "namespace": "kubeflow"}
    runner.update(values["trainer"].get("pipelineRunner", {}))
    jobs_namespace = values["trainer"].get("namespace") or runner["namespace"]
    group, plural = _crd_names()
    assert (group, plural) == (trainer_k8s.GROUP, trainer_k8s.PLURAL)
    namespace, rules = _rules(docs)
    assert namespace == jobs_namespace
    granted = {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"]
               for v in r["verbs"]}  # fmt: skip
    expected = {(group, plural, v) for v in STEP_VERBS}
    expected |= {("", res, v) for res in ("pods", "pods/log") for v in POD_VERBS}
    assert granted == expected  # no update/patch, no secrets, no other namespace
    (binding,) = of_kind(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == jobs_namespace
    (role,) = of_kind(docs, "Role")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": runner["serviceAccount"],
            "namespace": runner["namespace"],
        }
    ]
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")


def _to_rbac(method: str, path: str, query: dict[str, str]) -> tuple[str, str, str, str]:
    """(namespace, apiGroup, resource, verb) the API server's authorizer checks a request as."""
    found = re.fullmatch(r"/apis/([^/]+)/[^/]+/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?", path)
    if found:
        group, namespace, resource, name = found.groups()
        sub = None
    else:
        found = re.fullmatch(r"/api/v1/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?(?:/([^/]+))?", path)
        assert found, path
        group, (namespace, resource, name, sub) = "", found.groups()
    if sub:
        resource = f"{resource}/{sub}"
    verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}.get(method)
    if verb is None:
        verb = "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list")
    return namespace, group, resource, verb


def _launcher_requests(namespace: str) -> list[tuple[str, str, dict[str, str]]]:
    """Every request the launcher sends: one job followed to its end (pods listed, logs
    streamed), one whose follower crashes while it runs (the job deleted)."""
    spec = TrainSpec(manifest="s3://moss-audio/d/m.jsonl", output="s3://moss-audio/o", size="8b",
                     nodes=2, nproc_per_node=8, batch_size=16)  # fmt: skip
    with StandIn(schema=trainjob_schema()) as standin:
        client = trainer_k8s.api_client(standin.url)
        standin.scripts["moss-done"] = Script(logs={0: ['{"world_size": 16}'], 1: ["up"]})
        done = trainjob(spec, name="moss-done", namespace=namespace, image="img:1")
        trainer_k8s.run_trainjob(done, client=client, poll_s=0, out=io.StringIO())

        def crash(state: str, detail: str) -> None:
            if state == "running":
                raise RuntimeError("the follower crashed")

        standin.scripts["moss-crash"] = Script(phases=("created", "running"))
        crashed = trainjob(spec, name="moss-crash", namespace=namespace, image="img:1")
        with pytest.raises(RuntimeError, match="crashed"):
            trainer_k8s.run_trainjob(crashed, client=client, poll_s=0, out=io.StringIO(),
                                     on_state=crash)  # fmt: skip
        assert standin.deleted == [(namespace, "moss-crash")]
        return list(standin.requests)


@pytest.mark.parametrize("combo", ["trainer-kubeflow", "trainer-two-namespaces"])
def test_every_request_the_launcher_sends_is_granted(combo):
    namespace, rules = _rules(render_docs(combo))
    requests = [_to_rbac(*r) for r in _launcher_requests(namespace)]
    verbs = {(res, verb) for _, _, res, verb in requests}
    # the launcher's whole repertoire was exercised: create, follow, pods, logs, delete
    assert {("trainjobs", "create"), ("trainjobs", "get"), ("trainjobs", "delete"),
            ("pods", "list"), ("pods/log", "get")} <= verbs  # fmt: skip
    for ns, group, resource, verb in requests:
        assert ns == namespace
        assert allowed(rules, group, resource, verb), f"the Role does not grant {verb} {resource}"


def _settings_from(data: dict[str, str], monkeypatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("MOSS_")]:
        monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_the_platform_secret_holds_the_in_cluster_settings(monkeypatch):
    docs = render_docs("trainer-kubeflow")
    secrets = _platform_secrets(docs)
    assert list(secrets) == ["kubeflow"]  # runner and jobs share the namespace: one copy
    data = secrets["kubeflow"]
    fields = {f"MOSS_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields, set(data) - fields  # every key is a setting
    assert set(kfp_pipelines.SECRET_ENV) <= set(data)  # what each pipeline step requires
    assert {k for k in PLATFORM_SETTINGS if k != "MOSS_S3_REGION"} <= set(data)  # the pods'
    settings = _settings_from(data, monkeypatch)
    assert settings.storage == "s3" and settings.s3_secure is False
    assert settings.s3_endpoint == f"{RELEASE}-moss-audio-minio.{NAMESPACE}.svc.cluster.local:9000"
    assert (
        settings.mlflow_uri
        == f"http://{RELEASE}-moss-audio-mlflow.{NAMESPACE}.svc.cluster.local:5000"
    )
    assert (settings.trainer_namespace, settings.trainer_runtime) == (
        "kubeflow",
        "torch-distributed",
    )
    assert settings.s3_region is None  # none set: the key is left out, not empty
    # the keys MinIO starts with (generated once, in the same render)
    credentials = secrets_by_name(docs)[CREDENTIALS]
    assert data["MOSS_S3_ACCESS_KEY"] == credentials["s3-access-key"]
    assert data["MOSS_S3_SECRET_KEY"] == credentials["s3-secret-key"]


def test_the_platform_secret_in_both_namespaces_with_an_external_store(monkeypatch):
    docs = render_docs("trainer-two-namespaces")
    secrets = _platform_secrets(docs)
    assert sorted(secrets) == ["team-audio", "training"]  # the steps' and the pods' namespace
    assert secrets["team-audio"] == secrets["training"]
    settings = _settings_from(secrets["training"], monkeypatch)
    s3 = TRAINER_TWO_NAMESPACES["s3"]
    assert settings.s3_endpoint == s3["external"]["endpoint"] and settings.s3_secure is False
    assert settings.s3_access_key.get_secret_value() == s3["external"]["accessKey"]
    assert settings.s3_secret_key.get_secret_value() == s3["external"]["secretKey"]
    assert settings.s3_region == "eu-west-1" and settings.s3_bucket == "audio-prod"
    assert settings.trainer_namespace == "training"
    assert settings.pipeline_image == TRAINER_TWO_NAMESPACES["pipelineWorker"]["pipelineImage"]
    mlflow = {"enabled": False, "externalUri": "https://mlflow.example.com"}
    external = {**TRAINER_KUBEFLOW, "mlflow": mlflow}
    (data,) = _platform_secrets(render_values(external)).values()
    assert data["MOSS_MLFLOW_URI"] == "https://mlflow.example.com"


def test_minio_and_mlflow_admit_the_runner_and_trainer_namespaces():
    docs = render_docs("trainer-two-namespaces")
    values = TRAINER_TWO_NAMESPACES
    # external S3 here: only MLflow runs in the cluster
    assert not [
        p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-minio")
    ]
    for kubeflow in (False, True):
        docs = render_docs("trainer-kubeflow") if kubeflow else docs
        wanted = (
            ["kubeflow"]
            if kubeflow
            else sorted(
                {values["trainer"]["namespace"], values["trainer"]["pipelineRunner"]["namespace"]}
            )
        )
        backends = ("minio", "mlflow") if kubeflow else ("mlflow",)
        for backend in backends:
            (policy,) = [p for p in of_kind(docs, "NetworkPolicy")
                         if p["metadata"]["name"] == f"{RELEASE}-moss-audio-{backend}"]  # fmt: skip
            peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
            selected = [
                sorted(expr["values"])
                for peer in peers
                for expr in peer.get("namespaceSelector", {}).get("matchExpressions", [])
                if expr["key"] == "kubernetes.io/metadata.name" and "podSelector" not in peer
            ]
            assert selected == [wanted], (backend, selected)
    for name in ("redis", "postgresql"):  # the training pods need neither
        for policy in of_kind(render_docs("trainer-kubeflow"), "NetworkPolicy"):
            if policy["metadata"]["name"].endswith(f"-{name}"):
                assert "kubeflow" not in yaml.safe_dump(policy)


def test_an_s3_secret_the_chart_never_sees_needs_your_own_platform_secret():
    chart = helm_python.Chart.load(CHART)
    values = {**copy.deepcopy(EXTERNAL_EXISTING_SECRETS), "trainer": {"enabled": True}}
    with pytest.raises(Exception, match=r"trainer\.platformSecret\.create=false"):
        chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    values["trainer"]["platformSecret"] = {"create": False}
    docs = render_values(values)
    assert not _platform_secrets(docs)
    assert of_kind(docs, "Role") and of_kind(docs, "RoleBinding")  # the grant stays


@pytest.mark.parametrize(
    "bad",
    [
        {"trainer": {"enabled": "yes"}},
        {"trainer": {"namespace": "Training"}},  # not a DNS label
        {"trainer": {"runtime": "torch distributed"}},
        {"trainer": {"pipelineRunner": {"namespace": ""}}},
        {"trainer": {"pipelineRunner": {"serviceAccount": "Pipeline_Runner"}}},
        {"trainer": {"platformSecret": {"name": "other"}}},  # the name is fixed
        {"trainer": {"envFrom": []}},
    ],
)
def test_values_schema_rejects_bad_trainer_values(bad: dict[str, Any]):
    with pytest.raises(helm_python.HelmValuesError):
        helm_python.Chart.load(CHART).validate_schema(bad)
