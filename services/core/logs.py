"""Log lines that say which request and which job they are about, as text or as JSON lines.

The gateway sets the request id (services.gateway.requestid), a worker the job id while it runs
a stage; every record logged meanwhile carries them (`request_id`, `job_id`, "-" when none).
MOSS_LOG_FORMAT=json writes one JSON object per line, for log pipelines.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("moss_request_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("moss_job_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s job=%(job_id)s] %(message)s"


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        record.job_id = JOB_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "job_id": getattr(record, "job_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    """The root logger: one stream handler with the context filter, text or JSON."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
