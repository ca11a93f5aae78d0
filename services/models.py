"""Which checkpoint serves a job, and loading it once per process.

A job names a model as `name` or `name@alias`. Today names resolve to local checkpoint
directories: `MOSS_MODELS="name=/path,other=/path"` and every subdirectory of `MOSS_MODELS_DIR`
(default `MOSS_HOME/models`) that holds a `config.json`. Aliases resolve through the MLflow
registry once the model lifecycle lands; a local directory answers to any alias for now (said in
docs/configuration.md). The model version is a digest of the checkpoint's config and weights, so
cached features are never reused across different weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .settings import Settings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DIGEST_FILE = ".moss-digest.json"


class ModelNotFound(LookupError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    alias: str | None
    path: Path
    registry_version: str | None = None  # the MLflow version, for registry models

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse_ref(ref: str) -> tuple[str, str | None]:
    name, _, alias = ref.partition("@")
    if not _NAME.match(name) or (alias and not _NAME.match(alias)):
        raise ValueError(f"invalid model reference {ref!r}: use `name` or `name@alias`")
    return name, alias or None


def available_models(settings: Settings) -> dict[str, Path]:
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


_ALIAS_TTL_S = 5.0
_alias_cache: dict[tuple[str, str, str], tuple[float, str | None]] = {}


def _registry_version(settings: Settings, name: str, alias: str) -> str | None:
    """The version holding `alias`, looked up at most every few seconds per (name, alias)."""
    from pipelines.registry import Registry

    key = (settings.mlflow_uri or "", name, alias)
    now = time.monotonic()
    cached = _alias_cache.get(key)
    if cached and now - cached[0] < _ALIAS_TTL_S:
        return cached[1]
    version = Registry(settings.mlflow_uri).alias_holder(name, alias)
    _alias_cache[key] = (now, version)
    return version


def check(ref: str | None, settings: Settings) -> str:
    """Validate a job's model reference without loading anything; returns it canonical."""
    name, alias = parse_ref(ref or settings.default_model)
    if name in available_models(settings):
        return f"{name}@{alias}" if alias else name
    if not settings.mlflow_uri:
        raise ModelNotFound(f"unknown model {name!r}")
    try:
        version = _registry_version(settings, name, alias or "production")
    except Exception as exc:
        raise ModelNotFound(f"unknown model {name!r} ({type(exc).__name__})") from exc
    if version is None:
        raise ModelNotFound(f"no version of {name!r} holds alias {alias or 'production'!r}")
    return f"{name}@{alias}" if alias else name


def resolve(ref: str | None, settings: Settings, registry_version: str | None = None) -> ModelSpec:
    """A job's model: a local checkpoint directory, else a registered version (MLflow).

    For registry models, `name` means `name@production`; `registry_version` pins a version
    (the generator uses the version the encoder resolved, even if the alias has moved since).
    """
    name, alias = parse_ref(ref or settings.default_model)
    path = available_models(settings).get(name)
    if path is not None and (path / "config.json").is_file():
        return ModelSpec(name=name, alias=alias, path=path)
    if not settings.mlflow_uri:
        raise ModelNotFound(f"unknown model {name!r}")
    version = registry_version or _registry_version(settings, name, alias or "production")
    if version is None:
        raise ModelNotFound(f"no version of {name!r} holds alias {alias or 'production'!r}")
    from pipelines.registry import Registry

    target = settings.home.resolve() / "registry-cache" / name / version
    path = Registry(settings.mlflow_uri).download(name, version, target)
    return ModelSpec(name=name, alias=alias, path=path, registry_version=version)


LOCAL_TRAINED_FOR = "not recorded (a local checkpoint directory)"
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
            from pipelines.registry import Registry

            tags = Registry(settings.mlflow_uri).version_tags(spec.name, spec.registry_version)
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


@dataclass
class LoadedModel:
    spec: ModelSpec
    version: str
    model: object  # model.MossAudioModel
    processor: object  # model.MossAudioProcessor


class ModelCache:
    """Models loaded once per process and kept (workers serve many jobs per model).

    When an alias moves, new jobs load the new version while jobs in flight keep the one they
    started with; beyond `capacity` models the least recently used is dropped from the cache
    (a job still running on it keeps its own reference).
    """

    def __init__(self, device: str = "cpu", capacity: int = 2) -> None:
        self.device = device
        self.capacity = capacity
        self._loaded: dict[Path, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec) -> LoadedModel:
        with self._lock:
            key = spec.path.resolve()
            if key in self._loaded:
                self._loaded[key] = self._loaded.pop(key)  # most recently used last
            else:
                while len(self._loaded) >= self.capacity:
                    self._loaded.pop(next(iter(self._loaded)))
                from model import MossAudioModel, MossAudioProcessor

                model = MossAudioModel.from_pretrained(spec.path).to(self.device).eval()
                processor = MossAudioProcessor.from_pretrained(spec.path)
                self._loaded[key] = LoadedModel(spec, model_version(spec.path), model, processor)
            return self._loaded[key]
