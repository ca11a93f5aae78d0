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
from typing import NoReturn

from services.core.progress import emit

RELEASED_TRAINING = "speech, environmental sound and music (the released MOSS-Audio checkpoint)"
SKIPPED = (".gitattributes",)  # hub bookkeeping, not part of the checkpoint
Progress = Callable[..., None]  # progress(message, done=None, total=None)


class ImportFailed(Exception):
    """The source cannot be imported; the message says what to fix."""


class ImportRefused(ImportFailed):
    """How the `import` step ends when its source cannot be imported: `code: message`, the
    last line of the step's output (the pipeline worker makes it the run's error message)."""


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
    return download_hub(source, revision)


def download_hub(source: str, revision: str | None = None) -> tuple[Path, str | None]:
    """A hub repo downloaded (resumably) to the hub cache, and the commit it resolved to.
    Never a local path: the API's imports name hub repos only."""
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


def validate(directory: Path, label: str | None = None) -> None:
    from model.hub import check_layout

    problems = check_layout(directory)
    if not problems:
        problems = check_layout(directory, expected_tensor_names(directory))
    if problems:
        where = label or directory
        raise ImportFailed(f"{where} is not a usable checkpoint: " + "; ".join(problems))


def file_digests(
    directory: Path, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, str]:
    digests = {}
    paths = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if not (relative.startswith(".") or relative in SKIPPED):
            paths.append((relative, path))
    for done, (relative, path) in enumerate(paths, 1):
        if progress:
            progress(relative, done, len(paths))
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
    progress: Progress | None = None,
    wait_s: float = 0.0,
    directory: Path | None = None,
) -> Imported:
    """Download (when a hub id), validate, upload once, register with lineage, maybe alias.

    `wait_s`: how long to wait for the registry to answer first (an install starts MLflow and
    this Job together; nothing is downloaded before the registry is there). `directory`: the
    checkpoint is already here (fetched from the object store); `source` is then only what
    the lineage records. `progress(message, done, total)`: each message starts with its phase
    (download, layout check, register); done/total count files where there is a count.
    """
    import mlflow

    from services.core.registry import ALIASES, CHECKPOINT_ARTIFACT, Registry

    if alias is not None and alias not in ALIASES:
        raise ImportFailed(f"alias must be one of {', '.join(ALIASES)}")
    say = progress or (lambda _message, _done=None, _total=None: None)
    registry = Registry(tracking_uri)
    _wait_for(registry, wait_s, say)
    resolved, label = revision, source
    if directory is None:
        say(f"download: fetching {source}")
        directory, resolved = fetch_source(source, revision)
        label = str(directory)
    say(f"layout check: {source}")
    validate(directory, label)
    files = file_digests(directory, lambda f, i, n: say(f"layout check: sha256 {f}", i, n))
    checkpoint_sha256 = hashlib.sha256(
        "".join(f"{digest}  {path}\n" for path, digest in files.items()).encode()
    ).hexdigest()
    known = registry.version_with_tag(name, "checkpoint_sha256", checkpoint_sha256)
    if known is not None:
        say(f"register: {name} v{known} already holds these files")
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
        for done, relative in enumerate(files, 1):
            say(f"register: uploading {relative}", done, len(files))
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


def _wait_for(registry, wait_s: float, say: Progress) -> None:
    import time

    from services.core.logs import redact_url

    deadline = time.monotonic() + wait_s
    while True:
        try:
            registry.client.search_experiments(max_results=1)
            return
        except Exception as exc:
            if time.monotonic() >= deadline:  # no credentials of the URI in the message
                raise ImportFailed(
                    redact_url(f"the registry at {registry.tracking_uri} does not answer: {exc}")
                ) from exc
            say("register: waiting for the registry")
            time.sleep(3)


# --- the `import` pipeline's step (POST /v1/registry/models/import) ----------------------------


def run_import(
    name: str,
    *,
    hub_id: str = "",
    key: str = "",
    revision: str = "",
    alias: str = "",
    trained_for: str = "",
    actor: str = "",
    uploaded: bool = False,
) -> Imported:
    """One import the API queued, from a hub repo or from an object-store key (an archive, or
    a folder of checkpoint files); progress as MOSS_PROGRESS lines (services.core.progress).

    `uploaded`: the key is the archive the gateway stored for this run; the step deletes it
    when it ends, however it ends (a run killed before that leaves it to the sweeper:
    services.core.imports.sweep_uploads). An unusable source ends the step with a progress line
    whose `error` holds its code (`archive_unsafe_member`, `archive_too_large`,
    `archive_too_many_files`, `archive_invalid`, `import_failed`); any other failure (the
    registry or the object store) ends it as `import_error`. A tenant reads both messages (the
    run's error, its log), so the userinfo of any URL in them is redacted first."""
    from services.core.archive import ArchiveRefused
    from services.core.settings import get_settings
    from services.core.storage import make_storage

    settings = get_settings()
    if not settings.mlflow_uri:
        raise ImportFailed("MOSS_MLFLOW_URI is not set: the pipeline worker needs the registry")
    say = _progress_lines(emit)
    storage = None
    try:
        storage = make_storage(settings) if key else None
        with tempfile.TemporaryDirectory(prefix="moss-import-") as work:
            if key:
                directory = fetch_object(storage, key, Path(work), settings.import_max_bytes, say)
                source, resolved = (f"upload:{key}" if uploaded else f"object:{key}"), None
            else:
                say(f"download: {hub_id} from the hub")
                directory, resolved = download_hub(hub_id, revision or None)
                source = hub_id
            imported = import_checkpoint(
                source, name, tracking_uri=settings.mlflow_uri, alias=alias or None,
                actor=actor, revision=resolved, trained_for=trained_for or None,
                progress=say, directory=directory,
            )  # fmt: skip
    except (ImportFailed, ArchiveRefused) as exc:
        _refuse(getattr(exc, "code", "import_failed"), exc)
    except Exception as exc:  # the registry or the store failing: their messages quote URLs
        _refuse("import_error", exc)
    finally:
        if uploaded and storage is not None:
            _delete_upload(storage, key)
    emit(
        pipeline_step="import",
        message=f"registered {imported.name} v{imported.version}"
        + (" (these files were registered before)" if imported.existing else ""),
        model=imported.name,
        version=imported.version,
        mlflow_run_id=imported.run_id,
    )
    return imported


def _refuse(code: str, exc: Exception) -> NoReturn:
    """End the step: the error as a progress line, then ImportRefused (its last output line,
    the run's error); neither holds a URL's credentials, nor the original traceback."""
    from services.core.logs import redact_url

    message = redact_url(str(exc))
    emit(pipeline_step="import", message=f"import failed: {message}",
         error={"code": code, "message": message})  # fmt: skip
    raise ImportRefused(f"{code}: {message}") from None


def _delete_upload(storage, key: str) -> None:
    """Drop the run's uploaded archive; a store that fails here leaves it to the sweeper
    rather than hiding how the import ended."""
    try:
        storage.delete(key)
    except Exception as exc:
        emit(pipeline_step="import", message=f"could not delete the upload {key}: "
             f"{type(exc).__name__}; the sweeper will")  # fmt: skip


def _progress_lines(emit) -> Progress:
    """progress(message, done, total) as MOSS_PROGRESS lines; byte counts at most every 1%."""
    last: dict[str, int] = {}

    def say(message: str, done: int | None = None, total: int | None = None) -> None:
        if done is not None and total and message.startswith("download"):
            if done < total and done - last.get(message, -total) < total // 100:
                return
            last[message] = done
        emit(pipeline_step="import", message=message, step=done, total_steps=total)

    return say


def fetch_object(storage, key: str, work: Path, max_bytes: int, say: Progress) -> Path:
    """The checkpoint at `key` in a directory under `work`: an archive object is downloaded
    and extracted safely (services.core.archive), a folder (`key/`) downloaded file by file;
    either way within `max_bytes` and the archive module's file cap."""
    from services.core.archive import ArchiveRefused, extract

    files = work / "files"
    files.mkdir()
    if not key.endswith("/") and storage.exists(key):
        archive = work / "archive"
        storage.download(key, archive, lambda done, total: say(f"download: {key}", done, total))
        if archive.stat().st_size > max_bytes:
            raise ArchiveRefused("archive_too_large", f"{key} is over MOSS_IMPORT_MAX_BYTES")
        say("layout check: extracting the archive")
        root = extract(archive, files, max_bytes=max_bytes)
        archive.unlink()
        return root
    return _fetch_folder(storage, key.rstrip("/") + "/", files, max_bytes, say)


def _fetch_folder(storage, folder: str, files: Path, max_bytes: int, say: Progress) -> Path:
    """A folder's objects into `files`, treated like an archive's members: keys come from
    whatever client wrote the bucket, so each relative part goes through the archive's path
    check (`..`, absolute, NUL, backslash refuse the import), and the sizes the listing gives
    are checked against `max_bytes` before anything is downloaded (and again as it streams, in
    case an object grew since)."""
    from services.core.archive import MAX_FILES, ArchiveRefused, member_path

    sizes = storage.list_sizes(folder)
    if not sizes:
        raise ImportFailed(f"no object {folder.rstrip('/')} in the object store")
    if len(sizes) > MAX_FILES:
        raise ImportFailed(f"{folder} holds more than {MAX_FILES} files")
    if sum(sizes.values()) > max_bytes:
        raise ImportFailed(f"{folder} holds more than MOSS_IMPORT_MAX_BYTES ({max_bytes} bytes)")
    targets = []
    for item in sizes:
        try:
            relative = member_path(item.removeprefix(folder))
        except ArchiveRefused as exc:
            raise ArchiveRefused(exc.code, f"object {item!r} under {folder}: {exc}") from None
        if relative is not None:
            targets.append((item, files.joinpath(*relative.parts)))
    written = 0

    def cap(done: int, _total: int) -> None:
        if written + done > max_bytes:
            raise ImportFailed(
                f"{folder} holds more than MOSS_IMPORT_MAX_BYTES ({max_bytes} bytes)"
            )

    for done, (item, target) in enumerate(targets, 1):
        say(f"download: {item}", done, len(targets))
        target.parent.mkdir(parents=True, exist_ok=True)
        written += storage.download(item, target, cap)
    return files
