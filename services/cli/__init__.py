"""`mossctl`: the platform's command line, one module per command group.

    mossctl infer clip.mp3 --model /models/MOSS-Audio-4B-Instruct --prompt "Transcribe the audio."
    mossctl infer clip.wav --preset tiny          # random weights: a smoke run, no download
    mossctl demo                                  # generate a clip and run the tiny model on it
    mossctl up                                    # the whole platform locally; Ctrl-C stops it
    mossctl submit clip.wav --task transcribe     # a job through the API, with a progress bar
    mossctl jobs list | get ID | cancel ID;  mossctl keys create TENANT | list | revoke ID
    mossctl models import | list | promote | rollback;  mossctl pipeline compile | run | submit
    mossctl gateway | worker QUEUE | migrate | predictor ROLE;  mossctl deploy render
    mossctl datasets validate MANIFEST            # the dataset format (docs/datasets.md)

Errors print one line saying what to fix and exit with a non-zero code (cli.common).
"""

from __future__ import annotations

import typer

from . import annotate, datasets, deploy, infer, jobs, keys, models, pipeline, platform, serve
from .train import app as train_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="MOSS-Audio platform: run it locally, submit jobs, manage keys, run local inference.",
)
app.add_typer(infer.app)  # infer, demo
app.add_typer(platform.app)  # up
app.add_typer(jobs.app)  # submit, jobs ...
app.add_typer(keys.app, name="keys")
app.add_typer(models.app, name="models")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(serve.app)  # gateway, worker, worker-ping, migrate, predictor
app.add_typer(deploy.app, name="deploy")
app.add_typer(datasets.app, name="datasets")
app.add_typer(annotate.app)  # annotate
app.add_typer(train_app)  # train (torchrun + FSDP2 across processes)


def main() -> None:  # pragma: no cover - console entry point
    app()
