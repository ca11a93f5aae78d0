"""Log lines that say which request and which job they are about, as text or as JSON lines.

The gateway sets the request id (services.gateway.requestid), a worker the job id while it runs
a stage; every record logged meanwhile carries them (`request_id`, `job_id`, "-" when none).
MOSS_LOG_FORMAT=json writes one JSON object per line, for log pipelines.
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("moss_request_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("moss_job_id", default=None)
# A URL's userinfo: `scheme://` then everything up to the last `@` before the host ends (`/`,
# `?`, `#` or a space), as urlsplit reads it (a password may hold a raw `@`).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#]*@")
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


def redact_url(text: str) -> str:
    """`text` with the userinfo of every URL in it replaced by `***` (`http://***@host/`).

    Operators may put credentials in a URL they configure (MOSS_MLFLOW_URI, MOSS_KFP_HOST:
    `http://user:pw@host`), and the clients' own errors quote that URL back. Anything a tenant
    can read (a run's error, its log) or a log line gets this first. Works on a bare URL and on
    a message that holds URLs."""
    return _USERINFO.sub(r"\1***@", text)
