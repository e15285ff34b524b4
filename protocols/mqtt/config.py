"""Config models of an MQTT broker connection and of a bridge that publishes to it."""

from __future__ import annotations

import string
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.common import Backoff, Strict

TEMPLATE_FIELDS = frozenset({"gateway", "device", "point", "kind"})


def template_fields(template: str) -> set[str]:
    """Placeholders of a ``str.format`` template; ValueError if it is malformed."""
    fields: set[str] = set()
    for _literal, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or not name.isidentifier():
            raise ValueError(f"placeholder {{{name}}} in {template!r} is not a name")
        if spec or conv:
            raise ValueError(f"placeholder {{{name}}} in {template!r} takes no format spec")
        fields.add(name)
    return fields


def check_publish_topic(template: str) -> set[str]:
    """Validate a topic template for publishing; returns its placeholders."""
    fields = template_fields(template)
    unknown = fields - TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{sorted(unknown)[0]}}}; "
            f"use {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))}"
        )
    if "+" in template or "#" in template:
        raise ValueError("a topic to publish to cannot contain the wildcards + or #")
    if template.startswith("$"):
        raise ValueError("topics starting with $ are reserved for the broker")
    if "" in template.split("/") and template != "/":
        raise ValueError("topic has an empty level ('//' or a leading or trailing '/')")
    return fields


class Tls(Strict):
    ca_file: str | None = Field(None, description="CA bundle that signed the broker certificate")
    cert_file: str | None = Field(None, description="client certificate (PEM)")
    key_file: str | None = Field(None, description="client private key (PEM)")
    insecure: bool = Field(
        False, description="skip broker certificate checks (explicit, logged as a warning)"
    )

    @model_validator(mode="after")
    def _pair(self) -> Tls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class Subscription(Strict):
    """A topic the gateway subscribes to; each message becomes a bus message."""

    topic: str = Field(min_length=1)
    qos: Literal[0, 1, 2] = 1
    payload: Literal["json", "text", "raw"] = "json"

    @field_validator("topic")
    @classmethod
    def _filter(cls, v: str) -> str:
        from gateway.bus import validate_pattern

        validate_pattern(v)
        return v


class MqttEndpoint(Strict):
    protocol: Literal["mqtt"] = "mqtt"
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535, description="1883, or 8883 with tls")
    client_id: str | None = Field(None, description="defaults to protocol-brain-{gateway}-{name}")
    username: str | None = None
    password: str | None = None
    keepalive: int = Field(30, ge=5, le=65535)
    tls: Tls | None = None
    status_topic: str = Field(
        "protocol-brain/{gateway}/status",
        description="retained birth ('online') and last will ('offline') of the gateway",
    )
    reconnect: Backoff = Field(default_factory=Backoff)
    max_queued: int = Field(10000, ge=1, description="messages buffered while disconnected")
    subscriptions: list[Subscription] = Field(default_factory=list)

    @field_validator("status_topic")
    @classmethod
    def _status_topic(cls, v: str) -> str:
        fields = check_publish_topic(v)
        if fields - {"gateway"}:
            raise ValueError("status_topic may only use {gateway}")
        return v

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883


class MqttRoute(Strict):
    """Bridge target options when the target is an MQTT endpoint."""

    topic: str = Field(
        "{gateway}/{device}/{point}", description="topic template: {gateway} {device} {point}"
    )
    payload: Literal["value", "sample", "device"] = Field(
        "sample",
        description=(
            "value: the bare JSON value per point; sample: {value, quality, ts, unit} per point;"
            " device: one JSON object per device poll"
        ),
    )
    qos: Literal[0, 1, 2] = 1
    retain: bool = False

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        try:
            check_publish_topic(v)
        except ValueError as exc:
            raise ValueError(f"bad topic template: {exc}") from None
        return v

    @model_validator(mode="after")
    def _topic_fits_payload(self) -> MqttRoute:
        fields = template_fields(self.topic)
        if self.payload == "device" and "point" in fields:
            raise ValueError("payload 'device' sends one message per device: drop {point}")
        if self.payload != "device" and "point" not in fields:
            raise ValueError(
                f"payload {self.payload!r} sends one message per point: the topic needs {{point}}"
            )
        return self
