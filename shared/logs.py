"""One logger for every long-running process: `TIERFLOW_LOG_FORMAT=text` (the default) writes
each line as it is, `json` one JSON object per line with the time, level, logger, message and the
current trace and span ids (events.tracing), for a log pipeline that joins logs to traces."""

import json
import logging
import sys
from datetime import UTC, datetime

from events import tracing

LOGGER = logging.getLogger("tierflow")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        traceparent = tracing.current()
        if traceparent:
            _, line["trace_id"], line["span_id"], _ = traceparent.split("-")
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(log_format: str = "text") -> None:
    """Send every logger's records to stderr in `log_format`; once per process (again: replaced)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter("%(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "tierflow", False)]:
        root.removeHandler(old)
    handler.tierflow = True
    root.addHandler(handler)  # the root's level stays WARNING: libraries' chatter stays out


def say(line: str) -> None:
    """A line for the operator: what a long-running process did or what went wrong (at WARNING,
    so it shows whatever a library did to the levels)."""
    LOGGER.warning(line)
