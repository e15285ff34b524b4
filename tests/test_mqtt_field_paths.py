"""A declared point's ``field`` path that runs through a value which is not a JSON object."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocols.mqtt.codec import PayloadError, PointDecoder
from protocols.mqtt.config import MqttPoint


def decoder(*points: dict[str, Any]) -> PointDecoder:
    return PointDecoder([MqttPoint.model_validate(p) for p in points], "dev")


@pytest.mark.parametrize(
    ("inner", "kind"),
    [(5, "number"), ("warm", "string"), (True, "bool"), ([1], "array")],
)
def test_a_path_through_a_non_object_is_a_shape_error(inner: object, kind: str) -> None:
    d = decoder({"name": "b", "topic": "t", "field": "a.b"})
    samples, errors = d.decode("t", json.dumps({"a": inner}).encode(), received=1.0)
    assert samples == [] and len(errors) == 1
    assert isinstance(errors[0], PayloadError)
    assert str(errors[0]) == (
        f"bad payload on 't': point b: field 'a.b' goes through 'a', a JSON {kind}, not an object"
    )


def test_the_shape_error_is_reported_even_when_other_points_are_read() -> None:
    """Unlike a missing key (a partial update), the wrong shape is never quiet."""
    d = decoder(
        {"name": "temp", "topic": "t", "field": "data.temp.now"},
        {"name": "on", "topic": "t", "field": "on", "type": "bool"},
    )
    samples, errors = d.decode("t", b'{"data": {"temp": 21.5}, "on": true}', received=1.0)
    assert [(s.point, s.value) for s in samples] == [("on", True)]
    assert [str(e) for e in errors] == [
        "bad payload on 't': point temp: field 'data.temp.now' goes through 'data.temp',"
        " a JSON number, not an object"
    ]


def test_missing_keys_are_still_partial_updates() -> None:
    d = decoder(
        {"name": "temp", "topic": "t", "field": "data.temp"},
        {"name": "on", "topic": "t", "field": "on", "type": "bool"},
    )
    samples, errors = d.decode("t", b'{"data": {}, "on": false}', received=1.0)
    assert [(s.point, s.value) for s in samples] == [("on", False)] and errors == []
    # null where the object belongs (a device switched off says so): missing, not a bad shape
    samples, errors = d.decode("t", b'{"data": null, "on": false}', received=1.0)
    assert [(s.point, s.value) for s in samples] == [("on", False)] and errors == []
    samples, errors = d.decode("t", b'{"other": 1}', received=1.0)
    assert samples == []
    assert [str(e) for e in errors] == [
        "bad payload on 't': JSON without any of the keys 'data.temp', 'on'"
    ]
