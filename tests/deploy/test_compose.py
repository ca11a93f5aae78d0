"""Offline checks of docker-compose.yml (there is no Docker engine in CI).

The file is loaded with the values of .env.example substituted (a small implementation of
Compose's interpolation), validated against the Compose Specification's JSON schema
(../shared/schemas/compose-spec.json), and checked for what `docker compose up` would only find
out late: commands the CLIs do not have, dependencies on missing services, services with neither a
health check nor a completion condition, secrets written into the file, variables .env.example does
not document, and predictors outside the gpu profile or without a GPU.
"""

from __future__ import annotations

import json
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_images import (
    COMPOSE_FILE,
    ROOT,
    dockerfile_stages,
    effective,
    env_of,
    healthcheck_argv,
    parse_cli,
    stage_commands,
)

ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "compose-spec.json"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|ACCESS_KEY|TOKEN", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"://(?P<user>[^:/@\s]+):(?P<password>[^@\s]+)@")
QUEUES = ("encode", "generate", "annotate")  # job workers (services.core.queue)
PIPELINE_QUEUE = "pipelines"  # the pipeline worker's queue (runs of POST /v1/pipelines/...)


# --- interpolation --------------------------------------------------------------------------------


class InterpolationError(ValueError):
    pass


# $$ | ${VAR} | ${VAR:-default} | ${VAR-default} | ${VAR:?message} | ${VAR?message} | $VAR
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate_string(text: str, env: dict[str, str], used: set[str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        used.add(name)
        op, arg = match.group("op"), match.group("arg") or ""
        if "${" in arg:
            raise InterpolationError(f"nested interpolation is not supported: {match.group(0)}")
        value = env.get(name)
        missing = value is None or (op is not None and op.startswith(":") and value == "")
        if op in ("-", ":-"):
            return arg if missing else value
        if op in ("?", ":?"):
            if missing:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return value
        return value or ""

    result = _INTERPOLATION.sub(substitute, text)
    if "${" in _INTERPOLATION.sub("", text):
        raise InterpolationError(f"unsupported interpolation in {text!r}")
    return result


def interpolate(node, env: dict[str, str], used: set[str]):
    """Compose interpolation of every string value (not keys) of a loaded YAML document."""
    if isinstance(node, str):
        return interpolate_string(node, env, used)
    if isinstance(node, list):
        return [interpolate(item, env, used) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env, used) for key, value in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}:{number}"
        assert key not in values, f"{path.name}:{number}: {key} is set twice"
        values[key] = value.strip().strip("'\"")
    return values


@cache
def raw_compose() -> dict:
    """The file as YAML (anchors and `<<` merges resolved), before interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@cache
def loaded() -> tuple[dict, frozenset[str]]:
    used: set[str] = set()
    document = interpolate(raw_compose(), read_env_file(ENV_EXAMPLE), used)
    return document, frozenset(used)


def compose() -> dict:
    return loaded()[0]


def services() -> dict[str, dict]:
    return compose()["services"]


# --- what a service runs --------------------------------------------------------------------------


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def as_argv(value) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def target_stage(service: dict):
    build = service.get("build")
    return dockerfile_stages().get(build["target"]) if isinstance(build, dict) else None


def command_of(service: dict) -> list[str]:
    """What the container runs: compose's entrypoint/command, else the image's."""
    stage = target_stage(service)
    image = stage_commands(stage, dockerfile_stages()).get("CMD", []) if stage else []
    if "entrypoint" in service:
        return as_argv(service["entrypoint"]) + as_argv(service.get("command") or [])
    if "command" in service:
        return as_argv(service["command"])
    return image


def healthcheck_of(service: dict, name: str) -> list[str] | None:
    """The health check command in force (compose's, else the image's), None when there is none.
    A shell-form image check sees the service's environment."""
    health = service.get("healthcheck")
    if health:
        if health.get("disable") in (True, "true"):
            return None
        test = as_argv(health["test"])
        assert test and test[0] in ("CMD", "CMD-SHELL", "NONE"), f"{name}: healthcheck.test"
        if test[0] == "NONE":
            return None
        return test[1:] if test[0] == "CMD" else shlex.split(" ".join(test[1:]))
    stage = target_stage(service)
    if stage is None:
        return None
    instruction = effective(stage, "HEALTHCHECK", dockerfile_stages())
    if instruction is None:
        return None
    env = {**env_of(stage, dockerfile_stages()), **environment(service)}
    return healthcheck_argv(instruction, env)


def is_one_shot(service: dict) -> bool:
    return str(service.get("restart", "no")) == "no"


def waited_on_to_complete() -> set[str]:
    return {
        target
        for service in services().values()
        for target, spec in depends_on(service).items()
        if spec["condition"] == "service_completed_successfully"
    }


def depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


# --- tests ----------------------------------------------------------------------------------------


def test_valid_against_the_compose_spec():
    if not SCHEMA.is_file():
        pytest.skip(f"the Compose Specification schema is not at {SCHEMA} (../shared/schemas)")
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10]
    )


def test_interpolation_helper():
    used: set[str] = set()
    env = {"A": "1", "EMPTY": ""}
    assert (
        interpolate_string("$A ${A} ${B:-x} ${EMPTY:-d} ${EMPTY-d} $$A", env, used) == "1 1 x d  $A"
    )
    assert used == {"A", "B", "EMPTY"}
    assert interpolate_string("${A:?set A}", env, used) == "1"
    with pytest.raises(InterpolationError, match=r"set B in \.env"):
        interpolate_string("${B:?set B in .env}", env, used)
    with pytest.raises(InterpolationError):
        interpolate_string("${EMPTY:?required}", env, used)


def test_every_interpolated_variable_is_documented_in_env_example():
    documented = set(read_env_file(ENV_EXAMPLE))
    used = loaded()[1]
    assert not used - documented, f"add to .env.example: {sorted(used - documented)}"
    assert not documented - used, f"not used by docker-compose.yml: {sorted(documented - used)}"
    # Each variable is explained: a comment above it or above its group (no blank line between).
    commented = False
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("#"):
            commented = True
        elif not line.strip():
            commented = False
        else:
            assert commented, f".env.example: explain {line.partition('=')[0]} in a comment"


def test_secrets_are_required_from_env_and_never_written_in_the_file():
    raw = raw_compose()
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                # `:?` must be set and non-empty; `?` must be set, may be empty (an optional
                # token such as HF_TOKEN for public repos). Neither puts a value in the file.
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?\?[^}]+\}", value), (
                    f"{name}: {key} must be a required interpolation ${{VAR:?...}}, not {value!r}"
                )
            for match in URL_CREDENTIALS.finditer(value):
                for part in ("user", "password"):
                    assert re.fullmatch(r"\$\{[^}]+\}", match.group(part)), (
                        f"{name}: {key} has a literal {part} in its URL"
                    )
        for arg in as_argv(service.get("command") or []):
            assert not URL_CREDENTIALS.search(arg), f"{name}: credentials on the command line"
    # Every secret-looking variable must be required: a default would be a secret in the file.
    for match in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?", COMPOSE_FILE.read_text()):
        if SECRET_NAME.search(match.group(1)):
            assert match.group(2) in (":?", "?"), f"${{{match.group(1)}}} needs :? (no default)"
    # And none of the example's secret values was copied into the file.
    text = COMPOSE_FILE.read_text()
    for key, value in read_env_file(ENV_EXAMPLE).items():
        if SECRET_NAME.search(key) and value:  # an optional token is empty in the example
            assert value not in text, f"the value of {key} from .env.example is in the file"


def test_secrets_missing_from_env_stop_compose():
    secrets = {k: v for k, v in read_env_file(ENV_EXAMPLE).items() if SECRET_NAME.search(k)}
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MOSS_API_KEY"} <= set(secrets)
    for name in secrets:
        env = {k: v for k, v in read_env_file(ENV_EXAMPLE).items() if k != name}
        with pytest.raises(InterpolationError, match=name):
            interpolate(raw_compose(), env, set())


def test_depends_on_targets_exist_with_consistent_conditions():
    all_services = services()
    one_shot_targets = waited_on_to_complete()
    for name, service in all_services.items():
        for target, spec in depends_on(service).items():
            assert target in all_services, f"{name} depends on {target}, which is not a service"
            assert target != name
            condition = spec["condition"]
            if condition == "service_healthy":
                assert healthcheck_of(all_services[target], target), (
                    f"{name} waits for {target} to be healthy, but it has no health check"
                )
            # A dependency in a profile the dependent is not in must be optional.
            own = set(service.get("profiles") or [])
            theirs = set(all_services[target].get("profiles") or [])
            if theirs and not theirs & own:
                assert spec.get("required") is False, (
                    f"{name} needs {target} (profiles {sorted(theirs)}): set required: false"
                )
    for target in one_shot_targets:
        assert is_one_shot(all_services[target]), f"{target} is waited on to exit: restart: 'no'"


def test_every_service_has_a_healthcheck_or_is_a_one_shot():
    one_shot_targets = waited_on_to_complete()
    for name, service in services().items():
        if is_one_shot(service):
            assert name in one_shot_targets or service.get("profiles"), (
                f"{name} is a one-shot nobody waits for (service_completed_successfully) "
                "and no profile runs on demand"
            )
        else:
            assert healthcheck_of(service, name), f"{name} runs on but has no health check"


def test_commands_exist_in_the_installed_clis(monkeypatch):
    checked = {}
    for name, service in services().items():
        argv = command_of(service)
        if argv and argv[0] == "mlflow":
            # mlflow server reads options from MLFLOW_* variables: parse with the service's.
            for key, value in environment(service).items():
                monkeypatch.setenv(key, value)
        ctx = parse_cli(argv) if argv else None
        if ctx is not None:
            checked[name] = (argv, ctx.params)
        health = healthcheck_of(service, name)
        if health and Path(health[0]).name in ("mossctl", "mlflow"):
            parse_cli(health)
    expected = {"migrate", "gateway", "worker-encode", "worker-generate", "bootstrap-model"}
    expected |= {"worker-pipelines"}
    expected |= {"encoder-predictor", "generator-predictor", "mlflow"}
    assert expected <= set(checked), sorted(checked)
    assert checked["migrate"][0][:2] == ["mossctl", "migrate"]
    assert checked["gateway"][0][:2] == ["mossctl", "gateway"]
    assert checked["bootstrap-model"][0][:4] == ["mossctl", "pipeline", "run", "sft"]
    params = checked["bootstrap-model"][1]
    assert params["local"] and json.loads(params["params"])["promote_to"] == "production"
    mlflow = checked["mlflow"][1]
    assert mlflow["backend_store_uri"].startswith("postgresql+psycopg://"), mlflow
    assert mlflow["backend_store_uri"].endswith("@postgres:5432/mlflow"), "its own database"
    assert mlflow["artifacts_destination"].startswith("s3://"), mlflow
    assert mlflow["host"] == "0.0.0.0" and int(mlflow["port"]) == 5000
    assert "mlflow:*" in mlflow["allowed_hosts"].split(","), "other services call it as mlflow"


def test_workers_serve_the_queue_their_health_check_pings():
    workers = {n: s for n, s in services().items() if command_of(s)[:2] == ["mossctl", "worker"]}
    assert {command_of(s)[2] for s in workers.values()} == {*QUEUES, PIPELINE_QUEUE}
    for name, service in workers.items():
        queue = command_of(service)[2]
        assert environment(service).get("MOSS_QUEUE") == queue, name
        assert healthcheck_of(service, name) == ["mossctl", "worker-ping", queue], name


def test_pipeline_worker_runs_the_pipelines_queue():
    raw = raw_compose()["services"]["worker-pipelines"]
    service = services()["worker-pipelines"]
    assert command_of(service) == ["mossctl", "worker", "pipelines"]
    env = environment(service)
    assert env["MOSS_QUEUE"] == PIPELINE_QUEUE, "the image's HEALTHCHECK pings $MOSS_QUEUE"
    assert healthcheck_of(service, "worker-pipelines") == ["mossctl", "worker-ping", "pipelines"]
    assert not is_one_shot(service), "a long-running service"
    # The job workers' image and environment: the broker, the registry, the object store and a
    # MOSS_HOME of its own for run logs and kfp.local outputs; no admin key.
    encode = services()["worker-encode"]
    assert service["build"] == encode["build"] and service["image"] == encode["image"]
    assert depends_on(service) == depends_on(encode)
    for key in ("MOSS_REDIS_URL", "MOSS_MLFLOW_URI", "MOSS_S3_ENDPOINT", "MOSS_S3_SECRET_KEY"):
        assert env[key] == environment(encode)[key], key
    assert env["MOSS_HOME"] and "MOSS_API_KEY" not in env
    assert environment(raw)["MOSS_DATABASE_URL"] == raw_compose()["x-moss-env"]["MOSS_DATABASE_URL"]


def test_app_settings_are_known_to_the_platform():
    from services.core.settings import Settings

    known = {f"MOSS_{field.upper()}" for field in Settings.model_fields} | {"MOSS_QUEUE"}
    for name, service in services().items():
        unknown = {k for k in environment(service) if k.startswith("MOSS_")} - known
        assert not unknown, f"{name}: no such setting {sorted(unknown)} (services/settings.py)"
        env = environment(service)
        if "MOSS_DATABASE_URL" in env:
            Settings(**{k[5:].lower(): v for k, v in env.items() if k != "MOSS_QUEUE"})


def test_app_services_share_the_platform_environment():
    raw = raw_compose()
    assert "x-moss-env" in raw and "x-model-env" in raw
    apps = [n for n, s in raw["services"].items() if "build" in s and n != "mlflow"]
    for name in apps:
        env = environment(raw["services"][name])
        for key, value in raw["x-model-env"].items():
            if not (name.endswith("predictor") and key == "MOSS_DEVICE"):
                assert env.get(key) == value, f"{name}: {key} differs from x-model-env"
    for name in ("migrate", "gateway", "worker-encode", "worker-generate", "worker-pipelines"):
        env = environment(raw["services"][name])
        assert env["MOSS_INFERENCE_BACKEND"] == "${MOSS_INFERENCE_BACKEND:-local}", name
        assert env["MOSS_DATABASE_URL"] == raw["x-moss-env"]["MOSS_DATABASE_URL"], name


def test_predictors_only_in_the_gpu_profile_with_a_gpu():
    predictors = {
        name: service
        for name, service in services().items()
        if command_of(service)[:2] == ["mossctl", "predictor"]
        or (service.get("build") or {}).get("target", "").startswith("predictor")
    }
    assert set(predictors) == {"encoder-predictor", "generator-predictor"}, sorted(predictors)
    roles = set()
    for name, service in predictors.items():
        assert service.get("profiles") == ["gpu"], f"{name}: only under the gpu profile"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(
            d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
        )
        assert service["build"]["target"] == "predictor-cuda", name
        assert service["build"].get("args", {}).get("TORCH_VARIANT") == "cuda", name
        assert environment(service).get("MOSS_DEVICE") == "cuda", name
        argv = command_of(service)
        roles.add(argv[2])
        model = argv[argv.index("--model") + 1]
        assert model.startswith("models:/"), f"{name} serves the registry's model: {model}"
    assert roles == {"encoder", "generator"}
    # The workers reach them where the predictors listen.
    env = environment(services()["worker-generate"])
    assert env["MOSS_KSERVE_ENCODER_URL"] == "encoder-predictor:8081"  # gRPC, the default
    assert env["MOSS_KSERVE_GENERATOR_URL"] == "generator-predictor:8081"
    assert env["MOSS_KSERVE_PROTOCOL"] == "grpc"
    for name, service in services().items():
        if name not in predictors and "gpu" in (service.get("profiles") or []):
            pytest.fail(f"{name} is in the gpu profile but is no predictor")


def test_third_party_images_are_pinned_and_ours_are_built():
    for name, service in services().items():
        if "build" in service:
            assert service["image"].rsplit(":", 1)[-1] != "latest", name
            continue
        image = service["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert "@sha256:" in image or (tag and tag != "latest" and re.search(r"\d", tag)), (
            f"{name}: pin {image} to a version"
        )


def test_bind_mounts_exist():
    for name, service in services().items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).resolve().exists(), f"{name}: {source} does not exist"


def test_init_scripts_get_what_they_read():
    minio_init = services()["minio-init"]
    script = ROOT / "infra" / "compose" / "minio-init.sh"
    mounted = [v for v in minio_init["volumes"] if v.startswith("./infra/compose/minio-init.sh:")]
    assert mounted and mounted[0].split(":")[1] in command_of(minio_init), "run the mounted script"
    read = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", script.read_text()))
    assert read <= set(environment(minio_init)), (
        f"minio-init lacks {read - set(environment(minio_init))}"
    )
    assert "mc mb --ignore-existing" in script.read_text()
    sql = (ROOT / "infra" / "compose" / "postgres-init").glob("*.sql")
    assert any("CREATE DATABASE mlflow" in path.read_text() for path in sql)
