"""`mossctl datasets validate MANIFEST`: check a dataset manifest (docs/datasets.md) before
training on it. Every line is checked; each problem is printed with its line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..core.datasets import check_manifest
from .common import err, fail, out

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
    splits = {}
    for clip in checked.clips:
        splits[clip["split"]] = splits.get(clip["split"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(splits.items())) or "none"
    out.print(f"{len(checked.clips)} of {checked.lines} clips are valid ({summary})")
    if checked.problems:
        raise typer.Exit(1)
