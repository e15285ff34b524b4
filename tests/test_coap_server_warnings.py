"""A CoAP server that lets anyone write says so: once at start, and in ``gateway validate``.

Without OSCORE (or with ``require: false``) a PUT needs no authentication, and the server binds
every address by default: the warning is the only place that says so plainly."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HOST
from test_coap_server import config, plant

from gateway.config import load_config_text
from protocols.modbus.simulator import Simulator

SECRET = "0102030405060708090a0b0c0d0e0f10"


def oscore(tmp_path: Path, require: str = "") -> str:
    context = (
        f"{{sender_id: '01', recipient_id: '02', master_secret: '{SECRET}', "
        f"state_dir: '{tmp_path}/server'}}"
    )
    return f", security: {{oscore: {context}{require}}}"


def warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "protocols.coap.server" and r.levelno == logging.WARNING
    ]


async def test_an_unsecured_server_with_writable_points_warns_once_at_start(
    simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with plant(simulator) as p:
        [line] = warned(caplog)
        assert line.startswith("coap: CoAP server without OSCORE: ")
        # level and enable are rw; temp is read-only
        assert f"anyone who can reach {HOST}:{p.port} can write 2 points" in line
        assert "add OSCORE (security:) or set writable: false" in line
        assert "docs/coap-security.md" in line


async def test_a_server_with_oscore_does_not_warn(
    simulator: Simulator, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING)
    async with plant(simulator, oscore(tmp_path)):
        assert warned(caplog) == []


def validate_warnings(text: str) -> list[str]:
    return list(load_config_text(text, check_adapters=True).warnings)


def test_validate_warns_about_an_unsecured_writable_server(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config(5020, 5683))
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stderr.splitlines() if "OSCORE" in x]
    assert line.startswith(f"warning: {path}:")
    assert f"endpoints.coap: CoAP server without OSCORE: anyone who can reach {HOST}:5683 " in line
    assert "can write 2 points" in line


def test_validate_says_nothing_for_a_read_only_or_protected_server(tmp_path: Path) -> None:
    plain = config(5020, 5683)
    read_only = plain.replace("to: coap}", "to: coap, writable: false}")
    assert read_only != plain
    assert validate_warnings(read_only) == []
    assert validate_warnings(config(5020, 5683, oscore(tmp_path))) == []
    # only the read-only point selected
    assert validate_warnings(plain.replace("to: coap}", "to: coap, points: temp}")) == []


def test_validate_warns_when_oscore_is_not_required(tmp_path: Path) -> None:
    [line] = validate_warnings(config(5020, 5683, oscore(tmp_path, ", require: false")))
    assert "CoAP server with OSCORE not required" in line
    assert "set security.require: true" in line
