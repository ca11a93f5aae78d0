"""What a `mossctl train` run tells the world: rank 0's progress lines and its MLflow run.

Only rank 0 logs. Its MLflow run has what the pipelines' train step logs (the lineage tags
and recipe, train/loss, lr and grad_norm every ten steps, the last loss, the steps done, the
checkpoint artifact in the released layout) plus the world size, samples/s, tokens/s and the
peak memory of every rank. The run id is written to the launcher's run folder as soon as the
run exists, so a run whose ranks died without ending it (killed, out of memory) is still set
FAILED by the launcher (mark_failed), and a rank that fails with an exception ends it FAILED
itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from services.core import progress
from services.core.settings import Settings

from .distributed import Dist
from .train import StepReport, TrainConfig, TrainResult
from .trainjob import TrainSpec

MLFLOW_FILE = "mlflow_run_id"


class Tracking:
    """Rank 0's MLflow run (when MOSS_MLFLOW_URI is set) and progress; a no-op on other ranks."""

    def __init__(self, spec: TrainSpec, config: TrainConfig, world: Dist, run_dir: Path | None,
                 report: Any = None) -> None:  # fmt: skip
        self.spec, self.config, self.world, self.run_dir = spec, config, world, run_dir
        self.uri = Settings().mlflow_uri if world.main else None
        self.report = report or (
            StepReport(config.steps, config.max_seconds) if world.main else None
        )
        self.run_id: str | None = None

    def __enter__(self) -> Tracking:
        if not self.uri:
            return self
        import mlflow

        from .tracking import RUN_TAG

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(f"moss-audio-{self.spec.size}-{self.spec.flavor}")
        pipeline_run = os.environ.get("MOSS_PIPELINE_RUN_ID", "")
        run = mlflow.start_run(
            run_name=f"{self.spec.stage}-{self.spec.size}-{self.spec.flavor}",
            tags={RUN_TAG: pipeline_run} if pipeline_run else None,
        )
        self.run_id = run.info.run_id
        if self.run_dir is not None:
            (self.run_dir / MLFLOW_FILE).write_text(self.run_id)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.run_id:
            import mlflow

            mlflow.end_run("FAILED" if exc_type is not None else "FINISHED")

    def inputs(self, examples: Any, clips: list[dict], digest: str, parent: str | None) -> None:
        if not self.world.main:
            return
        spec = self.spec
        print(f"training on {len(examples)} examples with {self.world.world_size} process(es): "
              f"{examples.kind_counts()}", flush=True)  # fmt: skip
        progress.emit(pipeline_step="train", mlflow_run_id=self.run_id, total_steps=spec.steps,
                      message=f"training on {len(examples)} examples, world size "
                      f"{self.world.world_size}")  # fmt: skip
        if not self.run_id:
            return
        import mlflow

        from .components import _log_inputs
        from .data import describe_dataset

        trained_for = describe_dataset(clips, spec.manifest)
        base = spec.base or f"preset:{spec.size}"
        _log_inputs(self.config, examples, spec.stage, spec.size, spec.flavor, spec.manifest,
                    digest, parent, base, trained_for, "")  # fmt: skip
        mlflow.log_params({
            "world_size": self.world.world_size, "nodes": spec.nodes,
            "nproc_per_node": spec.nproc_per_node, "output": spec.output,
            "resumed_from": spec.resume or "none",
        })  # fmt: skip

    def step(self, step: int, metrics: dict[str, float]) -> None:
        if self.run_id and (step % 10 == 0 or step == 1):
            import mlflow

            mlflow.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step=step)
        if self.report is not None:
            self.report(step, metrics)

    def finish(self, result: TrainResult, output: Path, summary: dict[str, Any]) -> None:
        if isinstance(self.report, StepReport):
            self.report.finish(result.steps, result.final_loss)
        if not self.run_id:
            return
        import mlflow

        from services.core.registry import CHECKPOINT_ARTIFACT

        if result.losses and result.steps % 10:  # the last step's loss (a run record reads it)
            mlflow.log_metric("train/loss", result.final_loss, step=result.steps)
        metrics = {
            "train/steps_done": result.steps,
            "train/samples_per_s": summary["samples_per_s"],
            "train/tokens_per_s": summary["tokens_per_s"],
            "train/world_size": result.world_size,
        }
        for rank, peak in enumerate(result.peak_memory):
            metrics[f"train/peak_memory_gib/rank_{rank}"] = peak / 1024**3
        mlflow.log_metrics(metrics)
        for path in sorted(output.iterdir()):  # the release layout (resume/ stays out of it)
            if path.is_file():
                mlflow.log_artifact(str(path), CHECKPOINT_ARTIFACT)


def mark_failed(run_dir: Path) -> None:
    """The run's MLflow run FAILED, if rank 0 started one that is still running."""
    path = run_dir / MLFLOW_FILE
    uri = Settings().mlflow_uri
    if not uri or not path.is_file():
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run_id = path.read_text().strip()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED")
    except Exception as exc:  # the tracking server away: say so, the run's failure stands
        print(f"could not mark MLflow run {run_id} FAILED: {exc}", flush=True)
