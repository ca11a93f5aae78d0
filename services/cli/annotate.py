"""`mossctl annotate DIR_OR_MANIFEST`: a folder of audio (or a manifest naming audio) in, a
unified-caption manifest and an SFT manifest out (docs/annotation.md).

The audio goes to a dataset of the caller's tenant (each file once, by sha256), an annotation
job runs on the annotate worker with a progress bar, and both outputs, which the platform keeps
as the datasets NAME-captions and NAME-sft, are written to --out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..core.datasets import annotation_item
from ..core.jobstate import Status
from ..core.labels import check_label_map
from .common import client, err, fail, guard, out
from .datasets import send_audio
from .jobs import follow_job
from .render import show_annotation

app = typer.Typer()
OUT_HELP = "Where to write the two manifests (default: ./NAME-annotations)."
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".aiff",
                  ".aif", ".caf", ".mka"}  # fmt: skip


def _items(source: Path) -> tuple[Path, list[dict]]:
    """(the folder audio paths are relative to, [{id, audio (relative path), split?, the
    labels of a manifest line}])."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        return source, [{"id": p.relative_to(source).as_posix(),
                         "audio": p.relative_to(source).as_posix()} for p in files]  # fmt: skip
    if not source.is_file():
        fail(f"no such folder or manifest: {source}")
    items = []
    for number, text in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            items.append(annotation_item(line, number, str(line["audio"])))  # labels kept
        except (ValueError, KeyError, TypeError, AttributeError):
            fail(f"{source.name} line {number}: not a JSON object with an `audio` path")
    return source.parent, items


def _label_map(path: Path) -> dict[str, str]:
    try:
        return check_label_map(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        fail(f"--label-map {path}: {exc.strerror or exc}")
    except ValueError as exc:  # not JSON, or not a map of labels
        fail(f"--label-map {path}: {exc}")


@app.command("annotate")
def annotate(
    source: Annotated[Path, typer.Argument(help="A folder of audio, or a JSONL manifest.")],
    name: Annotated[str, typer.Option("--name", "-n", help="The dataset's name.")] = "",
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write the two manifests (default: ./NAME-annotations)."
        ),
    ] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Signed webhook when it ends.")] = None,
    label_map: Annotated[
        Path | None,
        typer.Option(
            "--label-map",
            help='JSON {"low tone": "low beep", ...}: the words for the sounds the engine hears '
            "(default: the served model's training labels).",
        ),
    ] = None,
) -> None:
    """Annotate audio: segments, branch records, one unified caption per clip, SFT pairs. The
    labels a manifest's lines already have are kept; only the missing ones are added."""
    mapping = _label_map(label_map) if label_map is not None else None
    root, items = _items(source)
    if not items:
        fail(f"no audio in {source} ({', '.join(sorted(AUDIO_SUFFIXES))})")
    name = name or (source if source.is_dir() else source.parent).resolve().name.lower()
    paths = {i["audio"]: root / i["audio"] for i in items}
    absent = [a for a, p in paths.items() if not p.is_file()]
    if absent:
        fail(f"{len(absent)} audio file(s) not found, e.g. {absent[0]}")
    api = client()
    digests, sent = send_audio(api, name, paths)
    err.print(f"{sent} audio file(s) sent to dataset {name}, {len(paths) - sent} already there")
    job = guard(api.annotate, name, [{**i, "audio": f"audio/{digests[i['audio']]}"}
                                     for i in items], webhook_url, mapping)  # fmt: skip
    job = follow_job(api, job)
    if job["status"] != Status.SUCCEEDED:
        error = job.get("error") or {"code": job["status"], "message": "the job did not finish"}
        fail(f"annotation job {job['id']}: {error['message']} [{error['code']}]", 1)
    result = job["result"]
    target = out_dir or Path(f"{name}-annotations")
    target.mkdir(parents=True, exist_ok=True)
    for kind in ("captions", "sft"):
        (target / f"{kind}.jsonl").write_bytes(guard(api.dataset_manifest,
                                                     result[kind]["dataset"]))  # fmt: skip
    show_annotation(result)  # the counts, the two datasets, the failed items (as `jobs get`)
    out.print(
        f"{target / 'captions.jsonl'}: unified captions (dataset {result['captions']['dataset']})\n"
        f"{target / 'sft.jsonl'}: instruction pairs (dataset {result['sft']['dataset']}); train: "
        f"mossctl pipeline run sft --local --param manifest={result['sft']['manifest']}",
        highlight=False,
    )
    if result["failed"]:
        raise typer.Exit(1)
