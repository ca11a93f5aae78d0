"""The Helm chart (helm/moss-audio): lint, render, validate every manifest, cross-check the render.

No cluster and no `helm` binary: helm-python-sdk bundles Helm's library (lint and offline render,
where `lookup` finds nothing), kubernetes-validate ships the Kubernetes JSON schemas, and KServe's
CRD comes from ../shared/schemas/. Each option combination below is linted, rendered and checked
for the mistakes that would otherwise only show up in a cluster: selectors that select nothing,
references to Secrets/ports/Deployments that are not there, containers that run as root, secrets
in ConfigMaps, `mossctl` subcommands that do not exist.
"""

from __future__ import annotations

import base64
import copy
import functools
import re
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "moss-audio"
SHARED_SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas"
KSERVE_CRD = SHARED_SCHEMAS / "kserve" / "serving.kserve.io_inferenceservices.yaml"
KUBE_VERSION = "1.33.0"
RELEASE = "moss"
NAMESPACE = "audio"
QUEUES = ("encode", "generate", "annotate")  # one worker Deployment each
MODEL_QUEUES = ("encode", "generate")  # the workers that call the predictors
PIPELINE_WORKER = "pipeline-worker"  # the `pipelines` queue's worker (pipelineWorker values)
# What the release's own pods must reach, per backing service (when it runs in the cluster).
APP_CLIENTS = (
    "gateway",
    "worker-encode",
    "worker-generate",
    "worker-annotate",
    PIPELINE_WORKER,
    "migrate",
)
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# Custom resources with no schema here: their shape is checked by hand below.
UNSCHEMATIZED = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)

# --------------------------------------------------------------------------------------------
# Option combinations
# --------------------------------------------------------------------------------------------

EVERYTHING_ON: dict[str, Any] = {
    "imagePullSecrets": [{"name": "ghcr-pull"}],
    "commonLabels": {"team": "audio"},
    "podAnnotations": {"example.com/owner": "audio"},
    "app": {"extraEnv": {"MOSS_MAX_UPLOAD_MB": 200, "MOSS_SWEEP_AFTER_S": "60"}},
    "inference": {"backend": "kserve", "kserve": {"protocol": "grpc"}},
    "gateway": {
        "extraEnv": {"MOSS_MAX_AUDIO_SECONDS": "1800"},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "200m"},
            "hosts": [{"host": "moss.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "moss-tls", "hosts": ["moss.example.com"]}],
        },
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
    },
    "workers": {
        "encode": {"keda": {"enabled": True, "maxReplicas": 4}},
        "generate": {"keda": {"enabled": True, "minReplicas": 1, "maxReplicas": 6}},
    },
    "kserve": {
        "deploymentMode": "Serverless",
        "modelVersion": "7",
        "canaryTrafficPercent": 10,
        "generator": {"canaryTrafficPercent": 25, "gpus": 2, "modelName": "moss-audio-gen"},
    },
    "mlflow": {"allowedHosts": ["mlflow.example.com"]},
    "networkPolicy": {
        "gatewayFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}],
        "extraFrom": {"mlflow": [{"namespaceSelector": {"matchLabels": {"name": "kubeflow"}}}]},
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "pipelineWorker": {
        "kfpHost": "http://ml-pipeline.kubeflow:8888",
        "pipelineImage": "ghcr.io/moss-audio/platform:0.1.0-cuda",
        "podAnnotations": {"example.com/role": "pipelines"},
        "extraEnv": {"HF_HUB_OFFLINE": 1},
        "nodeSelector": {"kubernetes.io/os": "linux"},
    },
    "modelImport": {
        "enabled": True,
        "revision": "v1.0",
        "hfEndpoint": "https://hf-mirror.example.com",
        "hfTokenSecret": {"name": "hub-token", "key": "token"},
    },
}

EXTERNAL_EXISTING_SECRETS: dict[str, Any] = {
    "auth": {"existingSecret": "moss-admin", "existingSecretKey": "key"},
    "postgresql": {"enabled": False, "external": {"existingSecret": "moss-db"}},
    "redis": {
        "enabled": False,
        "external": {
            "existingSecret": "moss-redis",
            "address": "redis.example.internal:6379",
            "passwordKey": "password",
        },
    },
    "minio": {"enabled": False},
    "s3": {
        "region": "eu-west-1",
        "external": {"endpoint": "s3.eu-west-1.amazonaws.com", "existingSecret": "moss-s3"},
    },
    "mlflow": {"enabled": False, "externalUri": "https://mlflow.example.com"},
    "kserve": {"enabled": False},
    "inference": {
        "backend": "kserve",
        "kserve": {
            "encoderUrl": "http://encoder.models.svc.cluster.local",
            "generatorUrl": "http://generator.models.svc.cluster.local",
        },
    },
    "workers": {"generate": {"keda": {"enabled": True}}},
}

EXTERNAL_INLINE_RAW: dict[str, Any] = {
    "auth": {"apiKey": "moss_inline-admin-key-for-tests"},
    "postgresql": {
        "enabled": False,
        "external": {
            "url": "postgresql+psycopg://moss:dbpw@db.example.internal:5432/moss",
            "mlflowUrl": "postgresql+psycopg://moss:dbpw@db.example.internal:5432/mlflow",
        },
    },
    "redis": {
        "enabled": False,
        "external": {"url": "redis://:redispw@redis.example.internal:6379/0"},
    },
    "minio": {"enabled": False},
    "s3": {
        "bucket": "audio-prod",
        "external": {
            "endpoint": "objects.example.internal:9000",
            "secure": False,
            "accessKey": "inline-access",
            "secretKey": "inline-secret-value",
        },
    },
    "kserve": {"deploymentMode": "RawDeployment"},
    "inference": {"kserve": {"protocol": "grpc"}},
}

LOCAL_BACKEND_MINIMAL: dict[str, Any] = {
    "inference": {"backend": "local"},
    "kserve": {"enabled": False},
    "networkPolicy": {"enabled": False},
    "podDisruptionBudgets": {"enabled": False},
    "workers": {
        "encode": {
            "imageVariant": "cuda",
            "device": "cuda",
            "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "24Gi"}},
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
        "generate": {"imageVariant": "cuda", "device": "cuda", "replicas": 2},
    },
    # Without Kubeflow, training runs in the pipeline worker: on a GPU node here.
    "pipelineWorker": {
        "imageVariant": "cuda",
        "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"nvidia.com/gpu": 1}},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "nvidia.com/gpu.present",
                                    "operator": "In",
                                    "values": ["true"],
                                }
                            ]
                        }
                    ]
                }
            }
        },
    },
}

STANDARD_MODE_ONE_PREDICTOR: dict[str, Any] = {
    "fullnameOverride": "moss-audio-platform-with-a-rather-long-name-for-limits",
    "kserve": {
        "deploymentMode": "Standard",
        "serviceAccount": {"create": False, "name": "models-reader"},
        "encoder": {"enabled": False},
        "startupProbe": {"periodSeconds": 15, "failureThreshold": 160},
    },
    "inference": {"kserve": {"encoderUrl": "http://encoder.models.svc.cluster.local"}},
}


VLLM_GENERATOR: dict[str, Any] = {
    "inference": {"backend": "openai"},
    "kserve": {
        "deploymentMode": "RawDeployment",
        "encoder": {"enabled": False},
        "generator": {"enabled": False},
        "vllm": {"enabled": True, "extraArgs": ["--max-model-len=32768"]},
    },
}


# Kubeflow Trainer (trainer.enabled): KFP's standalone defaults (runner and jobs in `kubeflow`),
# and a multi-user profile whose TrainJobs go to their own namespace, with an external S3 API.
TRAINER_KUBEFLOW: dict[str, Any] = {"trainer": {"enabled": True}}
TRAINER_TWO_NAMESPACES: dict[str, Any] = {
    **copy.deepcopy(EXTERNAL_INLINE_RAW),
    "s3": {**EXTERNAL_INLINE_RAW["s3"], "region": "eu-west-1"},
    "pipelineWorker": {
        "kfpHost": "http://ml-pipeline.kubeflow:8888",
        "pipelineImage": "registry.example.com/moss-audio/platform:0.1.0-cuda",
    },
    "trainer": {
        "enabled": True,
        "namespace": "training",
        "runtime": "torch-distributed",
        "pipelineRunner": {"serviceAccount": "default-editor", "namespace": "team-audio"},
    },
}


def _docs_example() -> dict[str, Any]:
    """The GPU-cluster values shown in docs/deploy.md: the documented example must render."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    block = text.split("A values file for a GPU cluster", 1)[1].split("```yaml\n", 1)[1]
    return yaml.safe_load(block.split("```", 1)[0])


COMBINATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "docs-gpu-cluster": _docs_example(),
    "everything-on": EVERYTHING_ON,
    "external-existing-secrets": EXTERNAL_EXISTING_SECRETS,
    "external-inline-rawdeployment": EXTERNAL_INLINE_RAW,
    "local-backend-minimal": LOCAL_BACKEND_MINIMAL,
    "standard-mode-one-predictor": STANDARD_MODE_ONE_PREDICTOR,
    "vllm-generator": VLLM_GENERATOR,
    "trainer-kubeflow": TRAINER_KUBEFLOW,
    "trainer-two-namespaces": TRAINER_TWO_NAMESPACES,
}

# --------------------------------------------------------------------------------------------
# Rendering and helpers
# --------------------------------------------------------------------------------------------


@functools.cache
def _loaded_chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


@pytest.fixture
def chart() -> helm_python.Chart:
    return _loaded_chart()


@functools.cache
def _render(combo: str) -> tuple[dict[str, str], tuple[dict, ...]]:
    out = _loaded_chart().render(
        copy.deepcopy(COMBINATIONS[combo]), name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return out, tuple(docs)


def render_docs(combo: str) -> list[dict]:
    return copy.deepcopy(list(_render(combo)[1]))


def render_values(values: dict) -> list[dict]:
    """The manifests for values outside COMBINATIONS (NOTES.txt left out)."""
    out = _loaded_chart().render(
        copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    return [
        doc
        for path, text in out.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def component_of(doc: dict) -> str | None:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def merged_values(combo: str) -> dict:
    return _loaded_chart().merge_values(copy.deepcopy(COMBINATIONS[combo]))


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, component: str) -> dict:
    found = [
        d
        for d in of_kind(docs, kind)
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(found) == 1, f"expected one {kind} for {component}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict) -> dict:
    """The pod spec of a workload, or the predictor (a pod spec plus extensions) of an ISVC."""
    if doc["kind"] == "InferenceService":
        return doc["spec"]["predictor"]
    return doc["spec"]["template"]["spec"]


def pod_labels(doc: dict) -> dict:
    if doc["kind"] == "InferenceService":
        return doc["spec"]["predictor"].get("labels", {})
    return doc["spec"]["template"]["metadata"].get("labels", {})


def pod_owners(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in (*WORKLOAD_KINDS, "InferenceService")]


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    if "model" in spec:  # an ISVC on a KServe runtime: `model` is its container's spec
        return [{"name": "kserve-container", "image": "kserve-runtime", **spec["model"]}]
    return [*spec.get("initContainers", []), *spec["containers"]]


def command_line(container: dict) -> list[str]:
    return [str(x) for x in [*container.get("command", []), *container.get("args", [])]]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def selector_matches(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def secrets_by_name(docs: list[dict]) -> dict[str, dict[str, str]]:
    """Rendered Secrets, decoded: name -> {key: value}."""
    result = {}
    for secret in of_kind(docs, "Secret"):
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        data.update(secret.get("stringData") or {})
        result[secret["metadata"]["name"]] = data
    return result


def existing_secret_names(values: dict) -> set[str]:
    """Secrets the values say the operator manages (not rendered by the chart)."""
    names = {
        values["auth"]["existingSecret"],
        values["postgresql"]["external"]["existingSecret"],
        values["redis"]["external"]["existingSecret"],
        values["s3"]["external"]["existingSecret"],
        values["modelImport"]["hfTokenSecret"]["name"],
    }
    return {n for n in names if n}


def mossctl_invocations(docs: list[dict]) -> list[list[str]]:
    """Every `mossctl ...` command line in containers and exec probes."""
    found = []
    for owner in pod_owners(docs):
        for container in containers(owner):
            lines = [command_line(container)]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                exec_ = (container.get(probe) or {}).get("exec")
                if exec_:
                    lines.append([str(x) for x in exec_["command"]])
            found.extend(line for line in lines if line and line[0] == "mossctl")
    return found


@functools.cache
def _crd_schema() -> dict:
    crd = yaml.safe_load(KSERVE_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return _closed(version["schema"]["openAPIV3Schema"])


def _closed(schema: Any) -> Any:
    """The API server prunes fields a structural schema does not declare, silently. Make every
    object with declared properties reject unknown ones, so a misplaced field fails here."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        key: {name: _closed(sub) for name, sub in value.items()}
        if key == "properties"
        else _closed(value)
        for key, value in schema.items()
    }
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


ALL = list(COMBINATIONS)

# --------------------------------------------------------------------------------------------
# Lint and schema-validate every combination
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combo", ALL)
def test_lint_reports_no_errors(combo):
    report = helm_python.lint(
        CHART,
        copy.deepcopy(COMBINATIONS[combo]),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}",
    )
    errors = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and errors == [], report


@pytest.mark.parametrize("combo", ALL)
def test_builtin_kinds_validate_against_kubernetes_schemas(combo):
    docs = render_docs(combo)
    assert docs
    for doc in docs:
        if doc["kind"] == "InferenceService" or (doc["apiVersion"], doc["kind"]) in UNSCHEMATIZED:
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(
                f"no Kubernetes {KUBE_VERSION} schema for {doc['apiVersion']} {doc['kind']}"
            )


@pytest.mark.parametrize("combo", ALL)
def test_inference_services_validate_against_kserve_crd(combo):
    if not KSERVE_CRD.is_file():
        pytest.skip(f"KServe CRD schema not found at {KSERVE_CRD} (../shared/schemas/)")
    docs = render_docs(combo)
    values = merged_values(combo)
    isvcs = of_kind(docs, "InferenceService")
    expected = [c for c in ("encoder", "generator", "vllm") if values["kserve"]["enabled"]]
    expected = [c for c in expected if values["kserve"][c]["enabled"]]
    assert len(isvcs) == len(expected)
    validator = jsonschema.Draft7Validator(_crd_schema())
    for isvc in isvcs:
        assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
        errors = [
            f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in validator.iter_errors(isvc)
        ]
        assert not errors, f"{isvc['metadata']['name']}: {errors}"


@pytest.mark.parametrize("combo", ALL)
def test_custom_resources_without_schemas_have_their_required_fields(combo):
    docs = render_docs(combo)
    deployments = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    services = of_kind(docs, "Service")
    auths = {d["metadata"]["name"]: d for d in of_kind(docs, "TriggerAuthentication")}
    secrets = secrets_by_name(docs)
    existing = existing_secret_names(merged_values(combo))
    for so in of_kind(docs, "ScaledObject"):
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        lists = [t["metadata"]["listName"] for t in spec["triggers"]]
        assert lists in ([q, f"{q}.high"] for q in QUEUES), "a worker scales on both its queues"
        for trigger in spec["triggers"]:
            assert trigger["type"] == "redis"
            meta = trigger["metadata"]
            assert re.fullmatch(r"[^:/]+:\d+", meta["address"]), meta["address"]
            assert all(isinstance(v, str) for v in meta.values()), "KEDA values are strings"
            if "authenticationRef" in trigger:
                assert trigger["authenticationRef"]["name"] in auths
    for auth in auths.values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["parameter"] == "password"
            assert ref["name"] in existing or ref["key"] in secrets[ref["name"]]
    for sm in of_kind(docs, "ServiceMonitor"):
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        targets = [
            s for s in services if selector_matches(sm["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert targets, "the ServiceMonitor selects no Service"
        port_names = {p.get("name") for s in targets for p in s["spec"]["ports"]}
        for endpoint in sm["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"  # the gateway's route (admin keys only)
            credentials = endpoint["authorization"]["credentials"]
            assert (
                credentials["name"] in existing
                or credentials["key"] in secrets[credentials["name"]]
            )


def test_values_schema_rejects_bad_values(chart):
    chart.validate_schema({})
    bad_values = [
        {"inference": {"backend": "bogus"}},
        {"inference": {"kserve": {"protocol": "websocket"}}},
        {"kserve": {"deploymentMode": "Knative"}},
        {"kserve": {"encoder": {"canaryTrafficPercent": 150}}},
        {"gateway": {"replicas": "two"}},
        {"workers": {"encode": {"device": "tpu"}}},
        {"app": {"extraEnv": {"NOT_MOSS": "x"}}},
        {"s3": {"external": {"endpoint": "https://s3.example.com"}}},
        {"pipelineWorker": {"kfpHost": "ml-pipeline.kubeflow:8888"}},  # no scheme
        {"pipelineWorker": {"imageVariant": "rocm"}},
        {"pipelineWorker": {"keda": {"enabled": True}}},  # no KEDA for the pipeline worker
        {"pipelineWorker": {"extraEnv": {"BAD-NAME": "x"}}},
        {"unknownTopLevelKey": True},
    ]
    for values in bad_values:
        with pytest.raises(helm_python.HelmValuesError):
            chart.validate_schema(values)
    with pytest.raises(helm_python.HelmValuesError, match="backend"):
        chart.render({"inference": {"backend": "bogus"}}, name=RELEASE, namespace=NAMESPACE)


# --------------------------------------------------------------------------------------------
# Failing on inconsistent values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RawDeployment", "Standard"])
@pytest.mark.parametrize(
    "canary",
    [{"canaryTrafficPercent": 10}, {"generator": {"canaryTrafficPercent": 0}}],
    ids=["shared", "per-predictor"],
)
def test_canary_outside_serverless_fails_rendering(chart, mode, canary):
    values = {"kserve": {"deploymentMode": mode, **canary}}
    with pytest.raises(helm_python.HelmRenderError, match="canaryTrafficPercent needs"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"postgresql": {"enabled": False}}, "postgresql.external.url"),
        ({"redis": {"enabled": False}}, "redis.external.url"),
        ({"minio": {"enabled": False}}, "s3.external.endpoint"),
        ({"kserve": {"enabled": False}}, "inference.kserve.encoderUrl"),
        (
            {
                "redis": {"enabled": False, "external": {"url": "redis://r:6379/0"}},
                "workers": {"encode": {"keda": {"enabled": True}}},
            },
            "redis.external.address",
        ),
    ],
)
def test_missing_external_settings_fail_with_a_message(chart, values, message):
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# --------------------------------------------------------------------------------------------
# Cross-checks of the render
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combo", ALL)
def test_resources_carry_the_standard_labels(combo):
    for doc in render_docs(combo):
        labels = doc["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
    for owner in pod_owners(render_docs(combo)):
        labels = pod_labels(owner)
        assert all(k in labels for k in STANDARD_LABELS), owner["metadata"]["name"]


@pytest.mark.parametrize("combo", ALL)
def test_workload_selectors_match_their_pod_templates(combo):
    docs = render_docs(combo)
    for doc in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet"):
        selector = doc["spec"]["selector"]
        assert set(selector["matchLabels"]) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        }, "selectors use only the stable labels (they are immutable)"
        assert selector_matches(selector, pod_labels(doc)), doc["metadata"]["name"]
    # No two workloads share a selector (they would fight over pods).
    selectors = [
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items()))
        for d in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")
    ]
    assert len(selectors) == len(set(selectors))


@pytest.mark.parametrize("combo", ALL)
def test_services_select_pods_and_their_target_ports_exist(combo):
    docs = render_docs(combo)
    for service in of_kind(docs, "Service"):
        selector = {"matchLabels": service["spec"]["selector"]}
        backends = [o for o in pod_owners(docs) if selector_matches(selector, pod_labels(o))]
        assert backends, f"Service {service['metadata']['name']} selects no pods"
        port_names = {p.get("name") for o in backends for c in containers(o) for p in c["ports"]}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert isinstance(target, int) or target in port_names, (service, target)
    for sts in of_kind(docs, "StatefulSet"):
        assert sts["spec"]["serviceName"] in {
            s["metadata"]["name"] for s in of_kind(docs, "Service")
        }


@pytest.mark.parametrize("combo", ALL)
def test_probe_ports_name_declared_container_ports(combo):
    for owner in pod_owners(render_docs(combo)):
        for container in containers(owner):
            names = {p.get("name") for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                http = (container.get(probe) or {}).get("httpGet")
                if http and isinstance(http["port"], str):
                    assert http["port"] in names, (owner["metadata"]["name"], probe)


@pytest.mark.parametrize("combo", ALL)
def test_every_container_is_locked_down(combo):
    values = merged_values(combo)
    uid = values["podSecurity"]["runAsUser"]
    for owner in pod_owners(render_docs(combo)):
        spec = pod_spec(owner)
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser") == uid
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        if owner["kind"] != "InferenceService":
            assert spec.get("automountServiceAccountToken") is False
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in containers(owner):
            where = f"{owner['kind']}/{owner['metadata']['name']}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser")) not in (None, 0), where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged") is not True, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            # A read-only root needs a writable /tmp (an emptyDir).
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: no writable /tmp"
            assert "emptyDir" in volumes[mounts["/tmp"]], where
            for name in mounts.values():
                assert name in volumes or any(
                    t["metadata"]["name"] == name
                    for t in owner["spec"].get("volumeClaimTemplates", [])
                ), f"{where}: mounts undeclared volume {name}"


@pytest.mark.parametrize("combo", ALL)
def test_images_follow_the_platform_tags(combo):
    values = merged_values(combo)
    app_version = _loaded_chart().metadata["appVersion"]
    repo = values["image"]["repository"]
    for owner in pod_owners(render_docs(combo)):
        for container in containers(owner):
            image = container["image"]
            if not image.startswith(repo + ":"):
                continue  # a third-party image (PostgreSQL, Valkey, MinIO)
            variant = "cuda" if owner["kind"] == "InferenceService" else None
            component = owner["metadata"]["labels"]["app.kubernetes.io/component"]
            if component.startswith("worker-"):
                variant = values["workers"][component[7:]]["imageVariant"]
            if component == PIPELINE_WORKER:
                variant = values["pipelineWorker"]["imageVariant"]
            assert image == f"{repo}:{app_version}-{variant or 'cpu'}", image
        if pod_spec(owner).get("imagePullSecrets") or values["imagePullSecrets"]:
            assert pod_spec(owner)["imagePullSecrets"] == values["imagePullSecrets"]


@pytest.mark.parametrize("combo", ALL)
def test_secret_and_configmap_references_resolve(combo):
    docs = render_docs(combo)
    secrets = secrets_by_name(docs)
    existing = existing_secret_names(merged_values(combo))
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind(docs, "ConfigMap")}
    for owner in pod_owners(docs):
        for container in containers(owner):
            where = f"{owner['metadata']['name']}/{container['name']}"
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    if ref["name"] in existing:
                        continue
                    assert ref["name"] in secrets, f"{where}: no Secret {ref['name']}"
                    assert ref["key"] in secrets[ref["name"]], f"{where}: no key {ref['key']}"
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, where
        for volume in pod_spec(owner).get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
    for sa in of_kind(docs, "ServiceAccount"):
        for ref in sa.get("secrets", []):
            assert ref["name"] in secrets


@pytest.mark.parametrize("combo", ALL)
def test_dependent_env_references_are_defined_earlier(combo):
    """$(VAR) in command/args/env is expanded by the kubelet only for variables defined
    before it in the container's env (or envFrom); anything else stays literal."""
    docs = render_docs(combo)
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind(docs, "ConfigMap")}
    for owner in pod_owners(docs):
        for container in containers(owner):
            known = set()
            for source in container.get("envFrom", []):
                known |= set(configmaps[source["configMapRef"]["name"]])
            for env in container.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", str(env.get("value", ""))):
                    assert ref in known, f"{container['name']}: {env['name']} uses $({ref})"
                known.add(env["name"])
            for ref in re.findall(r"\$\((\w+)\)", " ".join(command_line(container))):
                assert ref in known, f"{container['name']}: command uses $({ref})"


@pytest.mark.parametrize("combo", ALL)
def test_no_secret_values_in_configmaps(combo):
    docs = render_docs(combo)
    secret_values = [
        value
        for name, data in secrets_by_name(docs).items()
        for key, value in data.items()
        # moss-platform (trainer.enabled) also holds plain settings: its secrets are the S3 keys
        if name != "moss-platform" or key in ("MOSS_S3_ACCESS_KEY", "MOSS_S3_SECRET_KEY")
    ]
    secret_values += [
        v
        for v in (
            merged_values(combo)["auth"]["apiKey"],
            merged_values(combo)["s3"]["external"]["secretKey"],
        )
        if v
    ]
    for cm in of_kind(docs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            for secret in secret_values:
                if len(secret) >= 6:
                    assert secret not in value, f"ConfigMap {cm['metadata']['name']}[{key}]"
            assert not re.search(r"(PASSWORD|SECRET|API_KEY|TOKEN)", key), key
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"credentials in {key}"


@pytest.mark.parametrize("combo", ALL)
def test_network_policies_select_pods(combo):
    docs = render_docs(combo)
    values = merged_values(combo)
    policies = of_kind(docs, "NetworkPolicy")
    if not values["networkPolicy"]["enabled"]:
        assert not policies
        return
    all_pod_labels = [pod_labels(o) for o in pod_owners(docs)]
    for policy in policies:
        name = policy["metadata"]["name"]
        matched = [
            lab for lab in all_pod_labels if selector_matches(policy["spec"]["podSelector"], lab)
        ]
        assert matched, f"NetworkPolicy {name} selects no pod"
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(
                        selector_matches(peer["podSelector"], lab) for lab in all_pod_labels
                    ), f"NetworkPolicy {name} allows traffic from pods that do not exist"
    # Default deny covers every pod of the release.
    (deny,) = [p for p in policies if "ingress" not in p["spec"]]
    assert deny["spec"]["policyTypes"] == ["Ingress"]
    assert all(selector_matches(deny["spec"]["podSelector"], lab) for lab in all_pod_labels)
    # Each Service's pods are reachable on the Service's ports by some allow rule.
    for service in of_kind(docs, "Service"):
        svc_labels = [
            lab
            for lab in all_pod_labels
            if selector_matches({"matchLabels": service["spec"]["selector"]}, lab)
        ]
        allowed_ports = {
            p["port"]
            for policy in policies
            if any(selector_matches(policy["spec"]["podSelector"], lab) for lab in svc_labels)
            for rule in policy["spec"].get("ingress", [])
            for p in rule.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            container_ports = {
                p.get("name"): p["containerPort"]
                for o in pod_owners(docs)
                if selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(o))
                for c in containers(o)
                for p in c.get("ports", [])
            }
            target = port["targetPort"]
            target = container_ports.get(target, target)
            assert target in allowed_ports, f"{service['metadata']['name']}:{target} is unreachable"


def admits(policies: list[dict], target: dict, client: dict, port: int) -> bool:
    """Whether some policy selecting the target pod lets a pod of the same namespace with the
    client's labels in on the port (a peer with only a podSelector, or no `from` at all)."""
    for policy in policies:
        if not selector_matches(policy["spec"]["podSelector"], target):
            continue
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports is not None and port not in {p["port"] for p in ports}:
                continue
            peers = rule.get("from")
            if peers is None or any(
                "podSelector" in peer
                and "namespaceSelector" not in peer
                and selector_matches(peer["podSelector"], client)
                for peer in peers
            ):
                return True
    return False


@pytest.mark.parametrize("combo", ALL)
def test_network_policies_let_the_platform_reach_what_it_needs(combo):
    """The gateway, the job workers and the pipeline worker reach every in-cluster backing
    service (Redis, PostgreSQL, MinIO, MLflow) on its ports, the migration job PostgreSQL; the
    job workers reach the predictors, the pipeline worker does not (its runs load the model)."""
    docs = render_docs(combo)
    values = merged_values(combo)
    policies = of_kind(docs, "NetworkPolicy")
    if not values["networkPolicy"]["enabled"]:
        return
    owners = {component_of(o): o for o in pod_owners(docs)}
    clients = {c: pod_labels(owners[c]) for c in APP_CLIENTS}
    for backend in ("redis", "postgresql", "minio", "mlflow"):
        if not values[backend]["enabled"]:
            assert backend not in owners
            continue
        target = pod_labels(owners[backend])
        ports = {
            p["containerPort"] for c in containers(owners[backend]) for p in c.get("ports", [])
        }
        assert ports, backend
        needs = [c for c in clients if c != "migrate" or backend == "postgresql"]
        for client in needs:
            for port in ports:
                assert admits(policies, target, clients[client], port), (
                    f"{client} cannot reach {backend}:{port}"
                )
    port = 8081 if values["inference"]["kserve"]["protocol"] == "grpc" else 8080
    for isvc in of_kind(docs, "InferenceService"):
        target = pod_labels(isvc)
        for queue in MODEL_QUEUES:
            assert admits(policies, target, clients[f"worker-{queue}"], port), queue
        assert not admits(policies, target, clients[PIPELINE_WORKER], port)
        assert not admits(policies, target, clients["worker-annotate"], port)  # runs its own


@pytest.mark.parametrize("combo", ALL)
def test_pod_disruption_budgets_select_workloads(combo):
    docs = render_docs(combo)
    values = merged_values(combo)
    pdbs = of_kind(docs, "PodDisruptionBudget")
    if not values["podDisruptionBudgets"]["enabled"]:
        assert not pdbs
        return
    assert pdbs
    controllers = of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")
    for pdb in pdbs:
        matched = [
            c for c in controllers if selector_matches(pdb["spec"]["selector"], pod_labels(c))
        ]
        assert len(matched) == 1, pdb["metadata"]["name"]
    covered = {pdb["metadata"]["labels"]["app.kubernetes.io/component"] for pdb in pdbs}
    assert {"gateway", "worker-encode", "worker-generate", "worker-annotate"} <= covered
    # One replica running one pipeline: a budget would only block node drains.
    assert PIPELINE_WORKER not in covered


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combo", ALL)
def test_gateway(combo):
    docs = render_docs(combo)
    values = merged_values(combo)
    deployment = one(docs, "Deployment", "gateway")
    (container,) = containers(deployment)
    assert command_line(container) == ["mossctl", "gateway"]
    env = env_of(container)
    assert env["MOSS_HOST"]["value"] == "0.0.0.0"
    assert env["MOSS_PORT"]["value"] == "8000"
    assert "secretKeyRef" in env["MOSS_API_KEY"]["valueFrom"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == 8000
    hpa = of_kind(docs, "HorizontalPodAutoscaler")
    if values["gateway"]["autoscaling"]["enabled"]:
        (hpa,) = hpa
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    else:
        assert not hpa and deployment["spec"]["replicas"] == values["gateway"]["replicas"]
    ingresses = of_kind(docs, "Ingress")
    assert len(ingresses) == int(values["gateway"]["ingress"]["enabled"])
    service = one(docs, "Service", "gateway")
    for ingress in ingresses:
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("combo", ALL)
def test_workers_one_deployment_per_queue(combo):
    docs = render_docs(combo)
    values = merged_values(combo)
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in of_kind(docs, "ScaledObject")}
    isvc_names = {i["metadata"]["name"] for i in of_kind(docs, "InferenceService")}
    for queue in QUEUES:
        worker = values["workers"][queue]
        deployment = one(docs, "Deployment", f"worker-{queue}")
        (container,) = containers(deployment)
        assert command_line(container) == ["mossctl", "worker", queue]
        assert container["livenessProbe"]["exec"]["command"] == ["mossctl", "worker-ping", queue]
        env = env_of(container)
        assert env["MOSS_DEVICE"]["value"] == worker["device"]
        assert env["MOSS_INFERENCE_BACKEND"]["value"] == values["inference"]["backend"]
        assert "MOSS_API_KEY" not in env, "workers do not need the admin key"
        if values["inference"]["backend"] == "kserve":
            protocol = values["inference"]["kserve"]["protocol"]
            assert env["MOSS_KSERVE_PROTOCOL"]["value"] == protocol
            for part in ("encoder", "generator"):
                url = env[f"MOSS_KSERVE_{part.upper()}_URL"]["value"]
                explicit = values["inference"]["kserve"][f"{part}Url"]
                if explicit:
                    assert url == explicit
                    continue
                host = re.sub(r"^https?://", "", url).split(":")[0]
                isvc, rest = host.split("-predictor.", 1)
                assert isvc in isvc_names, f"{url} names no rendered InferenceService"
                assert rest == f"{NAMESPACE}.svc.cluster.local"
                assert url.startswith("http://") == (protocol == "http")
        name = deployment["metadata"]["name"]
        if worker["keda"]["enabled"]:
            assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
            trigger = scaled[name]["spec"]["triggers"][0]
            assert trigger["metadata"]["listName"] == queue
            assert scaled[name]["spec"]["minReplicaCount"] == worker["keda"]["minReplicas"]
        else:
            assert name not in scaled
            assert deployment["spec"]["replicas"] == worker["replicas"]


@pytest.mark.parametrize("combo", ALL)
def test_pipeline_worker(combo):
    docs = render_docs(combo)
    values = merged_values(combo)
    p = values["pipelineWorker"]
    deployment = one(docs, "Deployment", PIPELINE_WORKER)
    assert deployment["spec"]["replicas"] == p["replicas"]
    scaled = {so["spec"]["scaleTargetRef"]["name"] for so in of_kind(docs, "ScaledObject")}
    assert deployment["metadata"]["name"] not in scaled, "no KEDA for the pipeline worker"
    spec = pod_spec(deployment)
    (container,) = containers(deployment)
    assert command_line(container) == ["mossctl", "worker", "pipelines"]
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["mossctl", "worker-ping", "pipelines"]
    assert container["resources"] == p["resources"]
    assert spec.get("nodeSelector", {}) == p["nodeSelector"]
    assert spec.get("tolerations", []) == p["tolerations"]
    assert spec.get("affinity", {}) == p["affinity"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/config" in annotations
    assert p["podAnnotations"].items() <= annotations.items()
    env = env_of(container)
    assert "MOSS_API_KEY" not in env, "the pipeline worker does not need the admin key"
    for name in ("MOSS_REDIS_URL", "MOSS_S3_ACCESS_KEY", "MOSS_S3_SECRET_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    for name, value in p["extraEnv"].items():
        assert env[name]["value"] == str(value), name
    for key, setting in (("kfpHost", "MOSS_KFP_HOST"), ("pipelineImage", "MOSS_PIPELINE_IMAGE")):
        if p[key]:
            assert env[setting]["value"] == p[key]
        else:
            assert setting not in env, f"{setting} without pipelineWorker.{key}"
    # Run logs and kfp.local outputs go under MOSS_HOME: it must be on a writable emptyDir.
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind(docs, "ConfigMap")}
    (source,) = container["envFrom"]
    home = configmaps[source["configMapRef"]["name"]]["MOSS_HOME"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = [
        m["mountPath"]
        for m in container["volumeMounts"]
        if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")
    ]
    assert any(home == w or home.startswith(w.rstrip("/") + "/") for w in writable), home


def test_pipeline_worker_kfp_host_is_set_on_the_pipeline_worker_only():
    host = "http://ml-pipeline.kubeflow:8888"
    docs = render_values({"pipelineWorker": {"kfpHost": host}})
    seen = []
    for owner in pod_owners(docs):
        for container in containers(owner):
            env = env_of(container)
            assert "MOSS_PIPELINE_IMAGE" not in env, "not set: the setting's default applies"
            if component_of(owner) == PIPELINE_WORKER:
                assert env["MOSS_KFP_HOST"]["value"] == host
                seen.append(container["name"])
            else:
                assert "MOSS_KFP_HOST" not in env, f"{owner['metadata']['name']} gets MOSS_KFP_HOST"
    assert seen == ["worker"]
    for cm in of_kind(docs, "ConfigMap"):
        assert "MOSS_KFP_HOST" not in (cm.get("data") or {}), "it is the pipeline worker's alone"


def test_pipeline_worker_disabled_renders_no_pipeline_worker():
    docs = render_values({"pipelineWorker": {"enabled": False}})
    assert not [d for d in docs if component_of(d) == PIPELINE_WORKER]
    assert not [line for line in mossctl_invocations(docs) if "pipelines" in line]
    for queue in QUEUES:  # the job workers do not depend on it
        one(docs, "Deployment", f"worker-{queue}")
    # The NetworkPolicies still select pods without it.
    labels = [pod_labels(o) for o in pod_owners(docs)]
    for policy in of_kind(docs, "NetworkPolicy"):
        assert any(selector_matches(policy["spec"]["podSelector"], lab) for lab in labels)


@pytest.mark.parametrize("combo", ALL)
def test_app_environment_is_complete_and_known_to_settings(combo):
    from services.core.settings import Settings

    docs = render_docs(combo)
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind(docs, "ConfigMap")}
    fields = set(Settings.model_fields)
    required = {
        "MOSS_DATABASE_URL",
        "MOSS_REDIS_URL",
        "MOSS_STORAGE",
        "MOSS_S3_ENDPOINT",
        "MOSS_S3_BUCKET",
        "MOSS_S3_ACCESS_KEY",
        "MOSS_S3_SECRET_KEY",
        "MOSS_S3_SECURE",
        "MOSS_DEFAULT_MODEL",
        "MOSS_HOME",
    }
    components = ["gateway", "worker-encode", "worker-generate", PIPELINE_WORKER, "migrate"]
    for component in components:
        kind = "Job" if component == "migrate" else "Deployment"
        (container,) = containers(one(docs, kind, component))
        names = dict.fromkeys(env_of(container))
        plain = {}
        for source in container.get("envFrom", []):
            plain.update(configmaps[source["configMapRef"]["name"]])
        names.update(dict.fromkeys(plain))
        assert required <= set(names), f"{component} lacks {required - set(names)}"
        unknown = [n for n in names if n.startswith("MOSS_") and n[5:].lower() not in fields]
        assert not unknown, f"{component}: {unknown} are not settings (typo?)"
        assert plain["MOSS_STORAGE"] == "s3"
        assert plain["MOSS_S3_SECURE"] in ("true", "false")
        assert "://" not in plain["MOSS_S3_ENDPOINT"]
        assert plain["MOSS_HOME"].startswith("/tmp/")


def test_generated_urls_point_at_the_in_cluster_services():
    docs = render_docs("defaults")
    values = merged_values("defaults")
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    (creds,) = [data for data in secrets_by_name(docs).values() if "database-url" in data]
    pg = values["postgresql"]["auth"]
    db = re.fullmatch(
        r"postgresql\+psycopg://(\w+):(\w+)@([\w-]+):5432/(\w+)", creds["database-url"]
    )
    assert db, creds["database-url"]
    assert db[1] == pg["username"] and db[2] == creds["postgres-password"]
    assert db[3] in services and db[4] == pg["database"]
    mlflow_db = creds["mlflow-database-url"]
    assert mlflow_db.endswith(f"@{db[3]}:5432/{pg['mlflowDatabase']}")
    redis = re.fullmatch(r"redis://:(\w+)@([\w-]+):6379/0", creds["redis-url"])
    assert redis and redis[1] == creds["redis-password"] and redis[2] in services
    assert creds["api-key"].startswith("moss_") and len(creds["api-key"]) > 30
    (cm,) = [c for c in of_kind(docs, "ConfigMap") if "MOSS_S3_ENDPOINT" in c.get("data", {})]
    host, port = cm["data"]["MOSS_S3_ENDPOINT"].split(":")
    assert host in services and int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
    mlflow = re.fullmatch(r"http://([\w-]+):(\d+)", cm["data"]["MOSS_MLFLOW_URI"])
    assert mlflow and mlflow[1] in services
    assert int(mlflow[2]) in {p["port"] for p in services[mlflow[1]]["spec"]["ports"]}
    # The initdb script creates MLflow's database.
    initdb = [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-initdb")]
    assert f"CREATE DATABASE {pg['mlflowDatabase']}" in next(iter(initdb[0]["data"].values()))


def test_inline_api_key_and_external_urls_are_used():
    docs = render_docs("external-inline-rawdeployment")
    values = merged_values("external-inline-rawdeployment")
    (creds,) = [data for data in secrets_by_name(docs).values() if "database-url" in data]
    assert creds["api-key"] == values["auth"]["apiKey"]
    assert creds["database-url"] == values["postgresql"]["external"]["url"]
    assert creds["redis-url"] == values["redis"]["external"]["url"]
    assert creds["s3-secret-key"] == values["s3"]["external"]["secretKey"]
    assert not of_kind(docs, "StatefulSet"), "no in-cluster stores when all are external"


def test_existing_secrets_are_referenced_not_generated():
    docs = render_docs("external-existing-secrets")
    assert not of_kind(docs, "Secret"), "nothing to generate: every credential is external"
    (container,) = containers(one(docs, "Deployment", "gateway"))
    env = env_of(container)
    assert env["MOSS_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "moss-admin", "key": "key"}
    assert env["MOSS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "moss-db"
    assert env["MOSS_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "moss-redis"
    assert env["MOSS_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "moss-s3"
    (cm,) = of_kind(docs, "ConfigMap")
    assert cm["data"]["MOSS_MLFLOW_URI"] == "https://mlflow.example.com"
    assert cm["data"]["MOSS_S3_SECURE"] == "true"
    assert not [d for d in docs if d["kind"] in ("StatefulSet", "InferenceService")]
    assert not one(docs, "Deployment", "worker-generate")["spec"].get("replicas")


@pytest.mark.parametrize("combo", ALL)
def test_migration_job(combo):
    docs = render_docs(combo)
    job = one(docs, "Job", "migrate")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert "pre-upgrade" in hooks and ("post-install" in hooks or "pre-install" in hooks)
    spec = pod_spec(job)
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    (container,) = containers(job)
    assert command_line(container) == ["mossctl", "migrate"]
    env = env_of(container)
    assert {"MOSS_DATABASE_URL", "MOSS_API_KEY"} <= set(env)


@pytest.mark.parametrize("combo", ALL)
def test_model_import_job_only_when_enabled(combo):
    docs = render_docs(combo)
    values = merged_values(combo)["modelImport"]
    jobs = [
        d
        for d in of_kind(docs, "Job")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "model-import"
    ]
    if not values["enabled"]:
        assert not jobs
        return
    (job,) = jobs
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    migrate = one(docs, "Job", "migrate")["metadata"]["annotations"]["helm.sh/hook-weight"]
    assert int(job["metadata"]["annotations"]["helm.sh/hook-weight"]) > int(migrate)
    (container,) = containers(job)
    line = command_line(container)
    assert line[:4] == ["mossctl", "models", "import", values["source"]]
    assert line[line.index("--name") + 1] == values["name"]
    assert line[line.index("--alias") + 1] == "production"
    assert line[line.index("--revision") + 1] == "v1.0"
    env = env_of(container)
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hub-token", "key": "token"}
    assert env["HF_ENDPOINT"]["value"] == "https://hf-mirror.example.com"
    assert "MOSS_API_KEY" not in env  # the import needs the registry and the store, not the key
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    assert volumes["hf-cache"]["emptyDir"]["sizeLimit"] == values["cacheSize"]


@pytest.mark.parametrize("combo", ALL)
def test_mlflow(combo):
    docs = render_docs(combo)
    values = merged_values(combo)
    if not values["mlflow"]["enabled"]:
        assert not [
            d for d in docs if d["metadata"]["labels"]["app.kubernetes.io/component"] == "mlflow"
        ]
        return
    deployment = one(docs, "Deployment", "mlflow")
    (container,) = containers(deployment)
    line = command_line(container)
    assert line[:2] == ["mlflow", "server"]
    opts = dict(zip(line[2::2], line[3::2], strict=True))
    assert opts["--backend-store-uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert opts["--artifacts-destination"] == f"s3://{values['s3']['bucket']}/mlflow"
    assert opts["--host"] == "0.0.0.0" and opts["--port"] == "5000" and opts["--workers"] == "1"
    service = one(docs, "Service", "mlflow")
    hosts = opts["--allowed-hosts"].split(",")
    assert service["metadata"]["name"] in hosts and "localhost:*" in hosts
    env = env_of(container)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"].startswith(("http://", "https://"))
    for name in ("MLFLOW_BACKEND_STORE_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("combo", ALL)
def test_inference_services(combo):
    docs = render_docs(combo)
    values = merged_values(combo)
    kserve = values["kserve"]
    serverless = kserve["deploymentMode"] == "Serverless"
    service_accounts = {s["metadata"]["name"] for s in of_kind(docs, "ServiceAccount")}
    for isvc in of_kind(docs, "InferenceService"):
        part = isvc["metadata"]["labels"]["app.kubernetes.io/component"].removesuffix("-predictor")
        if part == "vllm":  # KServe's own runtime (test_the_vllm_generator_...)
            continue
        p = kserve[part]
        name = isvc["metadata"]["name"]
        assert len(f"{name}-predictor-00001") <= 63, "Knative revision names are DNS labels"
        annotations = isvc["metadata"]["annotations"]
        assert annotations["serving.kserve.io/deploymentMode"] == kserve["deploymentMode"]
        predictor = isvc["spec"]["predictor"]
        canary = p.get("canaryTrafficPercent", kserve.get("canaryTrafficPercent"))
        assert predictor.get("canaryTrafficPercent") == canary
        if not serverless:
            assert "canaryTrafficPercent" not in predictor
        if kserve["serviceAccount"]["create"]:
            assert predictor["serviceAccountName"] in service_accounts
        else:
            assert predictor["serviceAccountName"] == kserve["serviceAccount"]["name"]
        assert predictor["nodeSelector"] == p["nodeSelector"]
        assert predictor["tolerations"] == p["tolerations"]
        (container,) = predictor["containers"]
        assert container["name"] == "kserve-container"
        line = command_line(container)
        assert line[:5] == ["mossctl", "predictor", part, "--model", "/mnt/models"]
        assert line[5:7] == ["--model-name", p["modelName"] or kserve["modelName"]]
        if kserve["modelVersion"]:
            assert annotations["moss-audio/model-version"] == str(kserve["modelVersion"])
        assert env_of(container)["STORAGE_URI"]["value"] == p["storageUri"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == p["gpus"]
        ports = {port["containerPort"]: port["name"] for port in container["ports"]}
        if serverless:
            assert len(ports) == 1, "Knative exposes exactly one port"
            grpc = values["inference"]["kserve"]["protocol"] == "grpc"
            assert ports == ({8081: "h2c"} if grpc else {8080: "http1"})
        else:
            assert ports == {8080: "http1", 8081: "h2c"}
        startup = container["startupProbe"]
        assert startup["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
        budget = startup["failureThreshold"] * startup["periodSeconds"]
        configured = (
            kserve["startupProbe"]["failureThreshold"] * kserve["startupProbe"]["periodSeconds"]
        )
        assert budget == configured >= 15 * 60, "model loading needs a long startup budget"
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        if serverless:
            deadline = int(annotations["serving.knative.dev/progress-deadline"].rstrip("s"))
            assert deadline > budget, "Knative's progress deadline must outlast the startup probe"


def test_the_vllm_generator_is_kserves_huggingface_runtime_and_the_workers_call_it():
    docs = render_docs("vllm-generator")
    values = merged_values("vllm-generator")["kserve"]["vllm"]
    (isvc,) = of_kind(docs, "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["args"][:3] == [
        f"--model_name={values['modelName']}",
        f"--model_id={values['modelId']}",
        "--backend=vllm",
    ]
    assert "--max-model-len=32768" in model["args"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == values["gpus"]
    for name in ("worker-encode", "worker-generate"):
        (worker,) = [d for d in of_kind(docs, "Deployment") if component_of(d) == name]
        env = env_of(pod_spec(worker)["containers"][0])
        assert env["MOSS_INFERENCE_BACKEND"]["value"] == "openai"
        host = f"{isvc['metadata']['name']}-predictor.{NAMESPACE}.svc.cluster.local"
        assert env["MOSS_OPENAI_BASE_URL"]["value"] == f"http://{host}/openai/v1"
        assert env["MOSS_OPENAI_MODEL"]["value"] == values["modelName"]
        assert "MOSS_KSERVE_GENERATOR_URL" not in env
    stored = render_values(
        {
            **VLLM_GENERATOR,
            "kserve": {
                **VLLM_GENERATOR["kserve"],
                "vllm": {"enabled": True, "storageUri": "s3://b/moss"},
            },
        }
    )
    (isvc,) = of_kind(stored, "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://b/moss"
    assert not any(a.startswith("--model_id") for a in isvc["spec"]["predictor"]["model"]["args"])


def test_the_openai_backend_without_a_server_fails_with_a_message(chart):
    with pytest.raises(
        Exception, match=r"inference\.backend=openai needs inference\.openai\.baseUrl"
    ):
        chart.render({"inference": {"backend": "openai"}}, name=RELEASE, namespace=NAMESPACE)
    docs = render_values(
        {
            "inference": {
                "backend": "openai",
                "openai": {"baseUrl": "http://vllm.gpu:8000/v1", "model": "moss"},
            }
        }
    )
    worker = [d for d in of_kind(docs, "Deployment") if component_of(d) == "worker-generate"]
    env = env_of(pod_spec(worker[0])["containers"][0])
    assert env["MOSS_OPENAI_BASE_URL"]["value"] == "http://vllm.gpu:8000/v1"
    assert env["MOSS_OPENAI_MODEL"]["value"] == "moss"


def test_default_startup_budget_is_about_twenty_minutes():
    docs = render_docs("defaults")
    for isvc in of_kind(docs, "InferenceService"):
        probe = isvc["spec"]["predictor"]["containers"][0]["startupProbe"]
        assert probe["failureThreshold"] * probe["periodSeconds"] == 20 * 60


def test_default_model_is_the_one_the_predictors_serve():
    """Workers call the predictors with the job's model name (`name` of `name@alias`)."""
    values = merged_values("defaults")
    served = values["kserve"]["modelName"]
    assert values["app"]["defaultModel"].split("@")[0] == served
    for isvc in of_kind(render_docs("defaults"), "InferenceService"):
        line = command_line(isvc["spec"]["predictor"]["containers"][0])
        assert line[line.index("--model-name") + 1] == served


def test_values_written_by_mossctl_deploy_render_are_accepted(chart):
    """`mossctl deploy render` (services/deploy.py) writes these keys into the values."""
    uri = "s3://moss-audio/mlflow/1/models/m-abc/artifacts/checkpoint"
    values = {
        "kserve": {
            "modelName": "moss-audio-8b-instruct",
            "modelVersion": "12",
            "canaryTrafficPercent": 10,
            "encoder": {"storageUri": uri},
            "generator": {"storageUri": uri},
        }
    }
    chart.validate_schema(values)
    docs = [
        d
        for path, text in chart.render(values, name=RELEASE, namespace=NAMESPACE).items()
        if path.endswith("inferenceservices.yaml")
        for d in yaml.safe_load_all(text)
        if d
    ]
    assert len(docs) == 2
    for isvc in docs:
        predictor = isvc["spec"]["predictor"]
        assert predictor["canaryTrafficPercent"] == 10
        container = predictor["containers"][0]
        assert env_of(container)["STORAGE_URI"]["value"] == uri
        assert "moss-audio-8b-instruct" in command_line(container)
        assert isvc["metadata"]["annotations"]["moss-audio/model-version"] == "12"


def test_kserve_storage_credentials_for_in_cluster_minio():
    docs = render_docs("defaults")
    secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    (sa,) = [s for s in of_kind(docs, "ServiceAccount") if s.get("secrets")]
    (ref,) = sa["secrets"]
    secret = secrets[ref["name"]]
    annotations = secret["metadata"]["annotations"]
    assert annotations["serving.kserve.io/s3-usehttps"] == "0"
    host = annotations["serving.kserve.io/s3-endpoint"].split(":")[0]
    assert host in {s["metadata"]["name"] for s in of_kind(docs, "Service")}
    decoded = secrets_by_name(docs)
    assert decoded[ref["name"]]["AWS_ACCESS_KEY_ID"] in {
        v for data in decoded.values() for k, v in data.items() if k == "s3-access-key"
    }
    for isvc in of_kind(docs, "InferenceService"):
        assert isvc["spec"]["predictor"]["serviceAccountName"] == sa["metadata"]["name"]


def test_notes_explain_the_first_job():
    out, _ = _render("defaults")
    (notes,) = [text for path, text in out.items() if path.endswith("NOTES.txt")]
    assert "kubectl get secret" in notes and "base64 -d" in notes
    assert "kubectl port-forward" in notes
    assert '-H "Authorization: Bearer $MOSS_API_KEY"' in notes
    assert "-F file=@clip.wav -F task=caption" in notes and "/v1/jobs" in notes
    assert "mossctl submit clip.wav --task caption" in notes
    assert "MOSS_URL" in notes


# --------------------------------------------------------------------------------------------
# The CLI the manifests call
# --------------------------------------------------------------------------------------------


def test_every_mossctl_subcommand_in_the_manifests_exists():
    import typer.main

    from services.cli import app

    # A click Group (typer vendors its own click, so test for the group's methods, not a class).
    def is_group(command) -> bool:
        return hasattr(command, "get_command") and hasattr(command, "list_commands")

    root = typer.main.get_command(app)
    invocations = {tuple(line) for combo in ALL for line in mossctl_invocations(render_docs(combo))}
    used = {line[1] for line in invocations}
    assert {"gateway", "worker", "worker-ping", "migrate", "predictor"} <= used
    for line in sorted(invocations):
        command, path, args = root, ["mossctl"], list(line[1:])
        # Walk nested groups; the first plain command takes the rest as its arguments.
        while is_group(command) and args and not args[0].startswith("-"):
            name = args.pop(0)
            sub = command.get_command(None, name)
            assert sub is not None, f"`{' '.join(path)} {name}` does not exist (used: {line})"
            command, path = sub, [*path, name]
        assert not is_group(command), f"`{' '.join(path)}` needs a subcommand"
        options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for arg in args:
            if arg.startswith("--"):
                assert arg.split("=")[0] in options, f"`{' '.join(path)}` has no option {arg}"
