"""AWS Lambda entrypoints, one per deployed function, for an Amazon MSK or self-managed Kafka
event source: `functions.lambda_entry.<function name>` (e.g. `functions.lambda_entry.on_scene_approved`).

The event source delivers records grouped by topic-partition, keys and values base64-encoded.
The whole batch is applied in one transaction, exactly as the Kafka consumer does, and the
records that could not be applied are returned as partial batch failures
(`batchItemFailures`, identifier "<topic>-<partition>-<offset>"), so Lambda retries only those
and finally sends them to the on-failure destination.
"""

import base64
import binascii
from collections.abc import Callable

from events import InvalidEvent
from functions.handlers.registry import FUNCTIONS
from shared.bootstrap import Deps
from shared.config import load_settings
from shared.runtime.consumer import Function, Message, apply_batch

KAFKA_EVENT_SOURCES = ("aws:kafka", "SelfManagedKafka", "aws:SelfManagedKafka")


def kafka_messages(event: dict) -> list[Message]:
    """The records of a Lambda Kafka event, in partition order."""
    if event.get("eventSource") not in KAFKA_EVENT_SOURCES or not isinstance(event.get("records"), dict):
        raise InvalidEvent(
            f"not a Kafka event source payload (eventSource {event.get('eventSource')!r}; "
            f"expected one of {', '.join(KAFKA_EVENT_SOURCES)} with records by topic-partition)"
        )
    messages = []
    for records in event["records"].values():
        for record in records:
            try:
                value = base64.b64decode(record.get("value") or "", validate=True)
                key = base64.b64decode(record["key"], validate=True) if record.get("key") else None
            except (binascii.Error, ValueError):
                value, key = b"", None  # undecodable: parse_event dead-letters it with a reason
            messages.append(
                Message(record["topic"], value, key, partition=int(record["partition"]), offset=int(record["offset"])))
    return messages


def lambda_entrypoint(function: Function) -> Callable[[dict, object], dict]:
    """Build `lambda_handler(event, context)` for `function`."""
    deps_holder: list[Deps] = []  # built on the first invocation, reused while the container lives

    def lambda_handler(event: dict, context: object) -> dict:
        messages = kafka_messages(event)
        if not deps_holder:
            deps_holder.append(Deps(load_settings(), source=f"urn:tierflow:{function.name}"))
        deps = deps_holder[0]
        with deps.connect() as conn, conn.transaction():
            outcome = apply_batch(conn, deps.ports, function, messages)
        return {"batchItemFailures": [{"itemIdentifier": message.ref} for message, _ in outcome.dead]}

    lambda_handler.__doc__ = f"Lambda entrypoint of {function.name}."
    return lambda_handler


# One module attribute per deployed function: the handler string the AWS template names.
HANDLERS = {name: lambda_entrypoint(function) for name, function in FUNCTIONS.items()}
globals().update(HANDLERS)
