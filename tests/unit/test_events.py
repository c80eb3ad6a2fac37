"""The event contracts (events/): models, envelope, parsing, topics, and the published JSON Schemas.

The schemas are a promise to producers in other languages: what a schema accepts, the consumer
accepts, and what it rejects, the consumer rejects. Most tests below therefore ask both sides.
"""

import copy
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

import events
from events import (
    ALL_TOPICS,
    EVENT_TYPES,
    CloudEvent,
    GenerationFailed,
    InvalidEvent,
    Recipe,
    RejectionReason,
    SceneApproved,
    UpscaleFailed,
    dlq_topic,
    envelope_for,
    parse_event,
    schema_id,
    topic_for,
)
from events.schemas import SCHEMA_DIR, render

EVENTS_DIR = Path(events.__file__).resolve().parent
SAMPLE_DIR = EVENTS_DIR / "samples"
TYPES = list(EVENT_TYPES)
EXPORT_COMMAND = "python -m events.schemas"


def sample(event_type: str) -> dict:
    return json.loads((SAMPLE_DIR / f"{event_type}.json").read_text(encoding="utf-8"))


@cache
def validator(event_type: str) -> Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / f"{event_type}.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def changed(document: dict, path: tuple, value=None, *, remove: bool = False) -> dict:
    """A deep copy of `document` with the value at `path` replaced (or removed)."""
    document = copy.deepcopy(document)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if remove:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return document


def parse_error(document) -> str:
    """The InvalidEvent message for `document`, checked to be one line."""
    with pytest.raises(InvalidEvent) as caught:
        parse_event(copy.deepcopy(document) if isinstance(document, dict) else document)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def schema_errors(event_type: str, document) -> list[str]:
    """What the JSON Schema of `event_type` says is wrong, each as 'path: message'."""
    return [
        "/".join(str(p) for p in error.absolute_path) + ": " + error.message
        for error in validator(event_type).iter_errors(document)
    ]


def assert_both_reject(event_type: str, document: dict, field: str, mention: str) -> None:
    """pydantic names `mention` in its one-line message; the JSON Schema rejects the same field."""
    message = parse_error(document)
    assert mention in message, f"expected {mention!r} in: {message}"
    errors = schema_errors(event_type, document)
    assert errors, f"the JSON Schema accepted what parse_event refused ({message})"
    assert any(field in error for error in errors), f"schema errors do not mention {field!r}: {errors}"


def assert_both_accept(event_type: str, document: dict):
    assert not schema_errors(event_type, document)
    return parse_event(copy.deepcopy(document))


# ---------------------------------------------------------------------------------------------
# Files: one fresh schema and one sample per type, nothing else


@pytest.mark.parametrize("event_type", TYPES)
def test_schema_file_is_fresh(event_type):
    path = SCHEMA_DIR / f"{event_type}.json"
    assert path.exists(), f"{path} is missing: run `{EXPORT_COMMAND}`"
    assert path.read_text(encoding="utf-8") == render(event_type), (
        f"{path} is stale (the models changed since it was written): run `{EXPORT_COMMAND}`"
    )


def test_exactly_one_schema_and_one_sample_per_type():
    expected = {f"{event_type}.json" for event_type in TYPES}
    assert {p.name for p in SCHEMA_DIR.glob("*.json")} == expected
    assert {p.name for p in SAMPLE_DIR.glob("*.json")} == expected


def test_export_rewrites_the_same_files(tmp_path):
    (tmp_path / "scene.deleted.json").write_text("{}")
    events.schemas.write_schemas(tmp_path)
    assert {p.name for p in tmp_path.glob("*.json")} == {f"{t}.json" for t in TYPES}
    for event_type in TYPES:
        assert (tmp_path / f"{event_type}.json").read_text() == (SCHEMA_DIR / f"{event_type}.json").read_text()


@pytest.mark.parametrize("event_type", TYPES)
def test_schema_is_a_valid_draft_2020_12_schema_of_the_whole_cloudevent(event_type):
    schema = json.loads((SCHEMA_DIR / f"{event_type}.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://tierflow.dev/events/schemas/{event_type}.json"
    assert schema["title"] and schema["description"]
    assert schema["properties"]["type"]["const"] == event_type
    assert schema["properties"]["specversion"]["const"] == "1.0"
    assert set(schema["required"]) >= {"specversion", "id", "source", "type", "subject", "time", "data"}
    assert schema["properties"]["data"]["additionalProperties"] is False
    # Every reference resolves from the root, where the sub-models live.
    text = json.dumps(schema)
    for name in schema.get("$defs", {}):
        assert f'"#/$defs/{name}"' in text
    assert "$defs" not in schema["properties"]["data"]


# ---------------------------------------------------------------------------------------------
# Samples: parse into the right class and satisfy the schema alone


@pytest.mark.parametrize("event_type", TYPES)
def test_sample_parses_and_matches_its_schema(event_type):
    document = sample(event_type)
    assert not schema_errors(event_type, document)
    envelope, event = parse_event(json.dumps(document).encode())
    assert type(event) is EVENT_TYPES[event_type]
    assert envelope.type == event.type == event_type
    assert envelope.subject == event.subject == str(document["data"][event.subject_field])
    assert envelope.dataschema == schema_id(event_type)
    assert event.model_dump(mode="json") == {"schema_version": 1, **document["data"]}


@pytest.mark.parametrize("event_type", TYPES)
def test_subject_field_is_a_field_of_the_model(event_type):
    model = EVENT_TYPES[event_type]
    assert model.subject_field in model.model_fields


# ---------------------------------------------------------------------------------------------
# Invalid variants, generated for every type: refused by pydantic and by the JSON Schema


def _wrong_type(value):
    if isinstance(value, bool):
        return "true"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 12
    if isinstance(value, list):
        return {"items": value}
    return [value]


def _generated_variants():
    for event_type in TYPES:
        document, model = sample(event_type), EVENT_TYPES[event_type]
        data = document["data"]
        for name, field in model.model_fields.items():
            if field.is_required():
                yield event_type, f"missing-{name}", changed(document, ("data", name), remove=True), name
            if data.get(name) is not None:
                yield event_type, f"wrong-type-{name}", changed(document, ("data", name), _wrong_type(data[name])), name
            if name.endswith("_id"):
                yield event_type, f"negative-{name}", changed(document, ("data", name), -1), name
                yield event_type, f"zero-{name}", changed(document, ("data", name), 0), name
            if name in ("tier", "target_tier"):
                for bad in ("Production", "ultra_hd", "4k", "draft-", "a" * 41, ""):
                    yield event_type, f"bad-tier-{bad[:8]!r}", changed(document, ("data", name), bad), name
        yield event_type, "unknown-data-field", changed(document, ("data", "colour"), "red"), "colour"


@pytest.mark.parametrize(
    ("event_type", "document", "field"),
    [pytest.param(t, d, f, id=f"{t}-{label}") for t, label, d, f in _generated_variants()],
)
def test_invalid_data_is_rejected_by_both(event_type, document, field):
    assert_both_reject(event_type, document, field, f"data.{field}")


# (type, path in the document, bad value, field the schema names, what the message names)
SPECIFIC_VARIANTS = [
    ("upscale.progress", ("data", "percent"), 100.5, "percent", "data.percent"),
    ("upscale.progress", ("data", "percent"), -1, "percent", "data.percent"),
    ("upscale.progress", ("data", "segments_total"), 0, "segments_total", "data.segments_total"),
    ("upscale.progress", ("data", "segments_done"), -1, "segments_done", "data.segments_done"),
    ("upscale.failed", ("data", "reason"), "", "reason", "data.reason"),
    ("generation.requested", ("data", "width"), 500, "width", "data.width"),
    ("generation.requested", ("data", "width"), 8200, "width", "data.width"),
    ("generation.requested", ("data", "height"), 0, "height", "data.height"),
    ("generation.requested", ("data", "attempt"), 0, "attempt", "data.attempt"),
    ("generation.requested", ("data", "recipe", "seed"), -1, "seed", "data.recipe.seed"),
    ("generation.requested", ("data", "recipe", "seed"), 2**63, "seed", "data.recipe.seed"),
    ("generation.requested", ("data", "recipe", "frames"), 0, "frames", "data.recipe.frames"),
    ("generation.requested", ("data", "recipe", "fps"), 121, "fps", "data.recipe.fps"),
    ("generation.requested", ("data", "recipe", "steps"), 1001, "steps", "data.recipe.steps"),
    ("generation.requested", ("data", "recipe", "guidance"), 101, "guidance", "data.recipe.guidance"),
    ("generation.requested", ("data", "recipe", "prompt"), "", "prompt", "data.recipe.prompt"),
    ("generation.requested", ("data", "recipe", "prompt"), "x" * 4001, "prompt", "data.recipe.prompt"),
    ("generation.requested", ("data", "recipe", "model"), "", "model", "data.recipe.model"),
    ("generation.requested", ("data", "recipe", "strength"), 0.8, "strength", "data.recipe.strength"),
    ("generation.progress", ("data", "total_steps"), 0, "total_steps", "data.total_steps"),
    ("generation.progress", ("data", "step"), -1, "step", "data.step"),
    ("generation.completed", ("data", "sha256"), "9F86D081" * 8, "sha256", "data.sha256"),
    ("generation.completed", ("data", "sha256"), "9f86d081", "sha256", "data.sha256"),
    ("generation.completed", ("data", "device"), "", "device", "data.device"),
    ("generation.completed", ("data", "device_seconds"), -0.5, "device_seconds", "data.device_seconds"),
    ("generation.completed", ("data", "frames"), 0, "frames", "data.frames"),
    ("generation.completed", ("data", "video_key"), "", "video_key", "data.video_key"),
    ("generation.failed", ("data", "retryable"), 1, "retryable", "data.retryable"),
    ("delivery.requested", ("data", "scene_ids"), [], "scene_ids", "data.scene_ids"),
    ("delivery.requested", ("data", "scene_ids"), [12, 13, 12], "scene_ids", "data.scene_ids"),
    ("delivery.requested", ("data", "scene_ids"), list(range(1, 1002)), "scene_ids", "data.scene_ids"),
    ("delivery.requested", ("data", "scene_ids"), [12, 0], "scene_ids", "data.scene_ids[1]"),
    ("delivery.requested", ("data", "project"), "", "project", "data.project"),
    ("delivery.completed", ("data", "manifest_key"), "", "manifest_key", "data.manifest_key"),
    ("delivery.rejected", ("data", "reasons"), [], "reasons", "data.reasons"),
    ("delivery.rejected", ("data", "reasons", 0, "code"), "TOO_BLUE", "code", "data.reasons[0].code"),
    ("delivery.rejected", ("data", "reasons", 0, "tier"), "Draft", "tier", "data.reasons[0].tier"),
    ("delivery.rejected", ("data", "reasons", 0, "scene_id"), -12, "scene_id", "data.reasons[0].scene_id"),
    ("delivery.rejected", ("data", "reasons", 0, "message"), "", "message", "data.reasons[0].message"),
    ("delivery.rejected", ("data", "summary"), "", "summary", "data.summary"),
    ("scene.approved", ("data", "schema_version"), 2, "schema_version", "data.schema_version"),
    ("scene.approved", ("data", "schema_version"), True, "schema_version", "data.schema_version"),
    ("scene.approved", ("data", "approved_by"), "", "approved_by", "data.approved_by"),
]


@pytest.mark.parametrize(
    ("event_type", "path", "value", "field", "mention"),
    SPECIFIC_VARIANTS,
    ids=[f"{v[0]}-{'.'.join(map(str, v[1][1:]))}={str(v[2])[:12]}" for v in SPECIFIC_VARIANTS],
)
def test_field_rules_are_enforced_by_both(event_type, path, value, field, mention):
    assert_both_reject(event_type, changed(sample(event_type), path, value), field, mention)


def test_required_nullable_fields_must_be_present():
    rejected = sample("delivery.rejected")
    assert_both_reject("delivery.rejected", changed(rejected, ("data", "reasons", 0, "tier"), remove=True),
                       "tier", "data.reasons[0].tier: Field required")
    failed = sample("upscale.failed")
    assert_both_reject("upscale.failed", changed(failed, ("data", "target_scene_id"), remove=True),
                       "target_scene_id", "data.target_scene_id: Field required")


ENVELOPE_VARIANTS = [
    ("wrong-specversion", ("specversion",), "0.3", "specversion", "specversion"),
    ("number-specversion", ("specversion",), 1.0, "specversion", "specversion"),
    ("empty-id", ("id",), "", "id", "id"),
    ("long-id", ("id",), "x" * 201, "id", "id"),
    ("empty-source", ("source",), "", "source", "source"),
    ("source-with-space", ("source",), "urn:tierflow cli", "source", "source"),
    ("empty-subject", ("subject",), "", "subject", "subject"),
    ("naive-time", ("time",), "2026-11-24T09:30:00", "time", "time"),
    ("space-in-time", ("time",), "2026-11-24 09:30:00Z", "time", "time"),
    ("number-time", ("time",), 1795000000, "time", "time"),
    ("text-content-type", ("datacontenttype",), "text/plain", "datacontenttype", "datacontenttype"),
    ("empty-dataschema", ("dataschema",), "", "dataschema", "dataschema"),
    ("data-not-object", ("data",), [1, 2], "data", "data"),
    ("bad-extension-name", ("Trace_Parent",), "00-abc", "Trace_Parent", "'Trace_Parent'"),
    ("long-extension-name", ("x" * 21,), "v", "x" * 21, "x" * 21),
    ("float-extension", ("traceparent",), 1.5, "traceparent", "'traceparent'"),
    ("object-extension", ("traceparent",), {"a": 1}, "traceparent", "'traceparent'"),
    ("int64-extension", ("sequence",), 2**31, "sequence", "'sequence'"),
    ("null-extension", ("sequence",), None, "sequence", "'sequence'"),
]


@pytest.mark.parametrize("event_type", TYPES)
@pytest.mark.parametrize(("path", "value", "field", "mention"), [v[1:] for v in ENVELOPE_VARIANTS],
                         ids=[v[0] for v in ENVELOPE_VARIANTS])
def test_invalid_envelope_is_rejected_by_both(event_type, path, value, field, mention):
    message_prefix = f"invalid {event_type} event: "
    document = changed(sample(event_type), path, value)
    assert_both_reject(event_type, document, field, mention)
    assert parse_error(document).startswith(message_prefix)


@pytest.mark.parametrize("event_type", TYPES)
@pytest.mark.parametrize("attribute", ["specversion", "id", "source", "type", "subject", "time", "data"])
def test_missing_envelope_attribute_is_rejected_by_both(event_type, attribute):
    document = changed(sample(event_type), (attribute,), remove=True)
    assert_both_reject(event_type, document, attribute, f"{attribute}: Field required")


def test_message_is_exactly_the_documented_form():
    document = changed(sample("scene.approved"), ("data", "scene_id"), 0)
    assert parse_error(document) == "invalid scene.approved event: data.scene_id: Input should be greater than 0"


def test_many_problems_are_listed_then_counted():
    document = sample("generation.requested")
    document["data"] = {"colour": "red", **{name: "x" for name in ("job_id", "scene_id", "segment_id", "attempt",
                                                                   "width", "height")}}
    message = parse_error(document)
    assert message.count(";") == 5 and message.endswith("more problem(s)")


# ---------------------------------------------------------------------------------------------
# What only the consumer can check, and edges both sides must accept


def test_subject_must_match_the_id_it_names():
    document = changed(sample("scene.approved"), ("subject",), "7")
    assert parse_error(document) == "invalid scene.approved event: subject '7' does not match data.scene_id 12"
    document = changed(sample("delivery.rejected"), ("subject",), "12")
    assert "does not match data.delivery_id 5" in parse_error(document)


@pytest.mark.parametrize(
    ("event_type", "changes", "mention"),
    [
        ("upscale.progress", {"segments_done": 9, "segments_total": 8}, "segments_done (9) is more than segments_total (8)"),
        ("generation.progress", {"step": 31, "total_steps": 30}, "step (31) is more than total_steps (30)"),
    ],
)
def test_cross_field_rules(event_type, changes, mention):
    document = sample(event_type)
    document["data"].update(changes)
    assert parse_error(document) == f"invalid {event_type} event: data: {mention}"


def test_unknown_type_lists_the_known_types():
    message = parse_error(changed(sample("scene.approved"), ("type",), "scene.deleted"))
    assert message.startswith("unknown event type 'scene.deleted' (known: ")
    for event_type in TYPES:
        assert event_type in message
    assert schema_errors("scene.approved", changed(sample("scene.approved"), ("type",), "scene.deleted"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "not JSON: Expecting value at character 0"),
        (b"{\"specversion\": ", "not JSON: Expecting value at character 16"),
        ("not json", "not JSON: Expecting value at character 0"),
        (b"\xff\xfe{}", "not JSON: not UTF-8 text"),
        (b'{"a": NaN}', "not JSON: NaN is not a JSON value"),
        (b'{"subject": "1", "subject": "2"}', "not JSON: key 'subject' appears twice in one object"),
        (b"[" * 100_000, "not JSON: nested too deeply"),
        (b"[1, 2]", "not a CloudEvent: expected a JSON object, got an array"),
        (b'"scene.approved"', "not a CloudEvent: expected a JSON object, got a string"),
        (b"12", "not a CloudEvent: expected a JSON object, got a number"),
        (b"null", "not a CloudEvent: expected a JSON object, got null"),
        (None, "empty message"),
        (12, "expected a CloudEvent as JSON bytes, text or a dict, got int"),
    ],
)
def test_non_json_and_non_objects_are_rejected(raw, expected):
    assert parse_error(raw).startswith(expected)


def test_invalid_event_is_a_value_error_with_a_usage_exit_code_and_one_line():
    error = InvalidEvent("first line\nsecond line\r\nthird")
    assert isinstance(error, ValueError) and InvalidEvent.exit_code == 2
    assert str(error) == "first line second line  third"


def test_pydantic_and_json_errors_are_chained_not_raised():
    with pytest.raises(InvalidEvent) as caught:
        parse_event(changed(sample("scene.approved"), ("data", "scene_id"), -1))
    assert isinstance(caught.value.__cause__, ValidationError)
    with pytest.raises(InvalidEvent) as caught:
        parse_event(b"{")
    assert isinstance(caught.value.__cause__, json.JSONDecodeError)


@pytest.mark.parametrize(
    ("event_type", "path", "value"),
    [
        ("scene.approved", ("data", "scene_id"), 12.0),  # JSON Schema's integer includes 12.0
        ("scene.approved", ("data", "approved_by"), None),
        ("scene.approved", ("data", "approved_by"), "ana"),
        ("scene.approved", ("time",), "2026-11-24T10:30:00.123456789+01:00"),
        ("scene.approved", ("time",), "2026-11-24T09:30:00.5Z"),
        ("scene.approved", ("traceparent",), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("scene.approved", ("sequence",), 7),
        ("scene.approved", ("sequence",), 7.0),
        ("scene.approved", ("sampled",), True),
        ("scene.approved", ("dataschema",), "https://tierflow.dev/events/schemas/scene.approved.json"),
        ("upscale.progress", ("data", "percent"), 50),
        ("upscale.progress", ("data", "percent"), 100),
        ("upscale.requested", ("data", "target_tier"), "ultra-hd-2"),
        ("upscale.requested", ("data", "target_tier"), "a" * 40),
        ("generation.requested", ("data", "width"), 8),
        ("generation.requested", ("data", "height"), 8192),
        ("generation.requested", ("data", "recipe", "negative_prompt"), ""),
        ("generation.requested", ("data", "recipe", "seed"), 2**63 - 1),
        ("delivery.requested", ("data", "scene_ids"), list(range(1, 1001))),
    ],
)
def test_edges_are_accepted_by_both(event_type, path, value):
    document = changed(sample(event_type), path, value)
    if path == ("data", "scene_id"):
        document["subject"] = "12"
    assert_both_accept(event_type, document)


@pytest.mark.parametrize("attribute", ["dataschema", "datacontenttype"])
def test_optional_envelope_attributes_may_be_left_out(attribute):
    envelope, _ = assert_both_accept("scene.approved", changed(sample("scene.approved"), (attribute,), remove=True))
    assert envelope.datacontenttype == "application/json"


def test_optional_data_fields_may_be_left_out():
    document = sample("scene.approved")
    del document["data"]["approved_by"], document["data"]["schema_version"]
    _, event = assert_both_accept("scene.approved", document)
    assert event == SceneApproved(scene_id=12)


@pytest.mark.parametrize(
    ("path", "value", "mention"),
    [
        (("data", "target_tier"), "production\n", "data.target_tier"),
        (("time",), "2026-11-24T09:30:00Z\n", "time"),
        (("trace\n",), "x", "'trace\\n'"),
    ],
)
def test_a_trailing_newline_is_refused(path, value, mention):
    # Python's `re` lets `$` match before a final newline (so Python's jsonschema accepts these);
    # ECMA-262, which JSON Schema patterns follow, does not, and neither does the consumer.
    assert mention in parse_error(changed(sample("upscale.requested"), path, value))


def test_lone_surrogates_are_refused():
    # JSON's \ud800 escape decodes to half a character, which no UTF-8 text (or database) can
    # hold. A JSON Schema has no way to say so; the consumer refuses it.
    raw = json.dumps(sample("scene.approved")).replace('"ana@', '"\\ud800ana@').encode()
    assert raw.count(b"\\ud800") == 1
    assert not schema_errors("scene.approved", json.loads(raw))
    assert parse_error(raw).startswith("invalid scene.approved event: data.approved_by: ")


# ---------------------------------------------------------------------------------------------
# Property: for any JSON value put anywhere, the consumer and the schema give the same answer

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 1, 8, 12, 100, 120, 288, 512, 1024, 8192, 2**31, 2**63 - 1, 2**63]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([12.0, 7.5, 100.0, 100.5, -0.0, 1e20]),
    # Text that UTF-8 can carry (see test_lone_surrogates_are_refused), without newlines (see
    # test_a_trailing_newline_is_refused).
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"), max_size=30),
    st.sampled_from([
        "", "12", "draft", "production", "ultra-hd", "Draft", "a" * 41, "SCENE_NOT_FOUND", "f" * 64,
        "1.0", "application/json", "urn:tierflow:cli", "2026-11-24T09:30:00Z", "2026-11-24T09:30:00",
        "2026-11-24T09:30:00+02:00", "2026-13-01T00:00:00Z",
    ]),
)
JSON_VALUES = st.one_of(
    JSON_SCALARS,
    st.lists(st.one_of(st.integers(min_value=-2, max_value=2000), st.sampled_from([1.0, True, "1"])), max_size=4),
    st.dictionaries(st.text(max_size=6), JSON_SCALARS, max_size=2),
)


# What a JSON Schema cannot say, so only the consumer checks (see the tests above).
CONSUMER_ONLY_RULES = ("is more than", "does not match data.")


def _paths(value, prefix=()):
    """Every place in a document a value could be put or replaced."""
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, (*prefix, key))
    elif isinstance(value, list) and value:
        yield from _paths(value[0], (*prefix, 0))


def _consumer_accepts(document) -> tuple[bool, str]:
    try:
        parse_event(document)
    except InvalidEvent as exc:
        return False, str(exc)
    return True, ""


@pytest.mark.parametrize("event_type", TYPES)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_consumer_and_schema_agree_on_any_value_anywhere(event_type, data):
    document = sample(event_type)
    places = [p for p in _paths(document) if p and p != ("type",)]
    path = data.draw(st.sampled_from(places + [("newattribute",), ("data", "newfield")]), label="path")
    value = data.draw(JSON_VALUES, label="value")
    document = changed(document, path, value)
    # Keep the subject in step with its id, or every valid id would fail on the subject alone.
    subject_field = EVENT_TYPES[event_type].subject_field
    if path == ("data", subject_field) and type(value) in (int, float) and float(value).is_integer():
        document["subject"] = str(int(value))
    accepted, message = _consumer_accepts(copy.deepcopy(document))
    schema_ok = not schema_errors(event_type, document)
    if schema_ok and not accepted and any(rule in message for rule in CONSUMER_ONLY_RULES):
        return
    verdict = "accepted" if accepted else f"refused ({message})"
    assert accepted == schema_ok, f"consumer {verdict}, schema {schema_errors(event_type, document)}"


# ---------------------------------------------------------------------------------------------
# Models, envelope, round trip


@pytest.mark.parametrize("event_type", TYPES)
def test_events_are_frozen(event_type):
    _, event = parse_event(sample(event_type))
    with pytest.raises(ValidationError, match="frozen"):
        setattr(event, event.subject_field, 99)
    with pytest.raises(ValidationError, match="frozen"):
        event.schema_version = 1


def test_sub_models_and_envelope_are_frozen():
    envelope, event = parse_event(sample("generation.requested"))
    with pytest.raises(ValidationError, match="frozen"):
        event.recipe.seed = 1
    with pytest.raises(ValidationError, match="frozen"):
        envelope.subject = "13"
    _, rejected = parse_event(sample("delivery.rejected"))
    with pytest.raises(ValidationError, match="frozen"):
        rejected.reasons[0].code = "FILE_MISSING"


def test_models_refuse_loose_python_values_too():
    with pytest.raises(ValidationError):
        SceneApproved(scene_id="12")
    with pytest.raises(ValidationError):
        Recipe(prompt="p", seed=1, frames=1, fps=1, steps=1, guidance=1, model="m", strength=0.5)
    with pytest.raises(ValidationError):
        RejectionReason(code="TIER_NOT_DELIVERABLE", scene_id=12, message="m")  # tier is required


@pytest.mark.parametrize("event_type", TYPES)
def test_envelope_for_round_trips_through_json(event_type):
    original_envelope, event = parse_event(sample(event_type))
    envelope = envelope_for(event, source="urn:tierflow:test", id="evt-1",
                            time=datetime(2026, 11, 24, 10, 0, tzinfo=timezone(timedelta(hours=2))))
    raw = envelope.to_json()
    assert raw == json.dumps(json.loads(raw), ensure_ascii=False, separators=(",", ":")).encode()  # compact
    assert not schema_errors(event_type, json.loads(raw))
    parsed_envelope, parsed_event = parse_event(raw)
    assert parsed_event == event and type(parsed_event) is type(event)
    assert parsed_envelope == envelope
    assert json.loads(raw)["time"] == "2026-11-24T10:00:00+02:00"
    assert parsed_envelope.dataschema == f"https://tierflow.dev/events/schemas/{event_type}.json" == original_envelope.dataschema


def test_envelope_for_defaults_to_a_new_uuid_and_now_in_utc():
    before = datetime.now(UTC)
    first = envelope_for(SceneApproved(scene_id=12), source="urn:tierflow:cli")
    second = envelope_for(SceneApproved(scene_id=12), source="urn:tierflow:cli")
    assert UUID(first.id).version == 4 and first.id != second.id
    assert first.time.utcoffset() == timedelta(0) and before <= first.time <= datetime.now(UTC)
    assert json.loads(first.to_json())["time"].endswith("Z")
    assert (first.type, first.subject, first.specversion) == ("scene.approved", "12", "1.0")


def test_extension_attributes_survive_a_round_trip():
    document = sample("generation.requested")
    envelope, _ = parse_event(document)
    assert envelope.extensions == {"traceparent": document["traceparent"]}
    assert json.loads(envelope.to_json())["traceparent"] == document["traceparent"]


def test_naive_time_is_rejected():
    naive = datetime(2026, 11, 24, 9, 30)
    with pytest.raises(InvalidEvent, match="time: Input should have timezone info"):
        envelope_for(SceneApproved(scene_id=12), source="urn:tierflow:cli", time=naive)
    with pytest.raises(ValidationError):
        CloudEvent(specversion="1.0", id="1", source="urn:x", type="scene.approved", subject="12",
                   time=naive, data={"scene_id": 12})
    assert "time:" in parse_error(changed(sample("scene.approved"), ("time",), "2026-11-24T09:30:00"))


def test_envelope_for_refuses_what_is_not_an_event():
    with pytest.raises(TypeError):
        envelope_for({"scene_id": 12}, source="urn:tierflow:cli")
    with pytest.raises(InvalidEvent, match="source"):
        envelope_for(SceneApproved(scene_id=12), source="")


# ---------------------------------------------------------------------------------------------
# Topics and the package boundary


def test_one_topic_per_type_named_like_the_type():
    assert ALL_TOPICS == tuple(TYPES)
    for event_type in TYPES:
        assert topic_for(event_type) == event_type
    assert dlq_topic("scene.approved") == "scene.approved.dlq"
    with pytest.raises(InvalidEvent, match=r"unknown event type 'scene.deleted' \(known: scene.approved, "):
        topic_for("scene.deleted")


def test_events_imports_only_the_standard_library_and_pydantic():
    # A fresh interpreter, so modules other tests imported do not hide an import.
    probe = (
        "import json, sys; before = set(sys.modules);"
        "import events, events.schemas.__main__;"
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before}"
        " - set(sys.stdlib_module_names) - {'events'})))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    # _sysconfigdata_* is the standard library's build description, named per platform.
    outside = {name for name in json.loads(result.stdout) if not name.startswith("_sysconfigdata")}
    assert outside <= {"pydantic", "pydantic_core", "typing_extensions", "annotated_types", "typing_inspection"}


@pytest.mark.parametrize("build", [
    lambda text: GenerationFailed(job_id=1, scene_id=2, segment_id=3, reason=text, retryable=True).reason,
    lambda text: UpscaleFailed(source_scene_id=1, target_scene_id=None, target_tier="production", reason=text).reason,
    lambda text: RejectionReason(code="FILE_MISSING", scene_id=1, tier="production", message=text).message,
])
def test_free_text_past_its_limit_is_cut_with_an_ellipsis_never_refused(build):
    assert build("x" * 2000) == "x" * 2000
    cut = build("y" * 2001 + "tail")
    assert len(cut) == 2000 and cut == "y" * 1999 + "…"


# -- the Kafka protocol binding: structured and binary mode -----------------------------------------


def _binary(**overrides) -> tuple[bytes, list[tuple[str, bytes]]]:
    headers = {"ce_specversion": b"1.0", "ce_id": b"e-1", "ce_source": b"urn:studio:review-tool",
               "ce_type": b"scene.approved", "ce_subject": b"3", "ce_time": b"2026-12-02T03:00:00Z",
               "content-type": b"application/json", **overrides}
    return json.dumps({"scene_id": 3}).encode(), [(k, v) for k, v in headers.items() if v is not None]


def test_a_binary_mode_event_is_read_from_its_headers_and_its_value_as_data():
    value, headers = _binary(ce_traceparent=b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    envelope, event = parse_event(value, headers)
    assert (envelope.id, envelope.source, envelope.subject, event) == ("e-1", "urn:studio:review-tool", "3",
                                                                       SceneApproved(scene_id=3))
    assert envelope.extensions == {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    # Header names are case-insensitive, and a charset parameter is fine.
    assert parse_event(value, [(k.upper(), v) for k, v in _binary(**{"content-type": b"application/json; "
                                                                      b"charset=utf-8"})[1]])[1] == event


def test_a_structured_event_reads_the_same_with_the_bindings_header_or_without_one():
    raw = (SAMPLE_DIR / "scene.approved.json").read_bytes()
    structured = [("content-type", b"application/cloudevents+json; charset=UTF-8"), ("dlq.reason", b"x")]
    assert parse_event(raw, structured) == parse_event(raw)


@pytest.mark.parametrize(("value", "headers", "message"), [
    (None, _binary(ce_type=None)[1], "type"),
    (None, _binary(**{"content-type": b"text/plain"})[1],
     "binary-mode event with content-type 'text/plain': its data must be application/json"),
    (None, [*_binary()[1], ("ce_subject", b"4")], "header 'ce_subject' appears twice in one message"),
    (None, _binary(ce_id=b"\xff")[1], "header 'ce_id' is not UTF-8 text"),
    (b"{\"scene_id\": 3, \"scene_id\": 4}", _binary()[1], "key 'scene_id' appears twice"),
    (b"[]", [("content-type", b"application/cloudevents-batch+json")], "only single events in JSON"),
])
def test_a_bad_binary_or_structured_message_is_refused_with_the_reason(value, headers, message):
    with pytest.raises(InvalidEvent, match=re.escape(message)):
        parse_event(value if value is not None else _binary()[0], headers)
