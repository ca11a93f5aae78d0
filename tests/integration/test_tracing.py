"""OpenTelemetry across gateway -> queue -> worker on the real stack: every process exports
OTLP/HTTP to a receiver on loopback (the protocol a collector speaks), and one job makes one
trace: the gateway's request span, the Celery publish span, and the worker's task spans."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from services.core.settings import Settings
from services.stack import STACK_QUEUES, LocalStack, free_port
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import write_checkpoint

pytestmark = pytest.mark.integration
trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="needs the otel extra (pip install '.[otel]')",
)


class Collector:
    """Accepts OTLP/HTTP protobuf exports and keeps the spans: (service, name, trace id, attrs)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, dict]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = trace_service.ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    attrs = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            values = {a.key: a.value.string_value for a in span.attributes}
                            collector.spans.append(
                                (attrs.get("service.name"), span.name, span.trace_id.hex(), values)
                            )
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


def test_one_job_is_one_trace_from_the_gateway_through_the_queue_to_the_workers(
    tmp_path, redis_url, monkeypatch
) -> None:
    collector = Collector()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # ms: export soon after each span
    write_checkpoint(tmp_path / "models" / "tiny")
    settings = Settings(
        home=tmp_path, port=free_port(), redis_url=redis_url, otel_enabled=True, heartbeat_s=0.5
    )
    stack = LocalStack(settings)
    stack.prepare()
    stack.start_redis()
    stack.choose_default_model()
    stack.start_gateway()
    for queue in STACK_QUEUES[:2]:  # encode, generate
        stack.start_worker(queue)
    try:
        stack.wait_ready(timeout=120)
        with httpx.Client(
            base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=90
        ) as api:
            data = encode(*stereo_tone(1.0, freq=515.0), 44_100, "wav")
            job = api.post(
                "/v1/jobs",
                files={"file": ("clip.wav", data, "audio/wav")},
                data={"task": "caption", "max_new_tokens": "4"},
            ).json()
            state = api.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
        assert state["status"] == "succeeded", state
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            mine = [s for s in collector.spans if s[3].get("moss.job_id") == job["id"]]
            if {s[3].get("moss.stage") for s in mine} >= {"encode", "generate"}:
                break
            time.sleep(0.2)
        stages = {s[3]["moss.stage"]: s for s in mine}
        assert set(stages) >= {"encode", "generate"}, collector.spans
        trace_id = stages["encode"][2]
        assert stages["generate"][2] == trace_id  # the encoder's publish carried the context
        in_trace = [s for s in collector.spans if s[2] == trace_id]
        services = {s[0] for s in in_trace}
        assert {"moss-gateway", "moss-worker"} <= services, in_trace
        assert any(s[0] == "moss-gateway" and s[1].startswith("POST /v1/jobs") for s in in_trace)
        assert any(s[0] == "moss-gateway" and "apply_async" in s[1] for s in in_trace)
    finally:
        stack.stop()
        collector.server.shutdown()
