"""A job-path context for tests: SQLite, local storage, a tiny checkpoint, recorded enqueues."""

from __future__ import annotations

from pathlib import Path

from model import MossAudioProcessor
from services.core.jobstore import JobStore
from services.core.settings import Settings
from services.core.storage import LocalStorage
from services.inference.local import LocalBackend
from services.jobs.context import Context
from tests.conftest import make_tiny_model


def write_checkpoint(directory: Path, seed: int = 5) -> Path:
    make_tiny_model(seed=seed, n_window=200).save_pretrained(directory)
    MossAudioProcessor.from_pretrained(None).save_pretrained(directory)
    return directory


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fronts: list[tuple[str, str]] = []  # sent ahead of the backlog

    def __call__(self, stage: str, job_id: str, front: bool = False) -> None:
        self.calls.append((stage, job_id))
        if front:
            self.fronts.append((stage, job_id))


_backends: dict[Path, LocalBackend] = {}  # one per home: models load once per test module


def make_context(home: Path, worker: str | None = None, **overrides) -> Context:
    settings = Settings(**{"home": home, "default_model": "tiny", "heartbeat_s": 0.2, **overrides})
    store = JobStore.connect(settings.resolved_database_url)
    if home not in _backends:
        _backends[home] = LocalBackend(settings)
    return Context(
        settings=settings,
        store=store,
        storage=LocalStorage(settings.resolved_storage_dir),
        enqueue=Recorder(),
        backend=_backends[home],
        worker=worker,
    )
