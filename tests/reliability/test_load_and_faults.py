"""The whole stack under load while its parts fail: no accepted job is lost or run twice.

The production shape on loopback: PostgreSQL (behind a cuttable proxy), the S3 server process
(moto, behind one too), the stack's own Valkey (append-only file), the gateway and Celery worker
processes under the stack's supervisor. Clients submit jobs concurrently (each with an
Idempotency-Key, retrying 429/503 after Retry-After); during the load each worker type is
SIGKILLed, Valkey is SIGKILLed, the database and the object store are cut off. Afterwards every
accepted job must have ended `succeeded`, each encoder and decoder run must have happened once
per job (counted from the workers' own log lines, not from attempts), and the object store must
hold nothing that no job owns.

Reduced by default (CI); MOSS_RELIABILITY_FULL=1 runs the full size (500 jobs, 32 clients,
every worker type killed three times). MOSS_RELIABILITY_REPORT=FILE writes the table into FILE
between the `reliability-results` markers (`make test-reliability` writes docs/reliability.md).
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from services.core.jobstore import JobStore
from services.core.settings import Settings
from services.core.storage import make_storage
from services.stack import LocalStack, free_port
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import write_checkpoint
from tests.reliability.faults import Client, Outage, Outcome, percentile, start_services

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

FULL = os.environ.get("MOSS_RELIABILITY_FULL") == "1"
JOBS, CLIENTS, KILLS = (500, 32, 3) if FULL else (32, 8, 1)
TENANTS = 4
S3_SECRET = "s3secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def platform(tmp_path_factory, s3_endpoint):
    database = os.environ.get("MOSS_TEST_DATABASE_URL")
    if not database:
        pytest.skip("MOSS_TEST_DATABASE_URL is not set (CI sets it to the machine's PostgreSQL)")
    db = urlsplit(database)
    db_proxy = Outage((db.hostname or "127.0.0.1", db.port or 5432))
    s3_host, s3_port = s3_endpoint.rsplit(":", 1)
    s3_proxy = Outage((s3_host, int(s3_port)))
    home = tmp_path_factory.mktemp("reliability-home")
    write_checkpoint(home / "models" / "tiny")
    netloc = f"{db.username or 'postgres'}@127.0.0.1:{db_proxy.port}"
    settings = Settings(
        home=home,
        port=free_port(),
        database_url=db._replace(netloc=netloc).geturl(),
        storage="s3",
        s3_endpoint=f"127.0.0.1:{s3_proxy.port}",
        s3_secure=False,
        s3_bucket=f"moss-{uuid.uuid4().hex[:10]}",
        s3_access_key="test",
        s3_secret_key=S3_SECRET,  # moto takes any; one that cannot occur by chance in a log
        s3_region="us-east-1",
        heartbeat_s=1.0,  # MOSS_SWEEP_AFTER_S stays at its default: recovery must not wait on it
        generator_concurrency=4,
        max_queue_depth=JOBS // 2,  # some submissions meet 503 queue_full and come back
        gateway_max_inflight=16,
    )
    stack = start_services(settings)
    stop = threading.Event()
    restarts: list[tuple[float, str]] = []

    def supervise() -> None:  # what `mossctl up` does between its console updates
        while not stop.wait(0.2):
            restarts.extend((time.time(), line) for line in stack.supervise())

    supervisor = threading.Thread(target=supervise, daemon=True)
    supervisor.start()
    try:
        stack.wait_ready()
        yield {"stack": stack, "db": db_proxy, "s3": s3_proxy, "restarts": restarts}
    finally:
        stop.set()
        supervisor.join()
        stack.stop()
        for proxy in (db_proxy, s3_proxy):
            proxy.close()


def wav(index: int) -> bytes:
    """A distinct 1 s clip per job (no feature-cache hits between jobs)."""
    return encode(*stereo_tone(1.0, rate=16_000, freq=180 + 7 * index), 16_000, "wav")


def kill(stack: LocalStack, name: str) -> None:
    """SIGKILL a child; the stack's supervisor starts it again."""
    (stack.redis if name == "valkey" else stack.workers[name][0]).kill()


def held_by(store: JobStore, node_prefix: str) -> list[str]:
    from sqlalchemy import select

    from services.core.jobstore.models import Job

    with store.sessions() as session:
        rows = session.execute(
            select(Job.id).where(Job.status == "running", Job.claimed_by.like(f"{node_prefix}%"))
        ).all()
    return [row[0] for row in rows]


def test_every_accepted_job_ends_once_through_faults(platform) -> None:
    stack: LocalStack = platform["stack"]
    store = JobStore.connect(stack.settings.resolved_database_url)
    keys = [
        store.create_key(f"load-{i}-{uuid.uuid4().hex[:6]}", ["jobs"])[0] for i in range(TENANTS)
    ]
    outcomes: list[Outcome] = []
    faults: list[dict] = []
    started = time.time()

    def one(index: int) -> Outcome:
        client = Client(stack.url, keys[index % TENANTS])
        try:
            return client.run(wav(index))
        finally:
            client.close()

    def inject() -> None:
        schedule = [("generate", None), ("encode", None)] * KILLS
        schedule[1:1] = [("valkey", None)]
        schedule += [("database", 5.0), ("object store", 10.0)]
        for name, seconds in schedule:
            time.sleep(6.0 if FULL else 3.0)
            fault = {"fault": name, "at": time.time(), "seconds": seconds or 0.0}
            if name == "database":
                platform["db"].cut(seconds)
            elif name == "object store":
                platform["s3"].cut(seconds)
            else:
                node = f"{name}-1@" if name != "valkey" else None
                fault["orphans"] = held_by(store, node) if node else []
                if name != "valkey":
                    fault["pid"] = stack.workers[name][0].pid
                kill(stack, name)
            fault["end"] = fault["at"] + fault["seconds"]
            faults.append(fault)
            time.sleep(fault["seconds"])

    injector = threading.Thread(target=inject)
    injector.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(pool.map(one, range(JOBS)))
    injector.join()
    elapsed = time.time() - started

    accepted = [o for o in outcomes if o.job_id]
    assert len({o.job_id for o in accepted}) == len(accepted)  # no job created twice
    final = [o for o in accepted if o.status]
    lost = [o.job_id for o in accepted if not o.status]
    failed = Counter(o.error for o in final if o.status != "succeeded")
    runs = model_runs(stack.logs)
    duplicated, rerun = classify(runs, {f["pid"] for f in faults if "pid" in f})
    succeeded = [o for o in final if o.status == "succeeded"]
    never_ran = [o.job_id for o in succeeded if not runs.get(o.job_id, {}).get("generated")]
    jobs = {o.job_id: store.get_job(o.job_id) for o in accepted}
    latencies = [o.ended_at - o.submitted_at for o in succeeded]
    table = report(
        outcomes, accepted, succeeded, failed, lost, duplicated, rerun, latencies, elapsed
    )
    table += "\n\n" + fault_table(faults, jobs, platform["restarts"])
    print("\n" + table)
    if target := os.environ.get("MOSS_RELIABILITY_REPORT"):
        write_section(Path(target), "load-and-faults", table)

    assert not lost, f"{len(lost)} accepted jobs never ended: {lost[:5]}"
    assert not failed, f"jobs failed: {dict(failed)}"
    assert not duplicated, f"jobs whose encoder or decoder ran twice: {duplicated[:5]}"
    assert not never_ran, f"succeeded without one decoder run on record: {never_ran[:5]}"
    assert len(accepted) == JOBS  # every client got its job in, after retries
    owned = {job.audio_key for job in jobs.values()} | {
        job.features_key for job in jobs.values() if job.features_key
    }
    storage = make_storage(stack.settings)
    stored = storage.list_keys("audio/") + storage.list_keys("features/")
    stray = [key for key in stored if key not in owned]
    assert not stray, f"objects no job owns (half-written or orphaned uploads): {stray[:5]}"


LINE = re.compile(
    r"\b([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b.*\b(encoded|generated) "
    r"\d.*\(pid (\d+)\)"
)


def model_runs(logs: Path) -> dict[str, dict[str, list[int]]]:
    """Per job and model ("encoded", "generated"): the pid of each run that went to the end
    (one worker log line per run)."""
    runs: dict[str, dict[str, list[int]]] = {}
    for name in ("worker-encode.log", "worker-generate.log"):
        for line in (logs / name).read_text(errors="replace").splitlines():
            if found := LINE.search(line):
                job, model, pid = found.groups()
                runs.setdefault(job, {}).setdefault(model, []).append(int(pid))
    return runs


def classify(runs: dict[str, dict[str, list[int]]], killed: set[int]) -> tuple[list, list]:
    """(duplicated, rerun): jobs a model ran for twice in workers that lived on (a bug), and
    jobs a model ran for again because the worker of an earlier run was SIGKILLed before it
    could record the result (at-least-once: the work of a killed process is done again)."""
    duplicated, rerun = [], []
    for job, models in runs.items():
        for pids in models.values():
            if sum(pid not in killed for pid in pids) > 1:
                duplicated.append(job)
            elif len(pids) > 1:
                rerun.append(job)
    return sorted(set(duplicated)), sorted(set(rerun) - set(duplicated))


def report(outcomes, accepted, succeeded, failed, lost, duplicated, rerun, latencies, elapsed):
    refusals = Counter(code for o in outcomes for code in o.refusals)
    failed_text = ", ".join(f"{k}: {v}" for k, v in failed.items()) or "0"
    rows = [
        ("jobs submitted / clients", f"{len(outcomes)} / {CLIENTS}"),
        ("accepted (202)", len(accepted)),
        ("refusals met on the way (then retried)", dict(refusals) or 0),
        ("succeeded", len(succeeded)),
        ("failed, by code", failed_text),
        ("lost (accepted, never ended)", len(lost)),
        ("duplicated (encoder or decoder ran twice in live workers)", len(duplicated)),
        (
            "run again: the first run's worker was SIGKILLed before it recorded the result",
            len(rerun),
        ),
        (
            "job latency p50 / p99",
            f"{percentile(latencies, 0.5):.1f} s / {percentile(latencies, 0.99):.1f} s",
        ),
        ("wall time", f"{elapsed:.0f} s"),
    ]
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def fault_table(faults: list[dict], jobs: dict, restarts: list[tuple[float, str]]) -> str:
    """Per fault: how long until the supervisor restarted what was killed, and until the work
    the fault stopped ran again."""
    lines = [
        "| fault | at (s into the run) | restarted after | stages held then "
        "| back on a worker after | work resumed after |",
        "|---|---|---|---|---|---|",
    ]
    t0 = faults[0]["at"] if faults else 0.0
    for fault in faults:
        orphans = fault.get("orphans", [])
        back = [
            _ts(jobs[j].timings[stage]["started_at"]) - fault["at"]
            for j in orphans
            if j in jobs
            for stage in ("encode", "generate")
            if stage in (jobs[j].timings or {})
            and _ts(jobs[j].timings[stage]["started_at"]) > fault["at"]
        ]
        finished = [
            _ts(entry["finished_at"])
            for job in jobs.values()
            for entry in (job.timings or {}).values()
            if isinstance(entry, dict)
            and "finished_at" in entry
            and _ts(entry["finished_at"]) > fault["end"]
        ]
        resumed = f"{min(finished) - fault['end']:.1f} s" if finished else "n/a"
        name = fault["fault"] + (f" ({fault['seconds']:g} s)" if fault["seconds"] else " (SIGKILL)")
        restarted = [
            at - fault["at"]
            for at, line in restarts
            if at > fault["at"] and line.startswith(fault["fault"]) and " restarted " in line
        ]
        lines.append(
            f"| {name} | {fault['at'] - t0:.0f} | "
            f"{f'{min(restarted):.1f} s' if restarted and not fault['seconds'] else '-'} | "
            f"{len(orphans)} | {f'{max(back):.1f} s' if back else '-'} | {resumed} |"
        )
    return "\n".join(lines)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between `<!-- reliability-results:NAME -->` markers."""
    start, end = f"<!-- reliability-results:{name} -->", f"<!-- /reliability-results:{name} -->"
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text += f"\n{block}\n"
    path.write_text(text)


def test_under_overload_only_429_or_503_with_retry_after(platform) -> None:
    """Far more concurrent requests than the gateway runs at once (16): refusals are 429/503
    with Retry-After; the admitted ones keep a bounded latency."""
    stack: LocalStack = platform["stack"]
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
        quiet = []
        for _ in range(30):
            t = time.perf_counter()
            assert client.get("/v1/jobs", params={"limit": 5}).status_code == 200
            quiet.append(time.perf_counter() - t)
    statuses: Counter = Counter()
    admitted: list[float] = []
    missing_retry_after = 0
    lock = threading.Lock()
    until = time.monotonic() + (20 if FULL else 6)

    def hammer() -> None:
        nonlocal missing_retry_after
        with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
            while time.monotonic() < until:
                t = time.perf_counter()
                response = client.get("/v1/jobs", params={"limit": 5})
                took = time.perf_counter() - t
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        admitted.append(took)
                    elif "retry-after" not in response.headers:
                        missing_retry_after += 1

    threads = [threading.Thread(target=hammer) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    p50, p99 = percentile(admitted, 0.5), percentile(admitted, 0.99)
    table = (
        "| measure | value |\n|---|---|\n"
        f"| clients | 64 (gateway runs 16 at once) |\n"
        f"| responses by status | {dict(sorted(statuses.items()))} |\n"
        f"| refusals without Retry-After | {missing_retry_after} |\n"
        f"| admitted p50 / p99 | {1000 * p50:.0f} ms / {1000 * p99:.0f} ms |\n"
        f"| unloaded p50 / p99 (same run) | {1000 * percentile(quiet, 0.5):.0f} ms / "
        f"{1000 * percentile(quiet, 0.99):.0f} ms |"
    )
    print("\n" + table)
    if target := os.environ.get("MOSS_RELIABILITY_REPORT"):
        write_section(Path(target), "shedding", table)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert missing_retry_after == 0
    assert statuses[503] + statuses[429] > 0, "64 clients on 16 slots and nothing was shed"
    # Bounded: an admitted request waits at most for its slot (0.5 s) plus its own work on a
    # busy machine; without shedding the p99 was 6.8 s at this load.
    assert p99 < 3.0, f"admitted p99 {p99:.2f} s"


def test_no_key_or_secret_in_any_log(platform) -> None:
    """After the load, the faults and the requests below, no log line of any process holds an
    API key, a webhook signing secret or the object store's secret, not even a key sent in a
    query string or a key that was refused."""
    stack: LocalStack = platform["stack"]
    store = JobStore.connect(stack.settings.resolved_database_url)
    tenant_key, record = store.create_key(f"logs-{uuid.uuid4().hex[:6]}", ["jobs"])
    unknown = "moss_" + uuid.uuid4().hex
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        for key in (stack.api_key, tenant_key, unknown):
            client.get("/v1/jobs", params={"api_key": key, "token": key},
                       headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            client.get(f"/v1/jobs?key={key}")  # and only in the query string: 401
        rotated = client.post(
            f"/v1/keys/{record.id}/webhook-secret",
            headers={"Authorization": f"Bearer {tenant_key}"},
        )
        assert rotated.status_code == 201, rotated.text
        secret = rotated.json()["webhook_secret"]
        submitted = Client(stack.url, tenant_key).run(wav(10_001))
        assert submitted.status == "succeeded", submitted
    secrets = {
        "admin key": stack.api_key,
        "tenant key": tenant_key,
        "refused key": unknown,
        "webhook secret": secret,
        "S3 secret": S3_SECRET,
    }
    logs = sorted(stack.logs.glob("*.log"))
    assert len(logs) >= 4  # gateway, valkey, both workers
    for path in logs:
        text = path.read_text(errors="replace")
        for what, value in secrets.items():
            assert value not in text, f"the {what} is in {path.name}"
