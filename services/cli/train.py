"""`mossctl train MANIFEST`: the trainer as a command, on one device or many.

    mossctl train data/manifest.jsonl --output runs/a --steps 200 --batch-size 16
    mossctl train data/manifest.jsonl --output runs/a --nproc-per-node 2   # torchrun + FSDP2
    mossctl train data/manifest.jsonl --output runs/b --resume runs/a       # at any world size
    mossctl train s3://bucket/m.jsonl --output s3://bucket/runs/a --nodes 2 --nproc-per-node 8 \\
        --trainjob                          # the Kubeflow Trainer TrainJob, as YAML, no cluster
    mossctl train --size 8b --decoder lora --nproc-per-node 8 --plan   # per-GPU memory plan

One process runs here; more run under torchrun (pipelines/distributed_run.py), gloo on CPU and
NCCL on CUDA. `--batch-size` is the global batch of an optimizer step, so the result does not
depend on the world size. Progress is a bar on a terminal and lines otherwise (what a
pipeline step or a TrainJob's log relays); `--json` ends stdout with one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .common import err, fail

app = typer.Typer()
PLAN_SEQ_LEN = 2048  # decoder positions per example the plan assumes (audio, prompt, answer)


@app.command()
def train(
    manifest: Annotated[
        str | None, typer.Argument(help="Dataset manifest: a file, a store key or s3:// URL.")
    ] = None,
    output: Annotated[
        str | None, typer.Option(help="Where the checkpoint goes (dir or s3://).")
    ] = None,
    size: Annotated[str, typer.Option(help="Preset: tiny, small, 4b, 8b.")] = "tiny",
    flavor: Annotated[str, typer.Option(help="instruct or thinking.")] = "instruct",
    base: Annotated[str, typer.Option(help="Start from this model (any model reference).")] = "",
    stage: Annotated[str, typer.Option(help="pretrain, sft or sft_thinking.")] = "sft",
    decoder: Annotated[str, typer.Option(help="full or lora.")] = "full",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Global batch per optimizer step.")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the weights and the data order.")] = 0,
    resume: Annotated[str, typer.Option(help="Continue the run checkpointed here.")] = "",
    nproc_per_node: Annotated[int, typer.Option(help="Processes per node (GPUs).")] = 1,
    nodes: Annotated[int, typer.Option(help="Nodes (Kubeflow Trainer sets PET_*).")] = 1,
    activation_checkpointing: Annotated[
        bool, typer.Option(help="Recompute each decoder layer in backward.")
    ] = False,
    freeze_encoder: Annotated[
        bool | None,
        typer.Option("--freeze-encoder/--train-encoder", help="Override the stage's rule."),
    ] = None,
    freeze_adapter: Annotated[
        bool, typer.Option(help="Freeze the adapter and the DeepStack mergers too.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="End with the result as JSON.")] = False,
    trainjob: Annotated[
        bool, typer.Option(help="Print the Kubeflow TrainJob for this run (YAML) instead.")
    ] = False,
    runtime: Annotated[str, typer.Option(help="The TrainJob's ClusterTrainingRuntime.")] = "",
    plan: Annotated[bool, typer.Option(help="Print the per-GPU memory plan instead.")] = False,
) -> None:
    """Train a MOSS-Audio model on a manifest (pretrain, SFT or Thinking SFT; full or LoRA)."""
    from pipelines.trainjob import TrainSpec, check_spec

    if plan:
        return _plan(size, decoder, nodes * nproc_per_node, batch_size, activation_checkpointing,
                     freeze_encoder is False, as_json)  # fmt: skip
    if manifest is None or output is None:
        fail("give MANIFEST and --output DIR (a folder or an s3:// URL)")
    spec = TrainSpec(
        manifest=manifest, output=output, size=size, flavor=flavor, base=base, stage=stage,
        decoder=decoder, steps=steps, batch_size=batch_size, lr=lr, seed=seed, resume=resume,
        nodes=nodes, nproc_per_node=nproc_per_node,
        activation_checkpointing=activation_checkpointing, freeze_encoder=freeze_encoder,
        freeze_adapter=freeze_adapter,
    )  # fmt: skip
    try:
        check_spec(spec)
    except ValueError as exc:
        fail(str(exc))
    if trainjob:
        return _trainjob(spec, runtime)
    if runtime:
        fail("--runtime is for --trainjob only")
    result = _run(spec)
    if as_json:
        typer.echo(json.dumps(result))
    elif result:
        losses = result["losses"]
        shown = f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, " if losses else ""
        speed = f"{result['samples_per_s']:.2f} samples/s"
        typer.echo(f"trained {result['steps']} steps at world size {result['world_size']} "
                   f"({shown}{speed}); wrote {result['output']}")  # fmt: skip


def _run(spec: Any) -> dict[str, Any]:
    """One process here, or a torchrun world; errors end the command with one line."""
    from pipelines.distributed import Dist
    from pipelines.distributed_run import RankFailed, launch, run

    bar = _Bar(spec.steps) if err.is_terminal else None
    try:
        with bar or contextlib.nullcontext():
            if spec.world_size == 1:
                return run(spec, Dist(), report=bar.step if bar else None)
            return launch(spec, on_line=bar.line if bar else None)
    except RankFailed as exc:
        fail(str(exc), 1)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    except Exception as exc:  # the run's own failure, in one line (the log above has more)
        fail(f"{type(exc).__name__}: {exc}", 1)


class _Bar:
    """The training steps as a rich progress bar on stderr (a terminal only); rank 0's other
    lines are printed above it, its progress lines move it."""

    def __init__(self, total: int) -> None:
        columns = (TextColumn("[bold]train"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[loss]}"),
                   TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
        self.progress = Progress(*columns, console=err, transient=False)
        self.task = self.progress.add_task("train", total=total, loss="")

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def step(self, step: int, metrics: dict[str, float]) -> None:
        self.progress.update(self.task, completed=step, loss=f"loss {metrics['loss']:.3f}")

    def line(self, text: str) -> None:
        from services.core.progress import parse

        fields = parse(text)
        if fields is None:
            if not text.startswith("step "):  # the bar says it already
                self.progress.console.print(text, markup=False, highlight=False)
        elif "step" in fields and "loss" in fields:
            self.step(int(fields["step"]), {"loss": float(fields["loss"])})


def _trainjob(spec: Any, runtime: str) -> None:
    from pipelines.trainjob import DEFAULT_RUNTIME, render_trainjob
    from services.core.settings import Settings

    name = f"moss-{spec.size}-{spec.stage.replace('_', '-')}-{secrets.token_hex(4)}"
    try:
        text = render_trainjob(spec, name=name, namespace="default",
                               image=Settings().pipeline_image,
                               runtime=runtime or DEFAULT_RUNTIME)  # fmt: skip
    except ValueError as exc:
        fail(str(exc))
    typer.echo(text, nl=False)


def _plan(size: str, decoder: str, world: int, batch_size: int, checkpointing: bool,
          train_encoder: bool, as_json: bool) -> None:  # fmt: skip
    from pipelines.memplan import breakdown
    from pipelines.memplan import plan as memory_plan

    if world < 1 or batch_size < world or batch_size % world:
        fail(f"--batch-size {batch_size} must be a multiple of the world size {world}")
    try:
        one = memory_plan(size, decoder, world, PLAN_SEQ_LEN, batch_size // world, checkpointing,
                          train_encoder=train_encoder)  # fmt: skip
    except (ValueError, KeyError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(one.as_dict()))
    else:
        typer.echo(breakdown(one))
