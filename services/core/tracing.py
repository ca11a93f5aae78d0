"""OpenTelemetry tracing across gateway -> queue -> worker, where the `otel` extra is installed
and MOSS_OTEL_ENABLED=true.

The gateway's request span, the Celery publish span and the worker's task span form one trace:
Celery's instrumentation carries the context in the task message's headers. Spans go to the
OTLP/HTTP endpoint of the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT, ...). Without the
packages the platform runs untraced and says so once; nothing here is needed otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("moss.tracing")
_provider: Any = None  # the process's one TracerProvider (OpenTelemetry allows one)


def setup(service: str, settings, exporter: Any = None) -> bool:
    """Trace this process as `service`; True when tracing is on."""
    global _provider
    if not settings.otel_enabled:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("MOSS_OTEL_ENABLED is set but the otel extra is not installed: no tracing")
        return False
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": service}))
        trace.set_tracer_provider(_provider)
        CeleryInstrumentor().instrument()
    _provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
    return True


def annotate(**attributes: str) -> None:
    """Add attributes (e.g. the job id) to the current span, if tracing is on."""
    if _provider is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    for name, value in attributes.items():
        span.set_attribute(f"moss.{name}", value)
