"""AWS Lambda entrypoints, one per deployed function, for an Amazon MSK or self-managed Kafka
event source: `functions.lambda_entry.<function name>` (e.g. `functions.lambda_entry.on_scene_approved`).

The event source delivers records grouped by topic-partition, keys and values base64-encoded.
The whole batch is applied in one transaction, exactly as the Kafka consumer does. Then:
- dead letters (unparseable, refused, failing for longer than TIERFLOW_TRANSIENT_RETRY_SECONDS)
  go to `<topic>.dlq`, where `tierflow events dlq` reads them, and count as done;
- deferred records (a transient failure) and those behind them in their partition are returned as
  partial batch failures, in the shape AWS documents for Kafka event sources (the one
  aws-lambda-powertools' Kafka batch processor returns):
  `{"batchItemFailures": [{"itemIdentifier": {"partition": "<topic>-<partition>", "offset": N}}]}`.
  Lambda retries from there. An invocation that finds a record before its retry time (Lambda
  retries at once) waits for it, so the pauses between tries grow as on the other runtimes.

aws-lambda-powertools (the `aws` extra) reads the event source's records and writes one JSON log
line per invocation (its Logger). Its batch processor is not used: it handles records one at a
time, and Tierflow applies a batch in one transaction.
"""

import base64
import binascii
import time
from collections.abc import Callable

from events import InvalidEvent, tracing
from functions.handlers.registry import FUNCTIONS
from shared.bootstrap import Deps
from shared.config import load_settings
from shared.runtime.consumer import Function, Message, Outcome, apply_batch, retry_policy

KAFKA_EVENT_SOURCES = ("aws:kafka", "SelfManagedKafka", "aws:SelfManagedKafka")


def kafka_messages(event: dict) -> list[Message]:
    """The records of a Lambda Kafka event, in partition order."""
    if event.get("eventSource") not in KAFKA_EVENT_SOURCES or not isinstance(event.get("records"), dict):
        raise InvalidEvent(
            f"not a Kafka event source payload (eventSource {event.get('eventSource')!r}; "
            f"expected one of {', '.join(KAFKA_EVENT_SOURCES)} with records by topic-partition)"
        )
    from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEvent

    messages = []
    for record in KafkaEvent(event).records:
        try:
            # Decoded here, not with the record's decoded_value: base64 that is not base64 must be
            # refused (b64decode without validate drops the characters it does not know).
            value = base64.b64decode(record.get("value") or "", validate=True)
            key = base64.b64decode(record.key, validate=True) if record.get("key") else None
            # [{"name": [byte, …]}, …], as the event source map passes Kafka headers; kept as a
            # list, not powertools' decoded_headers dict, so a header given twice is seen.
            headers = tuple((name, bytes(data)) for header in record.get("headers") or ()
                            for name, data in header.items())
        except (binascii.Error, ValueError, TypeError, AttributeError):
            value, key, headers = b"", None, ()  # undecodable: parse_event dead-letters it with a reason
        messages.append(Message(record.topic, value, key, headers=headers, partition=int(record.partition),
                                offset=int(record.offset)))
    return messages


def batch_item_failures(outcome: Outcome) -> dict:
    """The partial batch response: the records Lambda must deliver again."""
    return {"batchItemFailures": [
        {"itemIdentifier": {"partition": f"{m.topic}-{m.partition}", "offset": m.offset}} for m in outcome.not_done]}


def seconds_until_retry(conn, consumer: str, messages: list[Message]) -> float:
    """How long until the latest retry time of a deferred record in this batch (0: none waits)."""
    row = conn.execute(
        """SELECT GREATEST(EXTRACT(EPOCH FROM max(retry_at) - now()), 0)::float8 AS wait FROM event_failures
           WHERE consumer = %s AND ref = ANY(%s)""", [consumer, [m.ref for m in messages]]).fetchone()
    return row["wait"] or 0.0


def lambda_entrypoint(function: Function) -> Callable[[dict, object], dict]:
    """Build `lambda_handler(event, context)` for `function`."""
    held: dict = {}  # deps and the dead-letter producer, built once per container

    def lambda_handler(event: dict, context: object) -> dict:
        messages = kafka_messages(event)
        if "deps" not in held:
            from aws_lambda_powertools import Logger

            held["deps"] = Deps(load_settings(), source=f"urn:tierflow:{function.name}")
            tracing.start_export(f"tierflow-{function.name}")
            # Not service "tierflow": powertools filters its service's name out of the root logger's
            # handlers, which would silence shared.logs ("tierflow") where both run.
            held["logger"] = Logger(service="tierflow-lambda")  # one per process: keys go in each line
        deps = held["deps"]
        with deps.connect() as conn:
            # Never past the invocation's end: what is left is retried by Lambda anyway.
            left = context.get_remaining_time_in_millis() / 1000 - 10 if context else 0.0
            time.sleep(max(0.0, min(seconds_until_retry(conn, function.name, messages), left)))
            with conn.transaction():
                outcome = apply_batch(conn, deps.ports, function, messages, retry_policy(deps.settings))
        if outcome.dead:
            from shared.runtime.dead_letters import send_to_kafka
            from shared.runtime.kafka_bus import make_producer

            if "producer" not in held:
                held["producer"] = make_producer(deps.settings.kafka_bootstrap)
            send_to_kafka(held["producer"], function.name, outcome.dead)  # raises: Lambda retries the batch
        # One structured line per invocation, for CloudWatch Logs Insights.
        held["logger"].info("batch applied", extra={
            "function": function.name, "records": len(messages), "applied": len(outcome.applied), "duplicates": len(outcome.duplicates),
            "dead": len(outcome.dead), "deferred": len(outcome.deferred), "waiting": len(outcome.waiting),
            "request_id": getattr(context, "aws_request_id", None)})
        tracing.flush()
        return batch_item_failures(outcome)

    lambda_handler.__doc__ = f"Lambda entrypoint of {function.name}."
    return lambda_handler


# One module attribute per deployed function: the handler string the AWS template names.
HANDLERS = {name: lambda_entrypoint(function) for name, function in FUNCTIONS.items()}
globals().update(HANDLERS)
