import json
import subprocess
import sys
from importlib.metadata import EntryPoint
from types import SimpleNamespace

import pytest

from gateway.plugins import ENTRY_POINT_GROUP, PluginError, load_registry


def ep(name: str, value: str, dist: str = "some-plugin") -> EntryPoint:
    return EntryPoint(name, value, ENTRY_POINT_GROUP)._for(SimpleNamespace(name=dist))  # type: ignore[arg-type]


def test_builtins_register_through_the_entry_point_group() -> None:
    registry = load_registry()
    assert {"modbus", "mqtt"} <= set(registry.specs)
    modbus = registry.get("modbus")
    assert "client" in modbus.roles
    assert modbus.dist == "protocol-brain"
    assert registry.get("mqtt").route_model is not None


def test_two_plugins_with_one_name_are_refused() -> None:
    registry = load_registry(
        [
            ep("modbus", "protocols.modbus:SPEC", "protocol-brain"),
            ep("modbus", "protocols.modbus:SPEC", "evil-modbus"),
        ]
    )
    assert "modbus" not in registry.specs
    assert "two plugins register protocol 'modbus'" in registry.errors["modbus"]
    assert "evil-modbus" in registry.errors["modbus"]
    with pytest.raises(PluginError, match="two plugins"):
        registry.get("modbus")


def test_plugin_that_fails_to_import_names_the_extra() -> None:
    registry = load_registry(
        [ep("zigbee", "no_such_zigbee_module:SPEC [zigbee]", "protocol-brain")]
    )
    err = registry.errors["zigbee"]
    assert "failed to import" in err
    assert "pip install 'protocol-brain[zigbee]'" in err
    with pytest.raises(PluginError, match=r"protocol-brain\[zigbee\]"):
        registry.get("zigbee")


def test_entry_point_that_is_not_a_spec_is_refused() -> None:
    registry = load_registry([ep("bogus", "json:dumps")])
    assert "not a ProtocolSpec" in registry.errors["bogus"]


def test_entry_point_name_must_match_spec_name() -> None:
    registry = load_registry([ep("modbus2", "protocols.modbus:SPEC")])
    assert "names a spec called 'modbus'" in registry.errors["modbus2"]


def test_unknown_protocol_lists_installed() -> None:
    with pytest.raises(PluginError, match="unknown protocol 'bacnet'.*modbus"):
        load_registry().get("bacnet")


def test_missing_adapter_library_names_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_registry().get("modbus")
    for name in [m for m in sys.modules if m.split(".")[0] == "pymodbus"] + ["pymodbus"]:
        monkeypatch.setitem(sys.modules, name, None)  # importing pymodbus now fails
    monkeypatch.delitem(sys.modules, "protocols.modbus.client", raising=False)
    with pytest.raises(PluginError, match=r"pip install 'protocol-brain\[modbus\]'"):
        spec.adapter_class("client")


def test_listing_plugins_imports_no_heavy_module() -> None:
    code = (
        "import sys, io, contextlib\n"
        "from gateway.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf): rc = main(['plugins', '--json'])\n"
        "heavy = {'pymodbus', 'paho', 'pint', 'amqtt', 'asyncua', 'aiocoap', 'torch', 'numpy'}\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & heavy)\n"
        "print(heavy); print(buf.getvalue())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, _, rest = out.stdout.partition("\n")
    assert first == "[]"
    listing = json.loads(rest)
    names = {p["name"]: p for p in listing["plugins"]}
    assert names["modbus"]["roles"] == ["client", "server"]
    assert "publish" in names["mqtt"]["capabilities"]
    assert names["modbus"]["status"] == "ok"
