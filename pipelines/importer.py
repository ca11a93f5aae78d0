"""Import a released (or any hub-layout) checkpoint into the registry, without training it.

    import_checkpoint("OpenMOSS-Team/MOSS-Audio-4B-Instruct", "moss-audio-4b-instruct",
                      alias="production", actor="ops")

1. The source is a local directory, or a hub repo id downloaded with `huggingface_hub`
   (resumable; HF_TOKEN and HF_ENDPOINT are read by huggingface_hub itself; HF_HUB_OFFLINE=1
   with a pre-filled HF_HUB_CACHE imports from that cache).
2. The layout and the tensor names are checked against the config (`model.hub.check_layout`,
   the model built on the meta device); every problem is reported at once, before any upload.
3. The files go to the registry's artifact store once, as an MLflow run's `checkpoint` artifact
   (large files in parts: multipart through MLflow's artifact proxy, or boto3's multipart
   upload when MLflow writes to S3 directly); nothing else keeps a copy.
4. A version is registered with lineage: source, revision, the SHA-256 of every file (also as
   the run's `import-manifest.json`), `metrics_status=imported` (no evaluation was run here, so
   the gate has nothing to compare) and what the model was trained for.
5. With `alias`, the alias moves to it as an explicit, recorded promotion by `actor`: the gate
   cannot judge an unevaluated version, so it never moves one on its own.

Importing the same files again (same SHA-256 over every file) returns the version already
registered instead of uploading a second copy, so a first-install Job can safely run twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RELEASED_TRAINING = "speech, environmental sound and music (the released MOSS-Audio checkpoint)"
SKIPPED = (".gitattributes",)  # hub bookkeeping, not part of the checkpoint


class ImportFailed(Exception):
    """The source cannot be imported; the message says what to fix."""


@dataclass(frozen=True)
class Imported:
    name: str
    version: str
    run_id: str
    source: str
    revision: str | None
    alias: str | None
    files: dict[str, str]  # relative path -> sha256
    existing: bool = False  # these exact files were registered before: nothing was uploaded


def fetch_source(source: str, revision: str | None = None) -> tuple[Path, str | None]:
    """A local directory as is, or a hub repo downloaded (resumably) to the hub cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path, revision
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ImportFailed(
            f"{source} is neither a checkpoint directory nor a hub repo id (org/name)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = snapshot_download(repo_id=source, revision=revision)
    except LocalEntryNotFoundError as exc:
        raise ImportFailed(
            f"{source} is not in the hub cache and the hub cannot be reached ({exc})"
        ) from exc
    except HfHubHTTPError as exc:
        raise ImportFailed(f"could not download {source} from the hub: {exc}") from exc
    return Path(local), Path(local).name  # snapshots/<commit>: the resolved revision


def expected_tensor_names(directory: Path) -> set[str]:
    import torch

    from model import MossAudioConfig, MossAudioModel

    config = MossAudioConfig.from_pretrained(directory)
    with torch.device("meta"):
        return set(MossAudioModel(config).state_dict())


def validate(directory: Path) -> None:
    from model.hub import check_layout

    problems = check_layout(directory)
    if not problems:
        problems = check_layout(directory, expected_tensor_names(directory))
    if problems:
        raise ImportFailed(f"{directory} is not a usable checkpoint: " + "; ".join(problems))


def file_digests(directory: Path, progress: Callable[[str], None] | None = None) -> dict[str, str]:
    digests = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative.startswith(".") or relative in SKIPPED:
            continue
        if progress:
            progress(relative)
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(16 * 1024 * 1024):
                digest.update(block)
        digests[relative] = digest.hexdigest()
    return digests


def import_checkpoint(
    source: str,
    name: str,
    *,
    tracking_uri: str,
    alias: str | None = None,
    actor: str = "",
    revision: str | None = None,
    trained_for: str | None = None,
    progress: Callable[[str], None] | None = None,
    wait_s: float = 0.0,
) -> Imported:
    """Download (when a hub id), validate, upload once, register with lineage, maybe alias.

    `wait_s`: how long to wait for the registry to answer first (an install starts MLflow and
    this Job together; nothing is downloaded before the registry is there).
    """
    import mlflow

    from services.core.registry import ALIASES, CHECKPOINT_ARTIFACT, Registry

    if alias is not None and alias not in ALIASES:
        raise ImportFailed(f"alias must be one of {', '.join(ALIASES)}")
    say = progress or (lambda _message: None)
    registry = Registry(tracking_uri)
    _wait_for(registry, wait_s, say)
    say(f"fetching {source}")
    directory, resolved = fetch_source(source, revision)
    say(f"checking the layout of {directory}")
    validate(directory)
    files = file_digests(directory, lambda f: say(f"sha256 {f}"))
    checkpoint_sha256 = hashlib.sha256(
        "".join(f"{digest}  {path}\n" for path, digest in files.items()).encode()
    ).hexdigest()
    known = registry.version_with_tag(name, "checkpoint_sha256", checkpoint_sha256)
    if known is not None:
        say(f"{name} v{known} already holds these files")
        if alias and registry.alias_holder(name, alias) != known:
            registry.promote(name, known, alias, actor or "import", force=True, reason="import")
        tags = registry.version_tags(name, known)
        return Imported(
            name, known, tags.get("run_id", ""), source, resolved, alias, files, existing=True
        )

    # Large files in parts through MLflow's artifact proxy (falls back to one PUT if the
    # server's store has no multipart API); MLflow on S3 directly uses boto3's multipart.
    os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("moss-audio-imports")
    described = trained_for or (
        RELEASED_TRAINING if "moss-audio" in source.lower() else f"imported from {source}"
    )
    with mlflow.start_run(run_name=f"import-{name}") as run:
        mlflow.set_tags(
            {
                "stage": "import",
                "source": source,
                "revision": resolved or "",
                "checkpoint_sha256": checkpoint_sha256,
                "trained_for": described,
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "import-manifest.json"
            manifest.write_text(json.dumps({"source": source, "files": files}, indent=2))
            mlflow.log_artifact(str(manifest))
        say(f"uploading {len(files)} files to the registry's artifact store")
        for relative in files:
            parent = Path(relative).parent.as_posix()
            target = CHECKPOINT_ARTIFACT if parent == "." else f"{CHECKPOINT_ARTIFACT}/{parent}"
            mlflow.log_artifact(str(directory / relative), target)

    version = registry.register_import(
        name,
        run.info.run_id,
        source=source,
        revision=resolved,
        checkpoint_sha256=checkpoint_sha256,
        trained_for=described,
    )
    if alias:
        registry.promote(name, version, alias, actor or "import", force=True, reason="import")
    return Imported(name, version, run.info.run_id, source, resolved, alias, files)


def _wait_for(registry, wait_s: float, say: Callable[[str], None]) -> None:
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            registry.client.search_experiments(max_results=1)
            return
        except Exception as exc:
            if time.monotonic() >= deadline:
                raise ImportFailed(
                    f"the registry at {registry.tracking_uri} does not answer: {exc}"
                ) from exc
            say("waiting for the registry")
            time.sleep(3)
