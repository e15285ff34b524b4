"""``gateway suggest --browse``: the points of a live server or broker, reached with the connection
settings of a device in a gateway config (``FILE.yaml#device``) instead of a bare URL.

Plant OPC UA servers mostly offer only secure endpoints and want a user; brokers want TLS and a
password. The config already says all that, so the browse takes it from there and connects as
the device's adapter will at run time: `OpcuaClientAdapter` builds the client (policy and mode,
our certificate or the one generated in the pki folder, the server trust list, the user) and
words a refusal; `MqttAdapter` builds the TLS context and words a failed connect. A browse that
works therefore means `gateway run` connects too, and a refused server certificate lands in the
same ``rejected`` folder the operator trusts it from.

The entry is read leniently: an OPC UA device's ``points:`` is not read (while onboarding there
are none yet; an MQTT endpoint's are: its declared points keep their names), the rest is checked
by the protocol's own config model, and the first problem is one line with its file, line and
column. Like `gateway run`, the state folder defaults to ``.protocol-brain`` next
to the config, so ``{state}`` in a pki folder is the one the running gateway uses.

MQTT is sampled, never written to: no birth or will on the status topic, and a client id of its
own (the device's would make the broker drop the running gateway's connection).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from gateway.translator.pointlist import InputError
from gateway.translator.sources import (
    MQTT_SECONDS,
    config_entry,
    read_yaml,
    sample_endpoint,
    walk_objects,
)
from gateway.translator.tokenize import Point

if TYPE_CHECKING:
    from gateway.config.yamlmarks import Marks
    from protocols.mqtt.config import MqttEndpoint
    from protocols.opcua.config import OpcuaClient

M = TypeVar("M", bound=BaseModel)

BROWSABLE = "--browse connects to OPC UA client devices and MQTT endpoints only"


@dataclass(frozen=True, slots=True)
class BrowseOptions:
    """How an MQTT endpoint is sampled (an OPC UA server is browsed whole); ``topic`` None: on
    the filters the endpoint reads points from (its ``points: keys`` subscriptions, its declared
    points' topics)."""

    seconds: float = MQTT_SECONDS
    topic: str | None = None


def browse_device(path: str, device: str, options: BrowseOptions) -> list[Point]:
    """The points of device ``device`` of config ``path``, browsed or sampled live."""
    from gateway.config.model import ENTRY_KEYS, GatewaySection
    from gateway.paths import use_config_state_dir

    doc = read_yaml(path)
    section, entry = config_entry(path, doc.data, device)
    where = f"{path}#{device}"
    for at_path, kept in doc.marks.unresolved.items():  # the connection needs them filled in
        if at_path[:2] == (section, device):
            mark = doc.marks.value(at_path)
            raise InputError(
                f"{path}:{mark.line}:{mark.column}: {', '.join(kept)} cannot be filled in here "
                "(a variable not set in this shell, or a file it cannot read); set it as "
                "`gateway run` has it, to browse"
            )
    protocol, role = entry.get("protocol"), entry.get("role", "client")
    if not isinstance(protocol, str):
        raise InputError(f"{where}: the entry says no protocol: (opcua, mqtt, ...)")
    if (protocol, role) not in (("opcua", "client"), ("mqtt", "client")):
        if protocol == "opcua":
            kind = f"an opcua {role} (this gateway's own server)"
        else:
            kind = f"a {protocol} device (drop --browse to read its points:)"
        raise InputError(f"{where}: {kind} cannot be browsed; {BROWSABLE}")
    # An MQTT endpoint's points: are kept: declared points are named as declared at run time.
    dropped = (*ENTRY_KEYS, "points") if protocol == "opcua" else ENTRY_KEYS
    settings = {k: v for k, v in entry.items() if k not in dropped}
    at = Located(path, doc.marks)
    gateway = at.validate(GatewaySection, doc.data.get("gateway") or {}, ("gateway",)).name
    prefix = (section, device)
    if protocol == "opcua":
        use_config_state_dir(path)
        config = at.validate(_onboarding_model(), settings, prefix, ENTRY_KEYS)
        config = at.local(config, device, prefix)
        return asyncio.run(_browse_opcua(where, device, config, gateway))
    from protocols.mqtt.config import MqttEndpoint

    mqtt = at.local(at.validate(MqttEndpoint, settings, prefix, ENTRY_KEYS), device, prefix)
    return _sample_mqtt(where, device, mqtt, gateway, options)


@dataclass(frozen=True, slots=True)
class Located:
    """Validates parts of one config file; the first problem is an InputError with its place."""

    path: str
    marks: Marks

    def validate(
        self, model: type[M], data: Any, prefix: tuple[str, ...], root_keys: tuple[str, ...] = ()
    ) -> M:
        from gateway.config.errors import MAX_SHOWN, locate, translate
        from gateway.config.references import hide_values

        try:
            return model.model_validate(data)
        except ValidationError as exc:
            findings = translate(
                exc.errors(include_url=False), data, model, prefix=prefix, root_keys=root_keys
            )
            problems = [locate(self.path, self.marks, f) for f in findings]
            if not problems:
                raise InputError(f"{self.path}: {exc}") from None
            first = min(problems, key=lambda p: (p.line, p.column))
            refs = self.marks.references.values()  # a secret filled in is not shown
            raise InputError(hide_values(str(first), refs, MAX_SHOWN)) from None

    def local(self, config: M, entry: str, prefix: tuple[str, ...]) -> M:
        """``config`` (entry ``entry`` under ``prefix``) with its paths read as `gateway run`
        reads them: relative to the config file; state left where the working folder put it
        before is an InputError at its line, as run refuses it (`common.left_behind`)."""
        from gateway.config.common import (
            config_relative,
            left_behind,
            left_behind_text,
            with_local_paths,
        )
        from gateway.config.errors import Finding, locate

        def check(where: tuple[str | int, ...], value: str) -> None:
            if moved := left_behind(self.path, value, entry):
                found = Finding((*prefix, *where), *left_behind_text(value, *moved))
                raise InputError(str(locate(self.path, self.marks, found)))

        local = functools.partial(config_relative, self.path)
        return with_local_paths(config, local, check)  # type: ignore[return-value]


@functools.cache
def _onboarding_model() -> type[OpcuaClient]:
    """`OpcuaClient` without its need for points (the browse is how they are found)."""
    from protocols.opcua.config import OpcuaClient, OpcuaPoint

    class Onboarding(OpcuaClient):
        points: list[OpcuaPoint] = Field(default_factory=list)

    return Onboarding


async def _browse_opcua(where: str, name: str, config: OpcuaClient, gateway: str) -> list[Point]:
    # The adapter's own connection (security, certificate, trust list, user), not a copy.
    from asyncua.ua.uaerrors import UaError

    from gateway.adapter import AdapterContext
    from gateway.bus import Bus
    from protocols.opcua.client import ConnectFailed, OpcuaClientAdapter

    adapter = OpcuaClientAdapter(name, config, AdapterContext(Bus(), gateway))
    try:
        with _quiet("protocols.opcua.pki"):  # its "refused untrusted" line is our error below
            async with adapter.connected() as client:
                try:
                    return await walk_objects(client, where)
                except (OSError, TimeoutError, UaError) as exc:  # the server went away
                    why = f"{type(exc).__name__}: {exc}".rstrip(": ")
                    raise InputError(f"{where}: browse of {config.url} broke off: {why}") from None
    except ConnectFailed as exc:
        raise InputError(f"{where}: cannot browse {config.url}: {exc}") from None


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Only errors from ``logger`` for a while: what it warns about becomes our one line."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _sample_mqtt(
    where: str, name: str, config: MqttEndpoint, gateway: str, options: BrowseOptions
) -> list[Point]:
    from protocols.mqtt.client import MqttError
    from protocols.mqtt.link import describe_connect_error, tls_context

    address = f"{config.host}:{config.effective_port}"
    mqtt_log = logging.getLogger("protocols.mqtt.client")  # where the endpoint says it

    def prepare(client: Any) -> None:
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        if config.tls is not None:
            try:
                what = f"MQTT endpoint {name!r}"
                client.tls_set_context(tls_context(config.tls, what, address, MqttError, mqtt_log))
            except MqttError as exc:
                raise InputError(f"{where}: {exc}") from None
            if config.tls.insecure:
                client.tls_insecure_set(True)

    return sample_endpoint(
        where,
        name,
        config,
        gateway,
        options.topic,
        options.seconds,
        prepare,
        lambda exc: describe_connect_error(exc, address, config.host),
        "check the device's username and password",
    )
