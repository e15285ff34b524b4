"""OSCORE settings.json holds the master secret: it ends 0600 whatever file was there before,
and is written whole (`gateway.storefiles.write_atomic`, shared with the OPC UA key files)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.storefiles import write_atomic
from protocols.coap.config import Oscore
from protocols.coap.server import write_context_dir


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def context(secret: str) -> Oscore:
    return Oscore(sender_id="01", recipient_id="02", master_secret=secret)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_world_readable_settings_file_ends_0600_with_the_new_secret(umask_022: None) -> None:
    base = write_context_dir(context("00" * 16), "coap")
    settings = base / "settings.json"
    settings.chmod(0o644)  # copied in, restored, or left by an older version
    write_context_dir(context("11" * 16), "coap")
    assert mode(settings) == 0o600
    assert json.loads(settings.read_text())["secret_hex"] == "11" * 16
    assert [p.name for p in base.iterdir() if p.name.endswith(".tmp")] == []


def test_the_same_secret_in_a_world_readable_file_is_written_again_0600(umask_022: None) -> None:
    base = write_context_dir(context("00" * 16), "coap")
    settings = base / "settings.json"
    settings.chmod(0o644)
    write_context_dir(context("00" * 16), "coap")
    assert mode(settings) == 0o600
    assert json.loads(settings.read_text())["secret_hex"] == "00" * 16


def test_a_new_settings_file_is_0600(umask_022: None) -> None:
    base = write_context_dir(context("00" * 16), "coap")
    assert mode(base / "settings.json") == 0o600


def test_write_atomic_replaces_the_file_and_its_mode(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    path.chmod(0o666)
    write_atomic(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new" and mode(path) == 0o600
    write_atomic(path, b"cert")  # the default: readable by all (a certificate)
    assert path.read_bytes() == b"cert" and mode(path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_write_atomic_leaves_no_temporary_file_when_it_fails(tmp_path: Path) -> None:
    target = tmp_path / "folder"
    target.mkdir()
    with pytest.raises(OSError):
        write_atomic(target, b"data")  # a folder cannot be replaced by a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
