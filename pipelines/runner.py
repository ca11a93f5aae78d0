"""Compile, run locally (kfp.local, no Docker) and submit to a Kubeflow cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.core.queue import CPU_ONLY_PIPELINES, PIPELINE_NAMES

from .kfp_pipelines import pipeline

COMPILED_DIR = Path(__file__).parent / "compiled"
RUN_ID_PARAM = "moss_run_id"  # the pipeline parameter naming our run (pipelines.tracking)


def compiled_files() -> dict[str, tuple[str, bool]]:
    """file name -> (pipeline, gpu) for every compiled file we ship."""
    return {
        f"{name}{'-gpu' if gpu else ''}.yaml": (name, gpu)
        for name in PIPELINE_NAMES
        for gpu in ((False,) if name in CPU_ONLY_PIPELINES else (False, True))
    }


def compile_all(out_dir: Path = COMPILED_DIR) -> list[Path]:
    from kfp import compiler

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (name, gpu) in compiled_files().items():
        path = out_dir / filename
        compiler.Compiler().compile(pipeline(name, gpu), str(path))
        written.append(path)
    return written


def _parameters(name: str) -> dict[str, Any]:
    import inspect

    return dict(inspect.signature(pipeline(name).pipeline_func).parameters)


def coerce(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Convert values to the types the pipeline declares (`--param version=3` is a string).
    `moss_run_id` is the platform's to set (submit), never a caller's."""
    signature = _parameters(name)
    signature.pop(RUN_ID_PARAM, None)
    unknown = set(params) - set(signature)
    if unknown:
        raise ValueError(
            f"{name} has no parameter {', '.join(sorted(unknown))}; it takes {', '.join(signature)}"
        )
    out = {}
    for key, value in params.items():
        kind = signature[key].annotation
        kind = {"str": str, "int": int, "float": float, "bool": bool}.get(kind, kind)
        if kind is bool and isinstance(value, str):
            value = value.lower() in ("1", "true", "yes")
        if kind is str and isinstance(value, dict | list):  # e.g. kind_weights: JSON text
            value = json.dumps(value)
        out[key] = kind(value) if kind in (str, int, float, bool) else value
    return out


def run_local(name: str, params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Run a pipeline on this machine with kfp.local's SubprocessRunner; returns its outputs."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    task = pipeline(name, gpu=False, local=True)(**coerce(name, params))
    return dict(task.outputs) if getattr(task, "outputs", None) else {}


def submit(
    name: str, params: dict[str, Any], host: str, gpu: bool = False, run_id: str = ""
) -> str:
    """Submit to a Kubeflow Pipelines endpoint; returns the KFP run id.

    `run_id` (our pipeline run's id) goes to the pipelines that train as `moss_run_id`: the
    train step tags its MLflow run with it, so that the run's record can be completed from
    MLflow (pipelines.tracking)."""
    import kfp

    arguments = coerce(name, params)
    if run_id and RUN_ID_PARAM in _parameters(name):
        arguments[RUN_ID_PARAM] = run_id
    client = kfp.Client(host=host)
    run = client.create_run_from_pipeline_func(
        pipeline(name, gpu), arguments=arguments, run_name=f"moss-audio-{name}"
    )
    return run.run_id


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.runner NAME PARAMS_JSON ROOT`: one local run in its own process.

    The pipeline worker starts runs this way, so a run that crashes or leaks takes only its own
    process down; its output goes to the run's log.
    """
    import sys

    name, params, root = argv if argv is not None else sys.argv[1:]
    outputs = run_local(name, json.loads(params), Path(root))
    print(json.dumps({"outputs": outputs}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
