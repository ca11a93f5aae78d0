"""Offline checks of the container images (infra/docker/Dockerfile), without a Docker engine.

A small Dockerfile parser (continuation lines, comments, exec and shell forms, stage inheritance)
feeds checks of what a build or a container start would otherwise find out late: COPY sources,
pinned bases, a non-root user, health checks, and that every `mossctl`/`mlflow` command an image
runs exists in the installed CLIs. test_compose.py reuses the helpers (names without `test_`).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
CONSTRAINTS = ROOT / "infra" / "docker" / "constraints.txt"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
TORCH_PIN = "2.13.0"
KNOWN_INSTRUCTIONS = {
    *("FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "USER", "EXPOSE", "HEALTHCHECK"),
    *("CMD", "ENTRYPOINT", "LABEL", "STOPSIGNAL", "VOLUME", "SHELL", "ONBUILD"),
}


# --- Dockerfile parsing ---------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    value: str  # the rest of the instruction, continuation lines joined
    line: int


@dataclass
class Stage:
    name: str
    base: str  # an image reference or the name of an earlier stage
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions in order: `\\` joins lines, comment lines (also inside a continuation) drop."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue
        if not parts:
            start = number
        continued = stripped.endswith("\\")
        parts.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            text = " ".join(p for p in parts if p)
            keyword, _, value = text.partition(" ")
            instructions.append(Instruction(keyword.upper(), value.strip(), start))
            parts = []
    assert not parts, f"{path}: the last instruction ends with a line continuation"
    return instructions


def split_flags(value: str) -> tuple[dict[str, str], str]:
    """`--from=build --chown=1:1 a b` -> ({'from': 'build', 'chown': '1:1'}, 'a b')."""
    flags: dict[str, str] = {}
    rest = value
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        name, _, flag_value = token[2:].partition("=")
        flags[name] = flag_value
        rest = rest.lstrip()
    return flags, rest


def exec_form(value: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for the shell form."""
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return None
        if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
            return parsed
    return None


@cache
def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Stages by name (unnamed ones by their index), global ARG defaults substituted in FROM."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for instruction in parse_dockerfile(path):
        if instruction.keyword == "FROM":
            _flags, rest = split_flags(instruction.value)
            words = rest.split()
            base = expand(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
            current = stages[name] = Stage(name, base, instruction.line)
        elif current is None:
            assert instruction.keyword == "ARG", f"line {instruction.line}: only ARG before FROM"
            key, _, default = instruction.value.partition("=")
            global_args[key] = default
        else:
            current.instructions.append(instruction)
    return stages


def parent(stage: Stage, stages: dict[str, Stage]) -> Stage | None:
    return stages.get(stage.base)


def copied_from(stages: dict[str, Stage]) -> set[str]:
    """Stages other stages copy files from (COPY --from): build stages, not images to run."""
    names = {
        split_flags(copy.value)[0].get("from", "")
        for stage in stages.values()
        for copy in stage.all("COPY")
    }
    return names & set(stages)


def service_targets(stages: dict[str, Stage] | None = None) -> list[Stage]:
    """The targets meant to be run: stages with a CMD or ENTRYPOINT (their own or inherited)
    that are no build stage of another."""
    stages = stages or dockerfile_stages()
    build_only = copied_from(stages)
    return [
        stage
        for name, stage in stages.items()
        if name not in build_only
        and (effective(stage, "CMD", stages) or effective(stage, "ENTRYPOINT", stages))
    ]


def effective(stage: Stage, keyword: str, stages: dict[str, Stage]) -> Instruction | None:
    """The instruction in force for a stage: its own last one, else its parent stage's."""
    own = stage.all(keyword)
    if own:
        return own[-1]
    up = parent(stage, stages)
    return effective(up, keyword, stages) if up else None


def env_of(stage: Stage, stages: dict[str, Stage]) -> dict[str, str]:
    """ENV of a stage with its parents' (only what this Dockerfile sets)."""
    up = parent(stage, stages)
    env = env_of(up, stages) if up else {}
    for instruction in stage.all("ENV"):
        tokens = shlex.split(instruction.value)
        if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            key, _, value = token.partition("=")
            env[key] = expand(value, env)
    return env


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand(text: str, env: dict[str, str]) -> str:
    """$VAR and ${VAR} from env (unknown ones are left as they are)."""
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


def healthcheck_argv(instruction: Instruction, env: dict[str, str]) -> list[str] | None:
    """The command of a HEALTHCHECK (shell form split after expanding env), None for NONE."""
    _flags, rest = split_flags(instruction.value)
    kind, _, command = rest.partition(" ")
    if kind.upper() == "NONE":
        return None
    assert kind.upper() == "CMD", f"line {instruction.line}: HEALTHCHECK needs CMD or NONE"
    return command_argv(command.strip(), env)


def command_argv(value: str, env: dict[str, str]) -> list[str]:
    """argv of an exec-form or shell-form CMD/ENTRYPOINT/HEALTHCHECK command."""
    argv = exec_form(value)
    if argv is None:
        return shlex.split(expand(value, env))
    if len(argv) == 3 and argv[0] in ("sh", "/bin/sh", "bash", "/bin/bash") and argv[1] == "-c":
        return shlex.split(expand(argv[2], env))
    return argv


def stage_commands(stage: Stage, stages: dict[str, Stage]) -> dict[str, list[str]]:
    """What the image of a stage runs: ENTRYPOINT + CMD, and its health check."""
    env = env_of(stage, stages)
    commands: dict[str, list[str]] = {}
    entrypoint = effective(stage, "ENTRYPOINT", stages)
    cmd = effective(stage, "CMD", stages)
    argv = (command_argv(entrypoint.value, env) if entrypoint else []) + (
        command_argv(cmd.value, env) if cmd else []
    )
    if argv:
        commands["CMD"] = argv
    health = effective(stage, "HEALTHCHECK", stages)
    if health:
        health_argv = healthcheck_argv(health, env)
        if health_argv:
            commands["HEALTHCHECK"] = health_argv
    return commands


# --- the CLIs the images run ----------------------------------------------------------------------


@cache
def mossctl_group():
    import typer.main

    from services.cli import app

    return typer.main.get_command(app)


@cache
def mlflow_group():
    with warnings.catch_warnings():  # its SQLAlchemy store warns on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlflow.cli import cli

    return cli


def resolve_command(group, argv: list[str]) -> tuple[object, list[str], str]:
    """Walk `argv` down the command groups: (leaf command, its arguments, 'prog sub sub').

    Duck-typed: Typer vendors its own copy of click, so its commands are no `click.Command`."""
    command = group
    path = [argv[0]]
    rest = list(argv[1:])
    while hasattr(command, "commands"):
        if not rest or rest[0].startswith("-"):
            subcommands = ", ".join(sorted(command.commands))
            raise LookupError(f"`{' '.join(path)}` needs a subcommand ({subcommands})")
        name = rest.pop(0)
        sub = command.get_command(command.context_class(command), name)
        if sub is None:
            raise LookupError(
                f"`{' '.join(path)}` has no command {name!r} "
                f"(it has: {', '.join(sorted(command.commands))})"
            )
        path.append(name)
        command = sub
    return command, rest, " ".join(path)


def parse_cli(argv: list[str]):
    """Parse a `mossctl ...` or `mlflow ...` command line with the installed CLI, as it would be
    at start-up (unknown commands or options, missing arguments, bad values fail). Returns the
    parsed context (its .params), or None for a program that is neither."""
    program = Path(argv[0]).name
    if program == "mossctl":
        group = mossctl_group()
    elif program == "mlflow":
        group = mlflow_group()
    else:
        return None
    try:
        command, rest, prog = resolve_command(group, argv)
    except LookupError as exc:
        pytest.fail(f"{shlex.join(argv)}: {exc}")
    try:
        ctx = command.make_context(prog, rest)
    except Exception as exc:  # click's and Typer's UsageError, BadParameter, Exit
        message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
        pytest.fail(f"{shlex.join(argv)}: {prog} rejects it: {message}")
    if prog == "mossctl pipeline run" and ctx.params.get("params"):
        from pipelines.runner import coerce

        try:
            coerce(ctx.params["name"], json.loads(ctx.params["params"]))
        except (ValueError, json.JSONDecodeError) as exc:
            pytest.fail(f"{shlex.join(argv)}: bad --params: {exc}")
    return ctx


# --- .dockerignore --------------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def in_build_context(path: str) -> bool:
    """Whether .dockerignore lets `path` (relative to the root) into the build context: the last
    matching pattern decides; a pattern that matches a parent directory matches its contents."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, _ignore_regex(pattern.strip().strip("/"))))
    parts = Path(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            included = negate
    return included


# --- constraints.txt ------------------------------------------------------------------------------


def constraint_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.!_-]*)", line)
        assert match, f"constraints.txt:{number}: {line!r} is not a plain `name==version` pin"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} is pinned twice"
        pins[name] = match.group(2)
    return pins


# --- tests ----------------------------------------------------------------------------------------


def test_dockerfile_parses_into_the_expected_targets():
    stages = dockerfile_stages()
    finals = {s.name for s in service_targets(stages)}
    assert {"gateway", "worker", "predictor", "predictor-cuda", "mlflow"} <= finals, finals
    for instruction in parse_dockerfile():
        assert instruction.keyword in KNOWN_INSTRUCTIONS, (
            f"line {instruction.line}: unexpected instruction {instruction.keyword}"
        )


def test_copy_sources_exist_and_are_in_the_build_context():
    for stage in dockerfile_stages().values():
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, rest = split_flags(instruction.value)
            if "from" in flags:
                assert flags["from"] in dockerfile_stages(), (
                    f"line {instruction.line}: COPY --from={flags['from']} names no stage"
                )
                continue
            words = exec_form(rest) or rest.split()
            assert len(words) >= 2, f"line {instruction.line}: COPY needs a source and a target"
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"line {instruction.line}: {source} does not exist"
                assert in_build_context(source), (
                    f"line {instruction.line}: .dockerignore keeps {source} out of the context"
                )


def test_dockerignore_keeps_secrets_and_local_state_out():
    for path in (".env", ".git/config", ".venv/bin/python", ".moss/admin.key", "tests/conftest.py"):
        assert not in_build_context(path), f"{path} would be sent to the Docker daemon"
    assert not in_build_context("services/cli/__pycache__/common.cpython-311.pyc")
    assert in_build_context("services/cli/__init__.py")


def test_every_from_is_pinned():
    stages = dockerfile_stages()
    for stage in stages.values():
        if stage.base in stages:
            continue
        image = stage.base
        assert "$" not in image, f"line {stage.line}: FROM {image} has an unresolved ARG"
        if "@sha256:" in image:
            continue
        name_part = image.rsplit("/", 1)[-1]
        assert ":" in name_part, f"line {stage.line}: FROM {image} has no tag"
        tag = name_part.split(":", 1)[1]
        assert tag != "latest", f"line {stage.line}: FROM {image} uses latest"
        assert re.search(r"\d+\.\d+", tag), f"line {stage.line}: {image}: pin a version tag"


def test_service_targets_run_as_a_non_root_user():
    stages = dockerfile_stages()
    for stage in service_targets(stages):
        user = effective(stage, "USER", stages)
        assert user is not None, f"target {stage.name} runs as root: set USER"
        name = user.value.split(":")[0]
        assert name not in ("root", "0"), f"target {stage.name}: USER {user.value} is root"


def test_every_service_target_has_a_healthcheck():
    stages = dockerfile_stages()
    for stage in service_targets(stages):
        health = effective(stage, "HEALTHCHECK", stages)
        assert health is not None, f"target {stage.name} has no HEALTHCHECK"
        env = env_of(stage, stages)
        argv = healthcheck_argv(health, env)
        assert argv, f"target {stage.name}: HEALTHCHECK NONE"
        exposed = {
            port.split("/")[0]
            for s in _chain(stage, stages)
            for e in s.all("EXPOSE")
            for port in e.value.split()
        }
        for port in re.findall(r"http://127\.0\.0\.1:(\d+)", " ".join(argv)):
            assert port in exposed, f"target {stage.name} checks port {port}, exposes {exposed}"


def _chain(stage: Stage, stages: dict[str, Stage]) -> list[Stage]:
    up = parent(stage, stages)
    return [stage, *(_chain(up, stages) if up else [])]


def test_compose_build_targets_exist():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    stages = dockerfile_stages()
    declared_args = {i.value.split("=")[0] for s in stages.values() for i in s.all("ARG")}
    targets = set()
    for name, service in compose["services"].items():
        build = service.get("build")
        if not build:
            continue
        assert isinstance(build, dict), f"{name}: build should name dockerfile and target"
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert build.get("target") in stages, f"{name}: no Dockerfile target {build.get('target')}"
        assert build["target"] in {s.name for s in service_targets(stages)}, (
            f"{name}: target {build['target']} is not a service target"
        )
        for arg in build.get("args") or {}:
            assert arg in declared_args, f"{name}: build arg {arg} is not an ARG of the Dockerfile"
        targets.add(build["target"])
    assert {"gateway", "worker", "mlflow", "predictor-cuda"} <= targets, targets


def test_image_commands_exist_in_the_clis():
    stages = dockerfile_stages()
    checked = []
    for stage in service_targets(stages):
        for kind, argv in stage_commands(stage, stages).items():
            if parse_cli(argv) is not None:
                checked.append((stage.name, kind, argv[:2]))
    names = {(name, kind) for name, kind, _ in checked}
    assert ("gateway", "CMD") in names and ("worker", "HEALTHCHECK") in names, checked
    assert ("predictor-cuda", "CMD") in names and ("mlflow", "CMD") in names, checked


def test_worker_healthcheck_pings_the_queue_named_by_moss_queue():
    stages = dockerfile_stages()
    worker = stages["worker"]
    health = effective(worker, "HEALTHCHECK", stages)
    assert "$MOSS_QUEUE" in health.value or "${MOSS_QUEUE}" in health.value
    argv = stage_commands(worker, stages)
    assert argv["HEALTHCHECK"] == ["mossctl", "worker-ping", env_of(worker, stages)["MOSS_QUEUE"]]
    assert argv["CMD"][:2] == ["mossctl", "worker"]


def test_torch_variant_selects_the_wheel_index():
    stages = dockerfile_stages()
    build_runs = " ".join(i.value for s in stages.values() for i in s.all("RUN"))
    args = {i.value for s in stages.values() for i in s.all("ARG")}
    assert "TORCH_VARIANT=cpu" in args
    assert "https://download.pytorch.org/whl/cpu" in build_runs
    assert "https://download.pytorch.org/whl/cu128" in build_runs
    assert f"torch=={TORCH_PIN}" in build_runs
    assert "pip install --constraint infra/docker/constraints.txt ." in build_runs
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"torch=={TORCH_PIN}" in pyproject["project"]["dependencies"]


def test_constraints_pin_every_dependency_of_the_project():
    pins = constraint_pins()
    header = CONSTRAINTS.read_text()
    assert "pip freeze" in header and "--exclude-editable" in header, "keep the one-liner"
    assert pins.get("torch") == TORCH_PIN, "constraints.txt must pin torch==2.13.0 (no +cpu)"
    assert not [p for p in pins if p.startswith("nvidia-")], "nvidia-* come with the CUDA torch"
    assert "moss-audio-platform" not in pins
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for spec in pyproject["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in constraints.txt: regenerate it"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, pyproject wants {requirement}"
        )


def test_constraints_pin_every_extra_the_images_install():
    """The images install `.[all]`: every extra's requirements are pinned like the base ones."""
    pins = constraint_pins()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert set(Requirement(extras["all"][0]).extras) == {"serve", "pipelines", "kserve", "annotate"}
    for extra in ("core", "serve", "pipelines", "kserve", "annotate"):
        for spec in extras[extra]:
            requirement = Requirement(spec)
            name = canonicalize_name(requirement.name)
            if name == "moss-audio-platform":
                continue
            assert name in pins, f"{requirement.name} ([{extra}]) is not in constraints.txt"
            assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
                f"constraints.txt pins {name}=={pins[name]}, [{extra}] wants {requirement}"
            )
