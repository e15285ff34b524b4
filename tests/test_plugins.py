import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from importlib.metadata import Distribution, EntryPoint
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import reaped, sigterm

from gateway.config import ConfigError, load_config_text
from gateway.plugins import ENTRY_POINT_GROUP, PluginError, ProtocolSpec, load_registry


def ep(name: str, value: str, dist: str = "some-plugin") -> EntryPoint:
    return EntryPoint(name, value, ENTRY_POINT_GROUP)._for(SimpleNamespace(name=dist))  # type: ignore[arg-type]


SPEC_MODULE = """
from pydantic import BaseModel

from gateway.plugins import ProtocolSpec


class Device(BaseModel):
    host: str = "127.0.0.1"


SPEC = ProtocolSpec(
    name={name!r},
    description="a third-party protocol",
    config_model=Device,
    adapters={{"client": {adapter!r}}},
    requires={requires!r},
    extra={extra!r},
)
"""

GOOD_ADAPTER = """
from gateway.adapter import Adapter


class A(Adapter):
    async def run(self) -> None:
        return None
"""


def install_plugin(
    site: Path,
    package: str,
    *,
    dist: str = "audit-jsonfile-protocol",
    name: str = "audit",
    adapter: str = "",
    adapter_module: str = GOOD_ADAPTER,
    requires: tuple[str, ...] = (),
    extra: str | None = None,
) -> list[EntryPoint]:
    """A third-party plugin as pip would leave it in ``site``: its package and its dist-info."""
    (site / package).mkdir(parents=True)
    spec = SPEC_MODULE.format(
        name=name, adapter=adapter or f"{package}.adapter:A", requires=requires, extra=extra
    )
    (site / package / "__init__.py").write_text(spec)
    (site / package / "adapter.py").write_text(textwrap.dedent(adapter_module))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{name} = {package}:SPEC\n")
    (info / "top_level.txt").write_text(f"{package}\n")
    return list(Distribution.at(info).entry_points.select(group=ENTRY_POINT_GROUP))


def with_site(site: Path) -> dict[str, str]:
    """The environment of a process that has the plugins installed in ``site``."""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def run_gateway(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``gateway ARGS`` in a process that has the plugins installed in ``site``."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True, text=True, timeout=60, check=False, env=with_site(site),
    )  # fmt: skip


def run_until_running(site: Path, config: Path) -> tuple[int, str]:
    """``gateway run CONFIG`` until its log says it runs, then SIGTERM: exit code and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=with_site(site),
    )  # fmt: skip
    with reaped(proc):
        timer = threading.Timer(60, proc.kill)  # never hang the test on a gateway that hangs
        timer.start()
        assert proc.stderr is not None
        said = []
        for line in proc.stderr:
            said.append(line)
            if " running: " in line:
                said.append(sigterm(proc, 30))
                break
        timer.cancel()
        return proc.wait(), "".join(said)


def break_spec(site: Path, package: str) -> None:
    """The plugin's spec module now fails to import, as when a library it imports is missing."""
    (site / package / "__init__.py").write_text("import vendor_sdk_xyz\n")


PLC = "  plc: {protocol: modbus, host: 127.0.0.1, port: 1, points: [{name: t, address: 0}]}\n"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for this test's plugins (their packages are forgotten after it)."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / "site").mkdir()
    yield tmp_path / "site"
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_builtins_register_through_the_entry_point_group() -> None:
    registry = load_registry()
    assert {"modbus", "mqtt"} <= set(registry.specs)
    modbus = registry.get("modbus")
    assert "client" in modbus.roles
    assert modbus.dist == "protocol-brain"
    assert registry.get("mqtt").route_model is not None


def test_two_third_party_plugins_with_one_name_are_both_refused() -> None:
    registry = load_registry(
        [
            ep("ldjson", "protocols.modbus:SPEC", "one-ldjson"),
            ep("ldjson", "protocols.modbus:SPEC", "other-ldjson"),
        ]
    )
    assert "ldjson" not in registry.specs
    assert "two plugins register protocol 'ldjson'" in registry.errors["ldjson"]
    assert "one-ldjson" in registry.errors["ldjson"]
    assert "other-ldjson" in registry.errors["ldjson"]
    with pytest.raises(PluginError, match="two plugins"):
        registry.get("ldjson")


def test_a_third_party_plugin_cannot_take_a_builtin_name() -> None:
    registry = load_registry(
        [
            ep("modbus", "no_such_evil_module:SPEC", "evil-modbus"),  # refused, never imported
            ep("modbus", "protocols.modbus:SPEC", "protocol-brain"),
            ep("modbus", "protocols.mqtt:SPEC", "other-modbus"),
        ]
    )
    assert registry.get("modbus").dist == "protocol-brain"
    assert "client" in registry.get("modbus").roles
    err = registry.errors["modbus"]
    assert "\n" not in err
    assert "'modbus' from evil-modbus (no_such_evil_module:SPEC) is refused" in err
    assert "'modbus' from other-modbus" in err
    assert "built-in protocol of protocol-brain" in err
    assert "two plugins" not in err and "failed to import" not in err


def test_gateway_plugins_keeps_the_builtin_and_names_the_intruder(site: Path) -> None:
    install_plugin(site, "evil_modbus", dist="evil-modbus", name="modbus")
    done = run_gateway(site, "plugins")
    assert done.returncode == 1, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("modbus")]
    assert len(rows) == 2, done.stdout
    assert rows[0].rstrip().endswith("ok") and "client,server" in rows[0]
    assert "evil-modbus" in rows[1] and "is a built-in protocol of protocol-brain" in rows[1]


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


def test_third_party_install_hint_names_its_own_distribution(site: Path) -> None:
    eps = install_plugin(site, "audit_hint", requires=("vendor_sdk_xyz",), extra="vendor")
    spec = load_registry(eps).get("audit")
    assert spec.dist == "audit-jsonfile-protocol"
    assert spec.missing_requirements() == ["vendor_sdk_xyz"]
    assert spec.install_hint() == "pip install 'audit-jsonfile-protocol[vendor]'"
    bare = ProtocolSpec(**{**spec.__dict__, "extra": None})
    assert "protocol-brain" not in bare.install_hint()
    assert "'vendor_sdk_xyz'" in bare.install_hint()
    assert "audit-jsonfile-protocol" in bare.install_hint()
    # The conformance kit uses the spec as imported, without the entry point's distribution.
    unlisted = ProtocolSpec(**{**spec.__dict__, "dist": None})
    assert unlisted.install_hint() == "pip install 'audit-jsonfile-protocol[vendor]'"


def test_builtin_install_hint_keeps_the_gateway_package() -> None:
    from protocols.modbus import SPEC

    assert load_registry().get("modbus").install_hint() == "pip install 'protocol-brain[modbus]'"
    assert SPEC.install_hint() == "pip install 'protocol-brain[modbus]'"


def test_gateway_plugins_names_the_plugins_distribution(site: Path) -> None:
    install_plugin(site, "audit_cli", requires=("vendor_sdk_xyz",), extra="vendor")
    done = run_gateway(site, "plugins")
    line = next(line for line in done.stdout.splitlines() if line.startswith("audit"))
    assert "needs vendor_sdk_xyz: pip install 'audit-jsonfile-protocol[vendor]'" in line, line


def test_missing_library_of_a_third_party_adapter_names_its_distribution(site: Path) -> None:
    eps = install_plugin(
        site, "audit_lib", adapter_module="import vendor_sdk_xyz\n", extra="vendor"
    )
    with pytest.raises(PluginError) as err:
        load_registry(eps).get("audit").adapter_class("client")
    assert str(err.value) == (
        "protocol 'audit' (from audit-jsonfile-protocol) needs vendor_sdk_xyz: "
        "pip install 'audit-jsonfile-protocol[vendor]'"
    )


BROKEN_ADAPTERS = {
    "missing_class": (
        "{pkg}.adapter:Nope",
        GOOD_ADAPTER,
        "adapter '{pkg}.adapter:Nope' for role 'client': {pkg}.adapter has no 'Nope'",
    ),
    "name_error": (
        "",
        "import os\nx = undefined_name\n",
        "module failed to import: NameError: name 'undefined_name' is not defined"
        " ({site}/{pkg}/adapter.py:2)",
    ),
    "syntax_error": ("", "def broken(:\n", "module failed to import: SyntaxError: "),
    "not_an_adapter": ("", "class A:\n    pass\n", "A is a class, not a subclass of "),
    "a_function": ("", "def A():\n    pass\n", "A is a function, not a subclass of "),
    "abstract": (
        "",
        "from gateway.adapter import Adapter\nclass A(Adapter):\n    pass\n",
        "A does not implement run",
    ),
    "no_module": ("{pkg}.nowhere:A", GOOD_ADAPTER, "there is no module '{pkg}.nowhere'"),
    "own_module_missing": (
        "",
        "from {pkg} import helpers\n",
        "module failed to import: ImportError: cannot import name 'helpers'",
    ),
    "not_module_class": ("{pkg}.adapter", GOOD_ADAPTER, "is not a 'module:Class' string"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_ADAPTERS))
def test_a_broken_adapter_is_one_plugin_error_naming_the_plugin(site: Path, case: str) -> None:
    pkg = f"audit_{case}"
    adapter, module, expected = (x.format(pkg=pkg, site=site) for x in BROKEN_ADAPTERS[case])
    eps = install_plugin(site, pkg, adapter=adapter, adapter_module=module)
    spec = load_registry(eps).get("audit")
    with pytest.raises(PluginError) as err:
        spec.adapter_class("client")
    message = str(err.value)
    assert message.startswith("protocol 'audit' (from audit-jsonfile-protocol): adapter "), message
    assert expected in message
    assert "\n" not in message


def test_a_working_third_party_adapter_resolves(site: Path) -> None:
    from gateway.adapter import Adapter

    eps = install_plugin(site, "audit_good")
    cls = load_registry(eps).get("audit").adapter_class("client")
    assert issubclass(cls, Adapter) and cls.__module__ == "audit_good.adapter"


def test_gateway_run_with_a_broken_adapter_says_one_line(site: Path, tmp_path: Path) -> None:
    install_plugin(site, "audit_run", adapter="audit_run.adapter:Nope")
    config = tmp_path / "plant.yaml"
    config.write_text("gateway: {name: edge}\ndevices:\n  dev1: {protocol: audit}\n")
    done = run_gateway(site, "run", str(config))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: protocol 'audit' (from audit-jsonfile-protocol): adapter "
        "'audit_run.adapter:Nope' for role 'client': audit_run.adapter has no 'Nope'"
    ), done.stderr


def test_the_import_lines_of_the_plugin_guide_work() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    lines = [
        line.strip()
        for line in guide.splitlines()
        if line.strip().startswith(("from gateway", "import gateway"))
    ]
    assert len(lines) >= 4, lines
    for line in lines:
        exec(line, {})  # noqa: S102 - the guide's own import lines


def test_plugin_load_errors_name_the_distribution() -> None:
    registry = load_registry(
        [
            ep("bogus", "json:dumps", "bogus-dist"),
            ep("zz", "no_such_zz_module:SPEC", "zz-dist"),
            ep("modbus2", "protocols.modbus:SPEC", "m2-dist"),
        ]
    )
    assert registry.errors["bogus"] == (
        "protocol plugin 'bogus' from bogus-dist (json:dumps) is a function, not a ProtocolSpec"
    )
    assert registry.errors["zz"].startswith("protocol plugin 'zz' from zz-dist failed to import")
    assert registry.errors["modbus2"] == (
        "protocol plugin 'modbus2' from m2-dist: its entry point 'modbus2' names a spec called "
        "'modbus'"
    )


def test_validate_and_run_say_once_which_plugin_package_was_refused(
    site: Path, tmp_path: Path
) -> None:
    # Before, only `gateway plugins` said it; run and validate logged it at debug level.
    install_plugin(site, "evil_modbus", dist="evil-modbus", name="modbus")
    install_plugin(site, "audit_refused")
    break_spec(site, "audit_refused")
    config = tmp_path / "plant.yaml"
    config.write_text(f"devices:\n{PLC}")
    done = run_gateway(site, "validate", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: protocol plugin 'modbus' from evil-modbus (evil_modbus:SPEC) is refused: "
        "'modbus' is a built-in protocol of protocol-brain, which is used. Uninstall "
        "evil-modbus or give its protocol another name.",
        # where it failed, and that the package does not bring the library (not "reinstall")
        "warning: protocol plugin 'audit' from audit-jsonfile-protocol failed to import "
        "(No module named 'vendor_sdk_xyz' "
        f"({site / 'audit_refused' / '__init__.py'}:1)); audit-jsonfile-protocol does not "
        "install 'vendor_sdk_xyz': install that library (pip)",
    ]
    assert done.stdout.strip() == f"{config}: ok (1 device or endpoint, 1 point, 0 bridges)"
    code, log = run_until_running(site, config)
    assert code == 0, log
    # the plugin warnings (the Modbus device at port 1 may add its own "cannot connect")
    warnings = [line for line in log.splitlines() if " WARNING gateway: " in line]
    assert len(warnings) == 2, log
    assert "protocol plugin 'modbus' from evil-modbus (evil_modbus:SPEC) is refused" in warnings[0]
    assert "protocol plugin 'audit' from audit-jsonfile-protocol failed to import" in warnings[1]
    assert "running: 1 adapter, 0 bridges" in log and "Traceback" not in log


@pytest.mark.parametrize("broken", ["spec", "adapter"])
def test_a_disabled_device_of_a_broken_plugin_does_not_stop_the_gateway(
    site: Path, tmp_path: Path, broken: str
) -> None:
    pkg = f"audit_off_{broken}"
    install_plugin(site, pkg, adapter=f"{pkg}.adapter:Nope" if broken == "adapter" else "")
    if broken == "spec":
        break_spec(site, pkg)
    config = tmp_path / "plant.yaml"
    config.write_text(f"devices:\n{PLC}  dev1: {{protocol: audit, enabled: false}}\n")
    done = run_gateway(site, "validate", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"{config}: ok (1 device or endpoint, 1 point, 0 bridges; disabled: 1 device or endpoint)"
    )
    code, log = run_until_running(site, config)
    assert code == 0, log
    assert "running: 1 adapter, 0 bridges; not started (enabled: false): dev1" in log
    assert "Traceback" not in log and "error" not in log.lower()
    # Enabled, the same file is refused, by validate and run alike.
    config.write_text(f"devices:\n{PLC}  dev1: {{protocol: audit}}\n")
    assert run_gateway(site, "validate", str(config)).returncode == 1
    assert run_gateway(site, "run", str(config)).returncode == 1


def test_validate_refuses_a_broken_adapter_in_the_words_of_run(site: Path, tmp_path: Path) -> None:
    install_plugin(site, "audit_check", adapter="audit_check.adapter:Nope")
    config = tmp_path / "plant.yaml"
    config.write_text(f"devices:\n{PLC}  dev1: {{protocol: audit}}\n")
    refused = run_gateway(site, "run", str(config))
    said = refused.stderr.strip().removeprefix("error: ")
    assert said.startswith("protocol 'audit' (from audit-jsonfile-protocol): adapter "), said
    done = run_gateway(site, "validate", str(config))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{config}:3:20: devices.dev1.protocol: found {said}; expected a plugin whose adapter "
        "can be imported (fix or reinstall audit-jsonfile-protocol, or set enabled: false on "
        "this entry)",
        f"{config}: 1 problem",
    ]


@pytest.mark.parametrize("case", sorted(BROKEN_ADAPTERS))
def test_every_broken_adapter_is_a_problem_of_the_entry(site: Path, case: str) -> None:
    pkg = f"audit_cfg_{case}"
    adapter, module, _ = (x.format(pkg=pkg, site=site) for x in BROKEN_ADAPTERS[case])
    registry = load_registry(install_plugin(site, pkg, adapter=adapter, adapter_module=module))
    with pytest.raises(PluginError) as run_says:
        registry.get("audit").adapter_class("client")
    text = "devices:\n  a: {protocol: audit}\n  b: {protocol: audit}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gw.yaml", registry, check_adapters=True)
    (p,) = info.value.problems  # once for the protocol, not for each device
    assert (p.dotted, p.found) == ("devices.a.protocol", str(run_says.value))
    # A disabled entry's adapter is not needed: not checked.
    quiet = text.replace("audit}", "audit, enabled: false}")
    assert load_config_text(quiet, "gw.yaml", registry, check_adapters=True).disabled == ("a", "b")


@pytest.mark.parametrize("how", ["import", "requires"])
def test_validate_warns_when_a_plugins_library_is_missing(
    site: Path, tmp_path: Path, how: str
) -> None:
    pkg = f"audit_lib_{how}"
    if how == "import":  # found by importing the adapter, as run does
        install_plugin(site, pkg, adapter_module="import vendor_sdk_xyz\n", extra="vendor")
    else:  # declared in requires: found without importing the adapter, which would raise
        install_plugin(
            site,
            pkg,
            adapter_module="raise RuntimeError('imported')\n",
            requires=("vendor_sdk_xyz",),
            extra="vendor",
        )
    config = tmp_path / "plant.yaml"
    config.write_text(f"devices:\n{PLC}  dev1: {{protocol: audit}}\n")
    done = run_gateway(site, "validate", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"warning: {config}:3:20: devices.dev1.protocol: protocol 'audit' (from "
        "audit-jsonfile-protocol) needs vendor_sdk_xyz: pip install "
        "'audit-jsonfile-protocol[vendor]' (gateway run will not start while an enabled "
        "entry needs it; enabled: false on this entry runs the rest)"
    ]


def test_a_plugin_whose_points_are_dicts_is_told_so(site: Path, tmp_path: Path) -> None:
    install_plugin(site, "audit_dicts")
    (site / "audit_dicts" / "__init__.py").write_text(
        SPEC_MODULE.format(
            name="audit", adapter="audit_dicts.adapter:A", requires=(), extra=None
        ).replace('host: str = "127.0.0.1"', 'host: str = "127.0.0.1"\n    points: list[dict] = []')
    )
    config = tmp_path / "plant.yaml"
    config.write_text(
        "devices:\n  d1: {protocol: audit, points: [{name: t, unit: degC}]}\n"
        "endpoints:\n  broker: {protocol: mqtt, host: 127.0.0.1}\n"
        "bridges:\n  - {name: up, from: d1, to: broker, topic: 'x/{point}'}\n"
    )
    done = run_gateway(site, "validate", str(config))
    assert done.returncode == 1
    assert "bridges[0].from: found d1, whose points are not models with name and unit" in (
        done.stderr
    )


def test_run_refuses_a_missing_required_library_as_validate_says(
    site: Path, tmp_path: Path
) -> None:
    # The adapter imports its library later (in run): before, `gateway run` started although
    # validate said it would not.
    install_plugin(site, "audit_req", requires=("vendor_sdk_xyz",), extra="vendor")
    config = tmp_path / "plant.yaml"
    config.write_text("devices:\n  dev1: {protocol: audit}\n")
    done = run_gateway(site, "run", str(config))
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: protocol 'audit' (from audit-jsonfile-protocol) needs vendor_sdk_xyz: "
        "pip install 'audit-jsonfile-protocol[vendor]'"
    )


BUGGY_ADAPTER = """
from gateway.adapter import Adapter


class A(Adapter):
    def __init__(self, name, config, context):
        super().__init__(name, config, context)
        {init}

    def points(self):
        {points}

    def attach(self, bridge):
        {attach}

    async def run(self) -> None:
        return None
"""


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("init", "device 'dev1' (audit) could not start: KeyError: 'baudrate' ("),
        ("points", "device 'dev1' (audit) could not start: points() failed: no map"),
        (
            "attach",
            "device 'dev1' (audit) could not start: attach(bridge 'down') failed: "
            "AttributeError: 'str' object has no attribute 'id' (",
        ),
    ],
)
def test_a_plugins_bug_at_start_is_one_line_naming_the_entry(
    site: Path, tmp_path: Path, where: str, said: str
) -> None:
    code = {
        "init": "{}['baudrate']",
        "points": "raise ValueError('no map')",
        "attach": "[p.id for p in ['a']]",
    }
    body = {k: code[k] if k == where else ("return []" if k == "points" else "pass") for k in code}
    pkg = f"audit_bug_{where}"
    install_plugin(site, pkg, adapter_module=BUGGY_ADAPTER.format(**body))
    spec = (site / pkg / "__init__.py").read_text()  # a target: it takes bridges (attach)
    spec = spec.replace("    extra=None,\n", "    extra=None,\n    route_model=Device,\n")
    (site / pkg / "__init__.py").write_text(spec)
    config = tmp_path / "plant.yaml"
    config.write_text(
        f"devices:\n{PLC}  dev1: {{protocol: audit}}\n"
        "bridges:\n  - {name: down, from: plc, to: dev1}\n"
    )
    done = run_gateway(site, "run", str(config))
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {said}"), done.stderr
    assert "Traceback" not in done.stderr
    if where != "points":  # a bug's type and place: the file and line it was raised at
        assert f"audit_bug_{where}/adapter.py:" in last, last


def test_gateway_plugins_json_says_which_protocols_can_be_a_bridge_target() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "plugins", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    rows = {row["name"]: row for row in json.loads(done.stdout)["plugins"]}
    # servers take per-role route options (route_models), MQTT one for all roles
    assert {name for name, row in rows.items() if row["target"]} >= {
        "modbus", "opcua", "coap", "mqtt",
    }  # fmt: skip


def test_a_name_missing_from_an_installed_module_is_not_called_a_missing_library(
    site: Path,
) -> None:
    install_plugin(site, "audit_badname")
    (site / "audit_badname" / "__init__.py").write_text("from json import does_not_exist\n")
    done = run_gateway(site, "plugins")
    assert done.returncode == 1
    assert "cannot import name 'does_not_exist' from 'json'" in done.stdout, done.stdout
    assert "does not install" not in done.stdout  # json is there: the plugin is broken
    assert "install it with: reinstall audit-jsonfile-protocol" in done.stdout
