"""One `mossctl train` run, in one process or in each process of a torchrun world.

    mossctl train MANIFEST --output DIR --nproc-per-node 2
      -> launch(): python -m torch.distributed.run --standalone --nproc-per-node 2
                   -m pipelines.distributed_run RUN_DIR        (RUN_DIR/spec.json: the flags)
         -> every rank: rank_main() -> run(): the base model, the examples, FSDP2 training
            (pipelines/train.py), the release layout and resume shards (pipelines/dcp.py);
            rank 0 alone prints progress, logs to MLflow and writes RUN_DIR/result.json
      <- launch() returns rank 0's result, or raises RankFailed with the first rank's error

With one process (and one node) the CLI calls run() itself, without torchrun. On several nodes
(a Kubeflow TrainJob) each node's pod runs the same command; the node rank and the rendezvous
address come from the PET_* variables the torch-distributed runtime injects (or MASTER_ADDR,
MASTER_PORT and NODE_RANK).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from model import MossAudioModel, MossAudioProcessor, preset_config
from services.core.labels import read_event_labels, training_event_labels, write_event_labels
from services.core.settings import Settings

from .data import read_manifest
from .dcp import RESUME_DIR, SHARD_BYTES, STATE_FILE, has_resume_state
from .distributed import Dist, close, init
from .distributed_io import fetch_tree, is_url, manifest_source, publish_tree
from .distributed_track import Tracking, mark_failed
from .train import Examples, TrainConfig, TrainResult, train
from .trainjob import TrainSpec, check_spec

SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"
ERRORS_DIR = "errors"  # one record per failed rank: the launcher reports the first


@dataclass(frozen=True)
class Extras:
    """Knobs of the Python API that are not `mossctl train` flags."""

    stop_after: int = 0  # end this run after that step, with a checkpoint (a leg of a long run)
    micro_batch: int = 0  # examples per forward on one rank (0: the rank's whole slice)
    shard_bytes: int = SHARD_BYTES  # release safetensors shard size


class RankFailed(RuntimeError):
    """A rank of a torchrun world failed: the first failure's rank and message."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- one rank -------------------------------------------------------------------------------


def train_config(spec: TrainSpec, fresh: bool, extras: Extras) -> TrainConfig:
    """The trainer's recipe for the flags. A fresh preset trains its encoder (there is nothing
    to keep frozen) unless --freeze-encoder says otherwise, as the pipelines' train step does."""
    thinking = spec.flavor == "thinking" and spec.stage.startswith("sft")
    train_encoder = None if spec.freeze_encoder is None else not spec.freeze_encoder
    if fresh and train_encoder is None:
        train_encoder = True
    return TrainConfig(
        stage="sft_thinking" if thinking else spec.stage,
        steps=spec.steps,
        batch_size=spec.batch_size,
        micro_batch=extras.micro_batch,
        lr=spec.lr,
        seed=spec.seed,
        decoder=spec.decoder,
        train_encoder=train_encoder,
        train_adapter=not spec.freeze_adapter,
        activation_checkpointing=spec.activation_checkpointing,
    )


def load_base(spec: TrainSpec, world: Dist) -> tuple[MossAudioModel, str | None, list]:
    """The model to start from: a fresh preset (seeded: every rank builds the same weights) or
    `--base` (a checkpoint directory, a hub id, an s3:// folder, a platform or registry name),
    with its parent reference and the event labels it knows. One process per node fetches."""
    torch.manual_seed(spec.seed)
    if not spec.base:
        return MossAudioModel(preset_config(spec.size)), None, []
    if world.local_rank == 0:
        path, parent = _fetch_base(spec.base)
    world.barrier()
    if world.local_rank != 0:
        path, parent = _fetch_base(spec.base)  # in the node's cache by now
    model = MossAudioModel.from_pretrained(path)
    return model, parent, read_event_labels(path) or []


def _fetch_base(base: str) -> tuple[Path, str]:
    settings = Settings()
    if is_url(base):  # one copy per node, named by the URL
        digest = hashlib.sha256(base.encode()).hexdigest()[:16]
        target = Path(tempfile.gettempdir()) / f"moss-base-{digest}"
        if not (target / "config.json").is_file():
            fetch_tree(base.rstrip("/"), target, settings)
        return target, base
    if Path(base).expanduser().is_dir():
        return Path(base).expanduser(), str(Path(base).expanduser().resolve())
    from services.core.modelref import ModelNotFound, parse, resolve

    try:
        spec = resolve(parse(base), settings)
    except ValueError:  # not a platform name: a hub repo id (org/name)
        from .importer import fetch_source

        path, _revision = fetch_source(base)
        return path, base
    except ModelNotFound as exc:
        raise ValueError(f"--base {base}: {exc}") from exc
    version = spec.registry_version
    return spec.path, f"models:/{spec.name}/{version}" if version else str(spec.path)


def read_examples(spec: TrainSpec, config: TrainConfig, processor: MossAudioProcessor):
    """(clips, manifest digest, training examples) of MANIFEST's train split."""
    storage, key = manifest_source(spec.manifest, Settings())
    clips, digest = read_manifest(storage, key)
    thinking = config.stage == "sft_thinking"
    examples = Examples(clips, storage.get_bytes, processor, config.kinds, "train", thinking,
                        seed=spec.seed)  # fmt: skip
    return clips, digest, examples


def preflight(spec: TrainSpec) -> None:
    """ValueError (one line) for a run that cannot start, before any process or model exists:
    the flags, the manifest, the folder to resume from."""
    check_spec(spec)
    settings = Settings()
    manifest_source(spec.manifest, settings)
    if spec.resume and not is_url(spec.resume) and not has_resume_state(spec.resume):
        raise ValueError(f"--resume {spec.resume}: no {STATE_FILE} there (nothing to resume)")
    done = _resumed_step(spec.resume) if spec.resume else 0
    if done and spec.steps <= done:
        raise ValueError(
            f"--resume {spec.resume}: that run is at step {done}; --steps {spec.steps} adds none"
        )
    for value in (spec.output, spec.resume):
        if value and is_url(value) and not settings.s3_endpoint:
            raise ValueError(f"{value}: s3:// URLs need the object store (MOSS_S3_ENDPOINT)")


def _resumed_step(resume: str) -> int:
    if is_url(resume):
        return 0  # read by the ranks once fetched
    return int(torch.load(Path(resume) / STATE_FILE, weights_only=False)["step"])


def run(
    spec: TrainSpec,
    world: Dist,
    extras: Extras = Extras(),
    report: Callable[[int, dict[str, float]], None] | None = None,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """The whole run on this rank; returns the result (rank 0's is the run's). `report`
    replaces rank 0's progress lines (the CLI's progress bar)."""
    preflight(spec)
    processor = MossAudioProcessor.from_pretrained(None)
    with _work(spec, world) as (output, resume_from):
        model, parent, base_labels = load_base(spec, world)
        config = train_config(spec, parent is None, extras)
        clips, digest, examples = read_examples(spec, config, processor)
        steps_seen = [0]

        def on_step(step: int, metrics: dict[str, float]) -> None:
            steps_seen[0] = step
            track.step(step, metrics)

        def should_stop() -> bool:
            return bool(extras.stop_after) and steps_seen[0] >= extras.stop_after

        with Tracking(spec, config, world, run_dir, report) as track:
            track.inputs(examples, clips, digest, parent)
            result = train(model, examples, config, output, processor, resume=bool(spec.resume),
                           on_step=on_step, should_stop=should_stop, world=world,
                           resume_from=resume_from)  # fmt: skip
            if world.main:  # annotation names sounds in the words the model was trained on
                write_event_labels(output, {*base_labels, *training_event_labels(clips)})
            _publish(spec, output, world)
            summary = _summary(spec, result, track.run_id, len(examples))
            track.finish(result, output, summary)
    return summary


def _summary(spec: TrainSpec, result: TrainResult, run_id: str | None, examples: int) -> dict:
    seconds = max(result.seconds, 1e-9)
    return {
        "world_size": result.world_size,
        "steps": result.steps,
        "first_step": result.steps - len(result.losses) + 1,
        "losses": result.losses,
        "grad_norms": result.grad_norms,
        "final_loss": result.final_loss,
        "samples_per_s": result.samples / seconds,
        "tokens_per_s": result.tokens / seconds,
        "peak_memory_bytes": result.peak_memory,
        "seconds": result.seconds,
        "examples": examples,
        "output": spec.output,
        "mlflow_run_id": run_id,
    }


@contextlib.contextmanager
def _work(spec: TrainSpec, world: Dist) -> Iterator[tuple[Path, Path | None]]:
    """(the folder this node trains in, the folder to resume from): the --output and --resume
    directories themselves, or local folders standing in for their URLs."""
    if not is_url(spec.output) and not (spec.resume and is_url(spec.resume)):
        output = Path(spec.output).expanduser().resolve()
        if world.main:
            output.mkdir(parents=True, exist_ok=True)
        world.barrier()
        yield output, Path(spec.resume).expanduser().resolve() if spec.resume else None
        return
    root = Path(
        world.broadcast_object(tempfile.mkdtemp(prefix="moss-train-") if world.main else "")
    )
    root.mkdir(parents=True, exist_ok=True)  # the same path on every node, made where missing
    try:
        output = root / "output" if is_url(spec.output) else Path(spec.output).resolve()
        output.mkdir(parents=True, exist_ok=True)
        resume_from = None
        if spec.resume:
            resume_from = root / "resume-from" if is_url(spec.resume) else Path(spec.resume)
            if is_url(spec.resume) and world.local_rank == 0:
                fetch_tree(f"{spec.resume.rstrip('/')}/{RESUME_DIR}", resume_from / RESUME_DIR,
                           Settings())  # fmt: skip
        world.barrier()
        yield output, resume_from
    finally:
        world.barrier()
        if world.local_rank == 0:
            shutil.rmtree(root, ignore_errors=True)


def _publish(spec: TrainSpec, output: Path, world: Dist) -> None:
    """An s3:// --output gets this node's files: the shards from each node's first process,
    then (rank 0, last) the release files and the state file that makes the shards current."""
    if not is_url(spec.output):
        return
    settings = Settings()
    url = spec.output.rstrip("/")
    if world.local_rank == 0:
        publish_tree(
            output,
            url,
            settings,
            lambda p: p.parts[0] == RESUME_DIR and p.name != "trainer_state.pt",
        )
    world.barrier()
    if world.main:
        publish_tree(
            output,
            url,
            settings,
            lambda p: p.parts[0] != RESUME_DIR or p.name == "trainer_state.pt",
        )


@record
def rank_main(run_dir: Path) -> None:
    """A torchrun worker: the run's spec from RUN_DIR, this rank's part of it, rank 0's result
    into RUN_DIR. A failure leaves RUN_DIR/errors/rankN.json (and torchrun's own error file,
    through @record) before the process exits non-zero."""
    signal.signal(signal.SIGTERM, _terminated)  # torchrun stopping us: end MLflow's run too
    spec_data = json.loads((run_dir / SPEC_FILE).read_text())
    spec = TrainSpec(**spec_data["spec"])
    extras = Extras(**spec_data["extras"])
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # rank 0 speaks for the run; the others' stdout would repeat it
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        world = init()
        summary = run(spec, world, extras, run_dir=run_dir)
        if world.main:
            partial = run_dir / f"{RESULT_FILE}.partial"
            partial.write_text(json.dumps(summary))
            os.replace(partial, run_dir / RESULT_FILE)
    except BaseException as exc:
        _record_failure(run_dir, rank, exc)
        raise
    finally:
        close()


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _record_failure(run_dir: Path, rank: int, exc: BaseException) -> None:
    (run_dir / ERRORS_DIR).mkdir(exist_ok=True)
    record_ = {
        "rank": rank,
        "time": time.time(),
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
    }
    (run_dir / ERRORS_DIR / f"rank{rank}.json").write_text(json.dumps(record_))


# --- the launcher ---------------------------------------------------------------------------


def torchrun_argv(spec: TrainSpec, run_dir: Path, env: dict[str, str]) -> list[str]:
    """`python -m torch.distributed.run ...` for this node: --standalone on one node (a free
    port, no rendezvous server); on several, the node rank and rendezvous from Kubeflow's PET_*
    variables (or MASTER_ADDR / MASTER_PORT / NODE_RANK)."""
    argv = [sys.executable, "-m", "torch.distributed.run"]
    if spec.nodes == 1:
        argv.append("--standalone")
    else:
        given = env.get("PET_NNODES")
        if given and given.split(":")[-1] != str(spec.nodes):
            raise ValueError(f"--nodes {spec.nodes} but the job has PET_NNODES={given}")
        found = {
            name: env.get(f"PET_{name}") or env.get(name)
            for name in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
        }
        missing = [name for name, value in found.items() if not value]
        if missing:
            raise ValueError(
                f"--nodes {spec.nodes} needs {', '.join(missing)} (PET_* from Kubeflow Trainer's "
                "torch runtime, or MASTER_ADDR, MASTER_PORT and NODE_RANK)"
            )
        argv += ["--nnodes", str(spec.nodes), "--node-rank", found["NODE_RANK"]]
        argv += ["--master-addr", found["MASTER_ADDR"], "--master-port", found["MASTER_PORT"]]
    argv += ["--nproc-per-node", str(spec.nproc_per_node), "--log-dir", str(run_dir / "logs")]
    return [*argv, "-m", "pipelines.distributed_run", str(run_dir)]


def launch(
    spec: TrainSpec, extras: Extras = Extras(), on_line: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run `spec` under torchrun and return rank 0's result ({} on a node without rank 0).
    Rank 0's output reaches `on_line` line by line (default: this process's stdout); the
    ranks' stderr is this process's. A failed rank raises RankFailed with its error."""
    preflight(spec)
    run_dir = Path(tempfile.mkdtemp(prefix="moss-torchrun-"))
    try:
        (run_dir / SPEC_FILE).write_text(
            json.dumps({"spec": asdict(spec), "extras": asdict(extras)})
        )
        env = dict(os.environ)
        argv = torchrun_argv(spec, run_dir, env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if spec.nproc_per_node > 1:  # each rank one thread per core it can have
            cores = max(1, (os.cpu_count() or 1) // spec.nproc_per_node)
            env.setdefault("OMP_NUM_THREADS", str(cores))
        with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) as process:
            assert process.stdout is not None
            for line in process.stdout:
                (on_line or _print)(line.rstrip("\n"))
            code = process.wait()
        if code != 0:
            mark_failed(run_dir)
            raise RankFailed(first_failure(run_dir, spec) or _no_record(code), code)
        result = run_dir / RESULT_FILE
        return json.loads(result.read_text()) if result.is_file() else {}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _print(line: str) -> None:
    print(line, flush=True)


def _no_record(code: int) -> str:
    return (f"torchrun exited with code {code}: a rank died without a Python error (killed, "
            "out of memory?); its log is above")  # fmt: skip


def first_failure(run_dir: Path, spec: TrainSpec) -> str | None:
    """'rank N failed: Type: message' for the earliest failure: the rank that broke first, not
    the peers that then lost it. Our records first, then torchrun's error files (@record)."""
    records = [json.loads(p.read_text()) for p in (run_dir / ERRORS_DIR).glob("rank*.json")]
    if records:
        first = min(records, key=lambda r: r["time"])
        return f"rank {first['rank']} failed: {first['error']}"
    for path in sorted((run_dir / "logs").rglob("error.json")):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            message = json.loads(path.read_text())["message"]
            text = message["message"] if isinstance(message, dict) else str(message)
            node = int(os.environ.get("PET_NODE_RANK") or os.environ.get("NODE_RANK") or 0)
            rank = node * spec.nproc_per_node + int(path.parent.name)
            return f"rank {rank} failed: {text}"
    return None


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]))
