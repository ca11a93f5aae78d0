"""Hostile input through the real gateway (in-process, a real SQLite job store and local
storage): every case of the corpus (hostile_corpus.py) gets its documented status and code on
POST /v1/jobs and POST /v1/audio/transcriptions, a refused upload leaves nothing behind, client
file names never reach a storage key, playlists reach no file or socket, the service stays
healthy, and memory stays under the caps of docs/reliability.md ("Hostile input"), measured per
process: the gateway's peak resident set (reset before the corpus), and every decoding child's,
reported by its zygote from wait4(2).

The worker's decode (`load_audio_isolated`, the whole file) runs over the audio cases too.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import statistics
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model import audio_sandbox
from model.audio import AudioDecodeError
from model.audio_sandbox import load_audio_isolated
from services.gateway.app import create_app
from tests.jobs_env import make_context, write_checkpoint
from tests.reliability import hostile_corpus as hc

pytestmark = pytest.mark.reliability

TENANT = "hostile"
KEY_PATTERN = re.compile(rf"^audio/{TENANT}/[0-9a-f]{{8}}(-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}}$")
CASES = {case.name: case for case in hc.corpus()}
AUDIO_CASES = [name for name, case in CASES.items() if case.audio and case.data]

# The caps of docs/reliability.md ("Hostile input"), in MB: the gateway's peak RSS during the
# corpus over its RSS before, and a decoding child's peak RSS over its zygote's.
GATEWAY_CAP_MB = 64 + 6 * hc.MAX_UPLOAD_MB
CHILD_CAP_MB = hc.DECODE_MEMORY_MB

# The decoding zygote of model.audio_sandbox, unchanged but for how it reaps its children:
# wait4(2), which also gives each child's peak resident set, logged as "exit-code maxrss-kB".
MEASURING_ZYGOTE = (
    "import os, sys\n"
    "from model.audio_sandbox import run_zygote\n"
    "log = open(sys.argv[1], 'a', buffering=1)\n"
    "def waitpid(pid, options):\n"
    "    pid, status, usage = os.wait4(pid, options)\n"
    "    if pid:\n"
    "        log.write(f'{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}\\n')\n"
    "    return pid, status\n"
    "os.waitpid = waitpid\n"
    "run_zygote()\n"
)


def rss_kb(pid: int | str = "self", field: str = "VmHWM") -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))


class Listener:
    """A loopback HTTP server that answers every request with a real WAV, and counts them:
    a playlist followed by FFmpeg would show here (and decode)."""

    def __init__(self, body: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/clip.wav"
        self.connections = 0
        self.body = body
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.recv(65536)
                head = "HTTP/1.0 200 OK\r\nContent-Type: audio/wav\r\n"
                head += f"Content-Length: {len(self.body)}\r\n\r\n"
                conn.sendall(head.encode() + self.body)

    def close(self) -> None:
        self.sock.close()


class Env:
    def __init__(self, client, ctx, key, listener, sentinel, child_log) -> None:
        self.client, self.ctx, self.key = client, ctx, key
        self.listener, self.sentinel, self.child_log = listener, sentinel, child_log
        self.cases = {c.name: c for c in hc.corpus(listener.url, str(sentinel))}
        self.sent: set[tuple[str, str]] = set()
        self.gateway_start_kb = 0
        self.statuses: dict[tuple[str, str], tuple[int, str | None]] = {}
        # The peak RSS (kB) of the decoding children of each request, by phase and case.
        self.peaks: dict[str, dict[str, int]] = {"gateway": {}, "worker": {}}

    @property
    def root(self) -> Path:
        return self.ctx.settings.resolved_storage_dir

    def send(self, case: hc.Case, route: str):
        path, headers, body = case.request(route)
        with self.children_of("gateway", f"{route}-{case.name}"):
            response = self.client.post(
                path, headers={**headers, "Authorization": f"Bearer {self.key}"}, content=body
            )
        self.sent.add((case.name, route))
        code = _code(response) if _is_json(response) else None
        self.statuses[(case.name, route)] = (response.status_code, code)
        return response

    def objects(self) -> set[str]:
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()}

    def children(self) -> list[tuple[int, int]]:
        """(exit code, peak RSS kB) of every decoding child so far. The zygote logs a child
        before it reports its exit, and a call returns after that report: no line is late."""
        lines = self.child_log.read_text().split() if self.child_log.exists() else []
        return [(int(code), int(kb)) for code, kb in zip(lines[::2], lines[1::2], strict=True)]

    @contextlib.contextmanager
    def children_of(self, phase: str, name: str):
        before = len(self.children())
        try:
            yield
        finally:
            if new := self.children()[before:]:
                self.peaks[phase][name] = max(kb for _, kb in new)


def _code(response) -> str | None:
    return (response.json().get("error") or {}).get("code")


def _is_json(response) -> bool:
    return response.headers.get("content-type", "").startswith("application/json")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("hostile")
    write_checkpoint(home / "models" / "tiny")
    # Past the sync limit nothing hangs: a case the gateway wrongly accepts answers 504 at once.
    ctx = make_context(home, sync_timeout_s=0.5, **hc.SETTINGS)
    key, _ = ctx.store.create_key(TENANT, ["jobs", "datasets"])
    sentinel = home / "sentinel.wav"
    sentinel.write_bytes(hc.valid("wav"))
    listener = Listener(hc.valid("wav"))
    child_log = home / "children.log"
    command = (sys.executable, "-c", MEASURING_ZYGOTE, str(child_log))
    app = create_app(ctx.settings, ctx, worker_queues=lambda: {"encode"}, run_sweeper=False)
    with pytest.MonkeyPatch.context() as patch, TestClient(app) as client:
        patch.setattr(audio_sandbox, "CHILD_COMMAND", command)
        env = Env(client, ctx, key, listener, sentinel, child_log)
        env.send(env.cases["ct_no_part_content_type"], "jobs")  # warm: imports, the zygote
        Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from here
        env.gateway_start_kb = rss_kb(field="VmRSS")
        yield env
        zygote = audio_sandbox._zygotes.get(command).process
        zygote.kill()
        zygote.wait()
    listener.close()


def _params():
    for name, case in CASES.items():
        for route in case.routes:
            marks = [pytest.mark.xfail(strict=True, reason=case.finding)] if case.finding else []
            yield pytest.param(name, route, id=f"{route}-{name}", marks=marks)


@pytest.mark.parametrize(("name", "route"), list(_params()))
def test_each_case_gets_its_documented_answer(env, name, route) -> None:
    case = env.cases[name]
    before_objects, before_jobs = env.objects(), env.ctx.store.list_jobs(TENANT)[1]
    response = env.send(case, route)
    status = response.status_code
    assert _is_json(response), response.text[:200]
    code = _code(response)
    if case.status is None:  # a random variant: any documented outcome, never a 5xx
        assert status == 202 or code in hc.AUDIO_CODES.get(status, ()), response.text[:300]
    else:
        assert (status, code) == (case.status, case.code), response.text[:300]
    if status != 202:  # refused: nothing stored, no job recorded
        assert env.objects() == before_objects
        assert env.ctx.store.list_jobs(TENANT)[1] == before_jobs
        return
    job = env.ctx.store.get_job(response.json()["id"], tenant=TENANT)
    assert KEY_PATTERN.match(job.audio_key), job.audio_key  # never the client's file name
    assert env.objects() - before_objects == {job.audio_key}
    stored = (env.root / job.audio_key).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == job.audio_sha256 == sha256(case.data)


def sha256(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


@pytest.mark.parametrize("name", AUDIO_CASES)
def test_the_workers_full_decode_gives_the_documented_code(env, name) -> None:
    """What the encoder worker runs on an accepted upload: the whole file, capped at
    MOSS_MAX_AUDIO_SECONDS, in the sandbox with the same limits."""
    case = env.cases[name]
    limits = env.ctx.settings.decode_limits
    with env.children_of("worker", name):
        try:
            audio = load_audio_isolated(case.data, max_seconds=hc.MAX_AUDIO_SECONDS, limits=limits)
        except AudioDecodeError as exc:
            if case.worker == "any":
                assert exc.code in set().union(*hc.AUDIO_CODES.values()), exc.message
            else:
                assert exc.code == case.worker, exc.message
        else:
            assert case.worker in (hc.DECODES, "any"), "decoded"
            assert 0 < len(audio) <= hc.MAX_AUDIO_SECONDS * 16_000


def test_a_bomb_without_a_duration_cap_hits_the_decoders_memory_budget(env) -> None:
    """No max_seconds, a header that does not say how long: the sandbox's own budget (a third
    of MOSS_DECODE_MEMORY_MB of output, 46 min at 512 MB) stops a 10-hour FLAC while decoding,
    as `decode_limit_exceeded`, with the child's peak well under the cap."""
    limits = env.ctx.settings.decode_limits
    assert limits.memory_mb == hc.DECODE_MEMORY_MB
    bomb = env.cases["flac_bomb_10_hours_length_unknown"].data
    with (
        env.children_of("worker", "flac_bomb_10_hours_length_unknown, no max_seconds"),
        pytest.raises(AudioDecodeError) as info,
    ):
        load_audio_isolated(bomb, limits=limits)
    assert info.value.code == "decode_limit_exceeded"
    code, peak_kb = env.children()[-1]
    budget_kb = hc.DECODE_MEMORY_MB * 1024 / 3  # the decoded output it may hold
    assert code == 0 and budget_kb < peak_kb < _zygote_kb() + CHILD_CAP_MB * 1024


def test_dataset_names_cannot_climb_out_of_the_tenant(env) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    for name in ("%2e%2e", ".hidden", "a%00b", "..%5c..%5cx", "%2fetc"):
        response = env.client.put(
            f"/v1/datasets/{name}/audio/{digest}",
            headers={"Authorization": f"Bearer {env.key}"},
            content=b"x",
        )
        assert response.status_code in (404, 422), (name, response.text)
        if response.status_code == 422:
            assert response.json()["error"]["code"] == "invalid_dataset_name"
    assert not any(p.startswith("datasets/") for p in env.objects())


def _send_the_rest(env) -> None:
    """The summary tests below stand alone: cases not sent yet (a -k selection) are sent now."""
    for name, case in env.cases.items():
        for route in case.routes:
            if (name, route) not in env.sent:
                env.send(case, route)


def test_no_playlist_reached_a_file_or_a_socket(env) -> None:
    _send_the_rest(env)
    assert env.listener.connections == 0
    for name, case in env.cases.items():
        if case.group == "playlist":
            for route in case.routes:
                assert env.statuses[(name, route)] == (415, "not_audio")


def test_no_file_was_written_outside_the_object_store(env, tmp_path_factory) -> None:
    _send_the_rest(env)
    base = tmp_path_factory.getbasetemp()
    names = {"passwd", "win.ini", "moss-escape", "authorized_keys"}
    assert not [p for p in base.rglob("*") if p.name in names]
    outside = [p for p in env.objects() if not KEY_PATTERN.match(p)]
    assert not outside  # every stored object is a job's audio under a key of ours


def test_the_service_is_healthy_after_the_corpus(env) -> None:
    _send_the_rest(env)
    # (a case with a finding may be accepted by mistake; on the sync route it then times out)
    errors = [k for k, (status, _) in env.statuses.items() if status >= 500]
    assert not [k for k in errors if not env.cases[k[0]].finding], errors
    health = env.client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    accepted = env.send(env.cases["ct_no_part_content_type"], "jobs")
    assert accepted.status_code == 202
    assert env.ctx.store.get_job(accepted.json()["id"], tenant=TENANT).audio_seconds == 1.0
    assert not [c for c, _ in env.children() if c != 0]  # no child crashed or was killed


def test_memory_stays_under_the_documented_caps(env, record_property) -> None:
    _send_the_rest(env)
    gateway_mb = (rss_kb() - env.gateway_start_kb) / 1024
    zygote_kb = _zygote_kb()
    lines = [
        f"gateway process: {env.gateway_start_kb / 1024:.0f} MB before the corpus, peak "
        f"+{gateway_mb:.1f} MB during it (cap +{GATEWAY_CAP_MB:.0f} MB)",
        f"decoding zygote: {zygote_kb / 1024:.0f} MB; {len(env.children())} children, "
        f"cap {zygote_kb / 1024 + CHILD_CAP_MB:.0f} MB each",
    ]
    for phase, peaks in env.peaks.items():
        if peaks:
            worst = max(peaks, key=peaks.get)
            lines.append(
                f"{phase} children ({len(peaks)} requests): peak {peaks[worst] / 1024:.0f} MB "
                f"({worst}), median {statistics.median(peaks.values()) / 1024:.0f} MB"
            )
    report = "; ".join(lines)
    record_property("memory", report)
    print("\n" + "\n".join(lines))
    assert gateway_mb < GATEWAY_CAP_MB, report
    peak = max(kb for _, kb in env.children())
    assert peak < zygote_kb + CHILD_CAP_MB * 1024, report


def _zygote_kb() -> int:
    """The zygote's resident set: where every child starts."""
    return rss_kb(audio_sandbox._zygotes.get(audio_sandbox.CHILD_COMMAND).process.pid, "VmRSS")
