"""`mossctl datasets validate|upload|list|delete`: check a dataset manifest (docs/datasets.md),
send it and its audio to the platform's object store, and see what is there.

Every line is checked; each problem is printed with its line and field, and a bad line never
stops the others. Upload sends each clip once, named by its sha256 (a re-upload sends only what
changed), then the manifest, which the gateway checks again and commits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table

from ..core.datasets import Checked, check_manifest
from .common import client, err, fail, guard, out

app = typer.Typer(help="Dataset manifests: the format of docs/datasets.md.", no_args_is_help=True)


@app.command("validate")
def validate(
    manifest: Annotated[Path, typer.Argument(help="A JSONL manifest.")],
    check_audio: Annotated[
        bool, typer.Option(help="Check that each local audio path exists (beside the manifest).")
    ] = True,
    show: Annotated[int, typer.Option(help="Print at most this many problems.")] = 50,
    default_prompt: Annotated[
        str, typer.Option(help="The prompt of upstream-format lines that have no user text.")
    ] = "",
) -> None:
    """Check every line against the format; exit 1 when any line is bad."""
    checked = _check(manifest, check_audio, show, default_prompt)
    if checked.problems:
        raise typer.Exit(1)


def _check(manifest: Path, check_audio: bool, show: int, default_prompt: str) -> Checked:
    if not manifest.is_file():
        fail(f"no such manifest: {manifest}")
    lines = manifest.read_text(encoding="utf-8", errors="replace").splitlines()
    root = manifest.resolve().parent

    def exists(audio: str) -> bool:
        return audio.startswith("datasets/") or (root / audio).is_file()

    columns = (TextColumn("checking"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task("lines", total=len(lines))
        checked = check_manifest(
            lines,
            audio_exists=exists if check_audio else None,
            progress=lambda: progress.advance(bar),
            default_prompt=default_prompt,
        )
    for problem in checked.problems[:show]:
        err.print(f"[red]{manifest.name}[/] {problem}", markup=True, highlight=False)
    if len(checked.problems) > show:
        err.print(f"... and {len(checked.problems) - show} more problems")
    splits: dict[str, int] = {}
    for clip in checked.clips:
        splits[clip["split"]] = splits.get(clip["split"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(splits.items())) or "none"
    out.print(f"{len(checked.clips)} of {checked.lines} clips are valid ({summary})")
    return checked


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            hasher.update(chunk)
    return hasher.hexdigest()


def send_audio(api, name: str, paths: dict[str, Path]) -> tuple[dict[str, str], int]:
    """Hash each file, ask which digests the dataset lacks, send those (progress bars).

    Returns ({path as named: sha256}, how many files were sent)."""
    with Progress(TextColumn("hashing"), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True) as progress:  # fmt: skip
        bar = progress.add_task("audio", total=len(paths))
        digests = {}
        for audio, path in paths.items():
            digests[audio] = _digest(path)
            progress.advance(bar)
    missing = set(guard(api.missing_audio, name, sorted(set(digests.values()))))
    todo = {d: paths[a] for a, d in digests.items() if d in missing}
    columns = (TextColumn("uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task("audio", total=sum(p.stat().st_size for p in todo.values()))
        for digest, path in todo.items():
            guard(api.put_audio, name, digest, path)
            progress.advance(bar, path.stat().st_size)
    return digests, len(todo)


@app.command("upload")
def upload(
    manifest: Annotated[Path, typer.Argument(help="A JSONL manifest; audio paths relative to it.")],
    name: Annotated[str, typer.Option("--name", "-n", help="The dataset's name.")] = "",
    strict: Annotated[bool, typer.Option(help="Refuse the upload if any line is bad.")] = False,
    default_prompt: Annotated[
        str, typer.Option(help="The prompt of upstream-format lines that have no user text.")
    ] = "",
) -> None:
    """Send the audio (each clip once, by sha256) and the manifest; print the dataset's digest
    and the manifest key to train on."""
    name = name or manifest.resolve().parent.name.lower()
    checked = _check(manifest, True, 20, default_prompt)
    if not checked.clips or (strict and checked.problems):
        # Bad lines exit 1 in every datasets command (as `validate`); 2 is a command called wrong.
        fail("nothing uploaded: fix the lines above (or leave out --strict)", 1)
    root = manifest.resolve().parent
    paths = {c["audio"]: root / c["audio"] for c in checked.clips}
    api = client()
    digests, sent = send_audio(api, name, paths)
    lines = [json.dumps({**c, "audio": f"audio/{digests[c['audio']]}"}, ensure_ascii=False)
             for c in checked.clips]  # fmt: skip
    info = guard(api.put_manifest, name, ("\n".join(lines) + "\n").encode(), default_prompt,
                 strict)  # fmt: skip
    out.print(
        f"dataset {info['name']}: {info['clips']} clips ({', '.join(info['families'])}), "
        f"{sent} audio file(s) sent, {len(paths) - sent} already there\n"
        f"digest {info['digest']}\n"
        f"train on it: mossctl pipeline run sft --local --param manifest={info['manifest']}"
        " (or POST /v1/pipelines/sft/runs)",
        highlight=False,
    )
    if checked.problems:
        raise typer.Exit(1)


@app.command("list")
def list_datasets(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
) -> None:
    """The datasets of the calling key's tenant."""
    found = guard(client().datasets)
    if as_json:
        out.print_json(json.dumps(found))
        return
    # The name and the digest are what a person copies into the next command: never cut them
    # (a narrow or non-terminal output, 80 columns, squeezes the other columns instead).
    table = Table("clips", "splits", "families")
    table.columns.insert(0, Column("name", no_wrap=True))
    table.columns.append(Column("digest", no_wrap=True, min_width=12))
    table.columns.append(Column("created"))
    for d in found:
        splits = ", ".join(f"{n} {s}" for s, n in d["splits"].items())
        table.add_row(d["name"], str(d["clips"]), splits, ", ".join(d["families"]),
                      d["digest"][:12], d["created_at"][:19])  # fmt: skip
    out.print(table)


@app.command("delete")
def delete(name: Annotated[str, typer.Argument(help="The dataset's name.")]) -> None:
    """Remove a dataset and its audio."""
    guard(client().delete_dataset, name)
    out.print(f"dataset {name} deleted")
