"""`gateway run` started from a shell (umask 022) creates its state files without access for
other users: outboxes hold queued payloads, the shadow device state, the status file the
gateway's situation."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from conftest import HOST, free_port, reaped


def write_config(tmp_path: Path, more: str = "") -> Path:
    """A gateway with one Modbus device and a shadow in the state folder, plus ``more``."""
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {name: modes, status_interval: 0.3}\n"
        "devices:\n"
        f"  plc: {{protocol: modbus, host: {HOST}, port: {free_port()}, timeout: 0.2,"
        " poll_groups: {default: {interval: 1}},"
        " points: [{name: t, table: holding, address: 0, type: int16, access: rw}]}\n"
        "shadow: {path: '{state}/shadow.db'}\n"
        f"{more}"
    )
    return config


def assert_private(paths: list[Path], root: Path) -> None:
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, f"{path.relative_to(root)} is {oct(mode)}: others have access"


def test_state_files_are_not_readable_by_other_users(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "endpoints:\n"
        f"  broker: {{protocol: mqtt, host: {HOST}, port: {free_port()}}}\n"
        "bridges:\n"
        "  - {name: up, from: plc, to: broker, topic: 'p/{point}'}\n",
    )
    state = tmp_path / ".protocol-brain"
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BRAIN_STATE_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", str(config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip
    with reaped(proc):  # type: ignore[arg-type]
        wanted = [state / "outbox-broker.db", state / "shadow.db", state / "status/modes.json"]
        deadline = time.monotonic() + 30
        while not all(p.exists() for p in wanted):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, [str(p) for p in wanted if not p.exists()]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    made = [state, *state.rglob("*")]
    assert len(made) >= 5
    assert_private(made, tmp_path)
    # the owner and the group keep what the shell's umask gave them
    assert stat.S_IMODE((state / "outbox-broker.db").stat().st_mode) == 0o640


def test_a_store_made_by_gateway_shadow_set_is_as_private(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / ".protocol-brain").mkdir(mode=0o750)  # as a gateway run leaves it
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BRAIN_STATE_DIR"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "shadow", "set", "--config", str(config), "plc", "t=5"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
        preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = [p for p in (tmp_path / ".protocol-brain").rglob("*")]
    assert any(p.name == "shadow.db" for p in made), made
    assert_private([tmp_path / ".protocol-brain", *made], tmp_path)
