"""The OSCORE context folder across restarts: sequence numbers restart only under new keys.

A reused sequence number under the same keys reuses a nonce (RFC 8613), so a damaged
settings file must not reset them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocols.coap.config import Oscore
from protocols.coap.server import write_context_dir

SEQUENCE = '{"next-to-send": 5000}'


def context(secret: str = "00" * 16) -> Oscore:
    return Oscore(sender_id="01", recipient_id="02", master_secret=secret)


def started(tmp_path: Path, damage: bytes | None = None) -> Path:
    """The folder after a first start, a sequence number in use, then ``damage`` written
    over settings.json."""
    base = write_context_dir(context(), "coap")
    assert base.is_relative_to(tmp_path)
    (base / "sequence.json").write_text(SEQUENCE)
    if damage is not None:
        (base / "settings.json").write_bytes(damage)
    return base


@pytest.mark.parametrize(
    "damage",
    [b'{"hello": 1}', b"", b"\xff\xfe\x00garbage", b"{not json"],
    ids=["other json", "empty", "not utf-8", "not json"],
)
def test_a_damaged_settings_file_keeps_the_sequence_numbers(
    tmp_path: Path, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    base = started(tmp_path, damage)
    write_context_dir(context(), "coap")
    assert (base / "sequence.json").read_text() == SEQUENCE
    assert json.loads((base / "settings.json").read_text())["secret_hex"] == "00" * 16
    assert "settings.json was damaged" in caplog.text and "sequence.json kept" in caplog.text


def test_the_same_keys_written_differently_keep_them(tmp_path: Path) -> None:
    base = started(tmp_path)
    settings = json.loads((base / "settings.json").read_text())
    (base / "settings.json").write_text(json.dumps(settings))  # no indent, other order
    write_context_dir(context(), "coap")
    assert (base / "sequence.json").read_text() == SEQUENCE


def test_new_keys_restart_them(tmp_path: Path) -> None:
    base = started(tmp_path)
    write_context_dir(context("11" * 16), "coap")
    assert not (base / "sequence.json").exists()
