"""Limits on desired state, and what a flood of metadata keys costs (docs/shadow.md).

60 MQTT updates of 500 new keys each (no points of the device: metadata) once stalled the shadow
for over an hour: nothing capped the document, and every key's unknown_point error was a
transaction of its own that loaded and saved the whole document. The costs here are counted in
store transactions, not measured in seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, modbus_device_yaml, wait_for
from test_e2e_modbus_mqtt import Collector
from test_opcua_server import running_gateway

from gateway.config.model import ShadowSection
from gateway.shadow import store as store_module
from gateway.shadow.service import ShadowService
from gateway.shadow.store import ShadowError, ShadowStore
from protocols.modbus.simulator import Simulator

BASE = "site/things/pump/shadow"


def config(port: int, db: Path, mqtt: MosquittoBroker | None = None, limits: str = "") -> str:
    """One Modbus device polled once (no readings to count meanwhile), its shadow in ``db``."""
    endpoints = shadow_mqtt = ""
    if mqtt is not None:
        endpoints = (
            f"endpoints:\n  broker: {{protocol: mqtt, host: {HOST}, port: {mqtt.port}, "
            "reconnect: {initial: 0.05, max: 0.2}}\n"
        )
        shadow_mqtt = '  mqtt: {endpoint: broker, prefix: "site/things"}\n'
    return f"""
gateway: {{name: shadow-limits, status_interval: 0}}
devices:
{modbus_device_yaml(port, poll_groups="{slow: {interval: 3600}}")}
    points:
      - {{name: speed, table: holding, address: 10, type: int16, access: rw, low: 0, high: 100,
         poll: slow}}
{endpoints}
shadow:
  path: {db}
  poll_interval: 0.1
{limits}{shadow_mqtt}"""


class Transactions:
    """Counts the store's transactions (each loads and saves what it changes)."""

    def __init__(self) -> None:
        self.count = 0
        self.after_stop = 0
        self.stopping = False


@contextmanager
def counted_transactions(monkeypatch: pytest.MonkeyPatch) -> Iterator[Transactions]:
    seen = Transactions()
    original: Callable[..., Any] = ShadowStore._transaction

    @contextmanager
    def counting(self: ShadowStore) -> Iterator[Any]:
        seen.count += 1
        seen.after_stop += seen.stopping
        with original(self) as conn:
            yield conn

    monkeypatch.setattr(ShadowStore, "_transaction", counting)
    yield seen


def flood(updates: int, keys: int, value: str = "v" * 80) -> list[dict[str, Any]]:
    """The attack, scaled down: each update brings ``keys`` new desired keys, none a point."""
    return [
        {"state": {"desired": {f"k{i}_{j}_padpad": value for j in range(keys)}}}
        for i in range(updates)
    ]


async def test_a_flood_of_metadata_keys_costs_a_few_transactions_per_update(
    simulator: Simulator,
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    collector = Collector(mosquitto, f"{BASE}/#")
    requests = flood(10, 50, "v" * 40)  # 500 keys, about 33 KB: within the default limits
    gw = config(device.port, tmp_path / "s.db", mosquitto)
    try:
        with counted_transactions(monkeypatch) as seen:
            async with running_gateway(gw) as gateway:
                shadow = gateway.shadow
                assert isinstance(shadow, ShadowService)
                await wait_for(lambda: shadow.state("pump") is not None, message="a reading")
                await wait_for(lambda: gateway.adapters["broker"].status()["connected"])
                await asyncio.sleep(0.3)  # the adapter's SUBACK
                before = seen.count
                for body in requests:  # back to back, as the attack did
                    collector.client.publish(f"{BASE}/update", json.dumps(body), qos=1)

                def recorded() -> int:
                    doc = shadow.state("pump")
                    errors = doc.errors.values() if doc is not None else []
                    return sum(e["status"] == "unknown_point" for e in errors)

                await wait_for(lambda: recorded() == 500, timeout=30, message="500 recorded")
                await wait_for(lambda: len(collector.on(f"{BASE}/update/accepted")) == 10)
                # one update and one recording of its errors each, give or take a merge:
                # not one transaction per key (500), each loading the whole document
                assert seen.count - before <= 2 * len(requests) + 3, seen.count - before

                # a legitimate get is answered, metadata out of the delta
                collector.client.publish(f"{BASE}/get", '{"clientToken": "after"}', qos=1)
                got = await wait_for(lambda: collector.last(f"{BASE}/get/accepted"))
                assert got["clientToken"] == "after"
                assert len(got["state"]["desired"]) == 500 and "delta" not in got["state"]
                assert not collector.on(f"{BASE}/update/delta")  # no point among them

                # Again with a point: the keys already recorded are not recorded again.
                before = seen.count
                again = {"state": {"desired": {"speed": 40, "k0_0_padpad": "v" * 40}}}
                collector.client.publish(f"{BASE}/update", json.dumps(again), qos=1)
                await wait_for(lambda: device.get_registers("holding", 10) == [40])
                await wait_for(lambda: not shadow.status()["writing"], message="writes done")
                doc = await shadow.get("pump")
                assert doc.errors["k0_0_padpad"]["status"] == "unknown_point"
                assert recorded() == 500 and set(doc.delta) <= {"speed"}
                assert seen.count - before <= 4, seen.count - before
    finally:
        collector.close()


async def test_an_update_past_a_limit_is_rejected_and_changes_nothing(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    collector = Collector(mosquitto, f"{BASE}/update/+")
    limits = "  max_desired_keys: 3\n  max_desired_bytes: 300\n"
    gw = config(device.port, tmp_path / "s.db", mosquitto, limits)
    try:
        async with running_gateway(gw) as gateway:
            shadow = gateway.shadow
            assert isinstance(shadow, ShadowService)
            await wait_for(lambda: gateway.adapters["broker"].status()["connected"])
            await asyncio.sleep(0.3)  # the adapter's SUBACK
            first = {"state": {"desired": {"area": "north", "line": 2}}}
            collector.client.publish(f"{BASE}/update", json.dumps(first), qos=1)
            await wait_for(lambda: collector.on(f"{BASE}/update/accepted"), message="accepted")
            kept = await shadow.get("pump")

            over = [
                ({"a": 1, "b": 2}, "would have 4 keys, over the limit of 3"),
                (
                    {"note": "x" * 300},
                    "over the limit of 300 (shadow.max_desired_bytes in the config)",
                ),
            ]
            for i, (desired, said) in enumerate(over):
                body = {"state": {"desired": desired}, "clientToken": f"t{i}"}
                collector.client.publish(f"{BASE}/update", json.dumps(body), qos=1)
                reply = await wait_for(
                    lambda i=i: collector.on(f"{BASE}/update/rejected")[i:],  # type: ignore[misc]
                    message=said,
                )
                assert reply[0]["code"] == 413 and said in reply[0]["message"], reply
                assert reply[0]["clientToken"] == f"t{i}"
                doc = await shadow.get("pump")
                assert doc.desired == kept.desired and doc.version == kept.version
            assert len(collector.on(f"{BASE}/update/accepted")) == 1
    finally:
        collector.close()


async def test_a_stop_does_not_wait_for_recording_errors(
    simulator: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM mid-flood: the errors still to record are one transaction, not one per key."""
    device = await simulator.add_device(name="pump")
    device.set_registers("holding", 10, [5])
    with counted_transactions(monkeypatch) as seen:
        async with running_gateway(config(device.port, tmp_path / "s.db")) as gateway:
            shadow = gateway.shadow
            assert isinstance(shadow, ShadowService)
            updates = [  # 900 keys, 22 KB; all queued at once, as a burst of requests is
                asyncio.create_task(shadow.update("pump", body["state"]["desired"]))
                for body in flood(15, 60, "v")
            ]
            await asyncio.gather(*updates)  # accepted: the errors are still to record
            seen.stopping = True
        assert seen.after_stop <= 4, seen.after_stop  # the last readings, errors, a merge
    doc = ShadowStore(str(tmp_path / "s.db")).get("pump")
    assert len(doc.desired) == 900  # accepted: in the file
    assert {e["status"] for e in doc.errors.values()} <= {"unknown_point"}


# -- the store ----------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> ShadowStore:
    return ShadowStore(str(tmp_path / "shadow.db"), max_desired_keys=3, max_desired_bytes=200)


def test_the_store_refuses_a_desired_state_past_its_limits(store: ShadowStore) -> None:
    store.update("pump", desired={"a": 1, "b": 2})
    before = store.get("pump")
    with pytest.raises(ShadowError, match=r"would have 4 keys, over the limit of 3"):
        store.update("pump", desired={"c": 3, "d": 4})
    with pytest.raises(
        ShadowError, match=r"over the limit of 200 \(shadow.max_desired_bytes in the config\)"
    ):
        store.update("pump", desired={"a": "x" * 200})
    with pytest.raises(ShadowError, match=r"over the limit"):  # nested keys count in bytes
        store.update("pump", desired={"c": {f"n{i}": i for i in range(40)}})
    after = store.get("pump")
    assert (after.desired, after.version, after.metadata) == (
        before.desired,
        before.version,
        before.metadata,
    )
    # up to the limit, and changing or deleting keys, is fine
    assert store.update("pump", desired={"c": 3, "a": None, "b": 5}).desired == {"b": 5, "c": 3}


def test_a_document_past_a_lowered_limit_can_still_shrink(tmp_path: Path) -> None:
    path = str(tmp_path / "shadow.db")
    ShadowStore(path).update("pump", desired={f"k{i}": i for i in range(10)})
    store = ShadowStore(path, max_desired_keys=5)
    with pytest.raises(ShadowError, match="11 keys"):
        store.update("pump", desired={"new": 1})
    assert len(store.update("pump", desired={"k0": None, "k1": 100}).desired) == 9
    assert store.get("pump").desired["k1"] == 100


def test_the_byte_limit_counts_utf8_not_escapes(tmp_path: Path) -> None:
    """max_desired_bytes says bytes of compact JSON: text in another script counted 6 bytes a
    character (\\uXXXX), so a label in Greek hit the limit at a third of its size."""
    store = ShadowStore(str(tmp_path / "shadow.db"), max_desired_bytes=40)
    label = "αντλία-1"  # 8 characters, 15 bytes in UTF-8
    assert store.update("pump", desired={"label": label}).desired == {"label": label}
    with pytest.raises(ShadowError, match="max_desired_bytes"):
        store.update("pump", desired={"label": label * 3})


def test_errors_of_many_keys_are_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ShadowStore(str(tmp_path / "shadow.db"))
    store.update("pump", desired={f"k{i}": i for i in range(300)} | {"speed": 7})
    with counted_transactions(monkeypatch) as seen:
        errors: dict[str, Any] = {f"k{i}": (i, "unknown_point", "metadata") for i in range(300)}
        errors["gone"] = ("x", "unknown_point", "no longer desired: not recorded")
        errors["k5"] = (999, "unknown_point", "another value than desired: not recorded")
        doc = store.set_errors("pump", errors)
        assert seen.count == 1
        assert len(doc.errors) == 299 and "gone" not in doc.errors and "k5" not in doc.errors
        assert doc.delta == {"k5": 5, "speed": 7}
        doc = store.set_errors("pump", {"k1": None, "speed": (7, "out_of_range", "too fast")})
        assert seen.count == 2 and "k1" not in doc.errors and doc.errors["speed"]["value"] == 7
    assert store.get("pump").errors == doc.errors


def test_the_config_defaults_are_the_store_s() -> None:
    section = ShadowSection()
    assert section.max_desired_keys == store_module.MAX_DESIRED_KEYS == 1000
    assert section.max_desired_bytes == store_module.MAX_DESIRED_BYTES == 65_536


def test_shadow_set_refuses_past_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "devices:\n  pump: {protocol: modbus, host: 127.0.0.1, points: [{name: s, address: 0}]}\n"
        "shadow: {path: shadow.db, max_desired_keys: 2}\n"
    )
    assert main(["shadow", "set", "pump", "a=1", "b=2", "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["shadow", "set", "pump", "c=3", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert (
        "would have 3 keys, over the limit of 2 (shadow.max_desired_keys in the config)" in err
    ), err
    assert ShadowStore(str(tmp_path / "shadow.db")).get("pump").desired == {"a": 1, "b": 2}
