"""The state folder: templates, and its default next to the config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.paths import STATE_ENV, state_path, use_config_state_dir
from gateway.uplink.outbox import OutboxConfig
from protocols.coap.config import Oscore
from protocols.opcua.config import ClientSecurity, ServerSecurity

CONFIG = """\
devices:
  cloud:
    protocol: mqtt
    host: 127.0.0.1
    port: 1
"""


def test_templates_fill_state_and_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(STATE_ENV, str(tmp_path / "st"))
    assert state_path("{state}/pki/{name}", "plc") == tmp_path / "st" / "pki" / "plc"
    assert OutboxConfig().file_for("cloud") == tmp_path / "st" / "outbox-cloud.db"
    oscore = Oscore(sender_id="01", recipient_id="02", master_secret="00" * 16)
    assert state_path(oscore.state_dir, "peer") == tmp_path / "st" / "oscore" / "peer"
    for sec in (ServerSecurity(), ClientSecurity()):
        assert state_path(sec.pki_dir, "ua") == tmp_path / "st" / "pki" / "ua"


def test_config_folder_is_the_default_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "site" / "gateway.yaml"
    monkeypatch.delenv(STATE_ENV)
    use_config_state_dir(cfg)
    assert os.environ[STATE_ENV] == str(tmp_path / "site" / ".protocol-brain")
    monkeypatch.setenv(STATE_ENV, "/elsewhere")
    use_config_state_dir(cfg)
    assert os.environ[STATE_ENV] == "/elsewhere"


def test_status_started_elsewhere_looks_next_to_the_config(tmp_path: Path) -> None:
    """A service started with cwd / must not look for (or write) its outbox in /.protocol-brain."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "gateway.yaml").write_text(CONFIG, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != STATE_ENV}
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "status", str(site / "gateway.yaml"), "--json"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (row,) = json.loads(out.stdout)["outboxes"]
    assert row["path"] == str(site / ".protocol-brain" / "outbox-cloud.db")
