"""Model references: every form the platform accepts, parsed and resolved in one place.

    tiny, tiny@staging             a platform name: a local checkpoint directory first
                                   (MOSS_MODELS, MOSS_MODELS_DIR), else the registry, where a
                                   bare name means `@production`
    models:/NAME@ALIAS             a registered version by alias (MLflow, MOSS_MLFLOW_URI)
    models:/NAME/VERSION           a registered version by number
    /path/to/checkpoint            a directory (predictors, the CLI, pipelines; never a job:
                                   a tenant must not point the workers at the server's disk)

Workers, predictors, pipelines and the CLI all go through `parse` and `resolve`. The model
version of a checkpoint is a digest of its config and weights, so cached features are never
reused across different weights. Torch-free: the gateway validates references with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .settings import Settings

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # a model name (and an alias)
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(r"^[0-9]{1,9}$")
_DIGEST_FILE = ".moss-digest.json"
REGISTRY_PREFIX = "models:/"
ALIASES = ("candidate", "staging", "production")  # a registered model's aliases (registry.py)
DEFAULT_ALIAS = "production"
LOCAL_TRAINED_FOR = "not recorded (a local checkpoint directory)"


class ModelNotFound(LookupError):
    pass


def _unknown(name: str) -> ModelNotFound:
    """A name that is neither a local checkpoint nor a registered model (`whisper-1`): say so,
    and where the names that work are, rather than speak of an alias the caller never named."""
    return ModelNotFound(
        f"unknown model {name!r}: not a model of this platform; GET /v1/models lists the ids "
        "a request can name"
    )


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference; exactly one of (name), (path) identifies the model."""

    name: str
    alias: str | None = None
    version: str | None = None  # a pinned registry version
    registry: bool = False  # written `models:/...`: never a local directory
    path: Path | None = None  # a checkpoint directory

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self.registry:
            return f"{REGISTRY_PREFIX}{self.name}" + (
                f"/{self.version}" if self.version else f"@{self.alias}"
            )
        return f"{self.name}@{self.alias}" if self.alias else self.name


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: a checkpoint directory on local disk, and where it came from."""

    name: str
    alias: str | None
    path: Path
    registry_version: str | None = None  # the MLflow version, for registry models

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse(ref: str, allow_paths: bool = False) -> ModelRef:
    """One reference string -> ModelRef; ValueError says which forms are accepted."""
    ref = ref.strip()
    if ref.startswith(REGISTRY_PREFIX):
        body = ref.removeprefix(REGISTRY_PREFIX)
        name, at, alias = body.partition("@")
        if at:
            if _NAME.match(name) and _NAME.match(alias):
                return ModelRef(name, alias=alias, registry=True)
        else:
            name, slash, version = body.partition("/")
            if slash and _NAME.match(name) and _VERSION.match(version):
                return ModelRef(name, version=version, registry=True)
        raise ValueError(
            f"invalid model reference {ref!r}: use models:/NAME@ALIAS or models:/NAME/N"
        )
    if allow_paths and ("/" in ref or ref.startswith((".", "~")) or Path(ref).is_dir()):
        path = Path(ref).expanduser()
        return ModelRef(path.name, path=path)
    name, _, alias = ref.partition("@")
    if not _NAME.match(name) or (alias and not _NAME.match(alias)):
        forms = "`name`, `name@alias`, `models:/NAME@ALIAS` or `models:/NAME/N`"
        raise ValueError(f"invalid model reference {ref!r}: use {forms}")
    return ModelRef(name, alias=alias or None)


def available_models(settings: Settings) -> dict[str, Path]:
    """Local checkpoint directories by name: MOSS_MODELS_DIR's children, then MOSS_MODELS."""
    models: dict[str, Path] = {}
    root = settings.resolved_models_dir
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if (child / "config.json").is_file():
                models[child.name] = child
    for entry in filter(None, (e.strip() for e in settings.models.split(","))):
        name, sep, path = entry.partition("=")
        if not sep:
            raise ValueError(f"MOSS_MODELS entry {entry!r} must be name=/path")
        models[name.strip()] = Path(path.strip()).expanduser()
    return models


def registry_client(settings: Settings):
    """The registry at MOSS_MLFLOW_URI (imported late: mlflow is heavy, most calls need none)."""
    from .registry import Registry

    if not settings.mlflow_uri:
        raise ModelNotFound("no model registry configured (MOSS_MLFLOW_URI)")
    return Registry(settings.mlflow_uri)


_ALIAS_TTL_S = 5.0
_alias_cache: dict[tuple[str, str, str], tuple[float, str | None]] = {}


def _alias_holder(settings: Settings, name: str, alias: str) -> str | None:
    """The version holding `alias`, looked up at most every few seconds per (name, alias)."""
    key = (settings.mlflow_uri or "", name, alias)
    now = time.monotonic()
    cached = _alias_cache.get(key)
    if cached and now - cached[0] < _ALIAS_TTL_S:
        return cached[1]
    version = registry_client(settings).alias_holder(name, alias)
    _alias_cache[key] = (now, version)
    return version


def _registry_version(parsed: ModelRef, settings: Settings) -> str:
    if parsed.version:
        return parsed.version
    alias = parsed.alias or DEFAULT_ALIAS
    try:
        version = _alias_holder(settings, parsed.name, alias)
    except ModelNotFound:
        raise
    except Exception as exc:  # the registry unreachable, or no such model
        raise ModelNotFound(f"unknown model {parsed.name!r} ({type(exc).__name__})") from exc
    if version is None:
        if not _registered(settings, parsed.name):
            raise _unknown(parsed.name)
        raise ModelNotFound(f"no version of {parsed.name!r} holds alias {alias!r}")
    return version


def _registered(settings: Settings, name: str) -> bool:
    """Whether the registry has a model of that name (asked only once a lookup has failed)."""
    try:
        registry_client(settings).client.get_registered_model(name)
    except Exception:  # MlflowException: no such model (or the registry gone: unknown too)
        return False
    return True


def _local_dir(parsed: ModelRef, settings: Settings) -> Path | None:
    if parsed.path is not None:
        if not (parsed.path / "config.json").is_file():
            raise ModelNotFound(f"{parsed.path} holds no config.json: not a MOSS-Audio checkpoint")
        return parsed.path
    if parsed.registry:
        return None
    path = available_models(settings).get(parsed.name)
    return path if path is not None and (path / "config.json").is_file() else None


def check(ref: str | None, settings: Settings) -> str:
    """Validate a job's model reference without loading anything; returns it canonical."""
    parsed = parse(ref or settings.default_model)
    if _local_dir(parsed, settings) is None:
        if not settings.mlflow_uri:
            raise _unknown(parsed.name)
        _registry_version(parsed, settings)
    return str(parsed)


def resolve(
    ref: str | ModelRef | None,
    settings: Settings,
    registry_version: str | None = None,
    allow_paths: bool = False,
) -> ModelSpec:
    """A reference -> a checkpoint directory on local disk (registry versions downloaded once).

    `registry_version` pins a version (the generator uses the version the encoder resolved,
    even if the alias has moved since).
    """
    parsed = ref if isinstance(ref, ModelRef) else parse(ref or settings.default_model, allow_paths)
    path = _local_dir(parsed, settings)
    if path is not None:
        return ModelSpec(name=parsed.name, alias=parsed.alias, path=path)
    if not settings.mlflow_uri:
        raise _unknown(parsed.name)
    version = registry_version or _registry_version(parsed, settings)
    target = settings.home.resolve() / "registry-cache" / parsed.name / version
    path = registry_client(settings).download(parsed.name, version, target)
    return ModelSpec(name=parsed.name, alias=parsed.alias, path=path, registry_version=version)


_described: dict[tuple[str, str, str], dict[str, str | None]] = {}


def describe(spec: ModelSpec, settings: Settings) -> dict[str, str | None]:
    """Which model answers and what it was trained for: shown with every result.

    Registry versions carry it as tags (`trained_for`, `source`, set by training and imports);
    a version's tags are read once per process.
    """
    info: dict[str, str | None] = {
        "name": spec.name,
        "alias": spec.alias,
        "registry_version": spec.registry_version,
        "trained_for": LOCAL_TRAINED_FOR,
        "source": "local",
    }
    if spec.registry_version and settings.mlflow_uri:
        key = (settings.mlflow_uri, spec.name, spec.registry_version)
        if key not in _described:
            tags = registry_client(settings).version_tags(spec.name, spec.registry_version)
            _described[key] = {
                "trained_for": tags.get("trained_for") or "not recorded",
                "source": tags.get("source") or f"registry run {tags.get('run_id', '')}".strip(),
            }
        info.update(_described[key])
    return info


def model_version(path: Path) -> str:
    """A digest of config.json and every weight file; file digests are cached beside them."""
    path = Path(path)
    cache_file = path / _DIGEST_FILE
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    total = hashlib.sha256((path / "config.json").read_bytes())
    changed = False
    for weights in sorted(path.glob("*.safetensors")):
        stat = weights.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        entry = cache.get(weights.name)
        if not entry or entry.get("stamp") != stamp:
            digest = hashlib.sha256()
            with weights.open("rb") as handle:
                while block := handle.read(16 * 1024 * 1024):
                    digest.update(block)
            entry = {"stamp": stamp, "sha256": digest.hexdigest()}
            cache[weights.name] = entry
            changed = True
        total.update(weights.name.encode() + entry["sha256"].encode())
    if changed:
        with contextlib.suppress(OSError):  # read-only checkpoint dir: recompute next time
            cache_file.write_text(json.dumps(cache))
    return total.hexdigest()[:16]
