"""TIERFLOW_LOG_FORMAT=json: one JSON object per line, with the current trace and span ids."""

import io
import json
import logging

from events import tracing
from shared import logs


def _lines(log_format: str, emit) -> list[str]:
    stream = io.StringIO()
    logs.configure(log_format)
    [handler] = [h for h in logging.getLogger().handlers if getattr(h, "tierflow", False)]
    handler.setStream(stream)
    try:
        emit()
    finally:
        logging.getLogger().removeHandler(handler)
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_trace_and_span_of_the_work_they_are_about():
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    def emit():
        logs.say("outside any trace")
        with tracing.scope(traceparent):
            logs.say("job 7: rendered")
            logging.getLogger("kafka.consumer").error("broker gone")  # other loggers alike

    outside, inside, other = [json.loads(line) for line in _lines("json", emit)]
    assert set(outside) == {"time", "level", "logger", "message"} and outside["message"] == "outside any trace"
    assert {k: inside[k] for k in ("level", "logger", "message", "trace_id", "span_id")} == {
        "level": "warning", "logger": "tierflow", "message": "job 7: rendered",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
    assert other["logger"] == "kafka.consumer" and other["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_text_lines_are_the_message_as_it_is():
    assert _lines("text", lambda: logs.say("tierflow worker w1: serving on cpu")) == [
        "tierflow worker w1: serving on cpu"]
