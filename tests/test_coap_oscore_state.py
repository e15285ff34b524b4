"""The OSCORE context folder across restarts: sequence numbers never go back.

A reused sequence number under the same keys reuses a nonce (RFC 8613), so neither a damaged
settings file nor a damaged sequence file may reset them."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from protocols.coap.client import CoapClientAdapter
from protocols.coap.config import CoapClient, Oscore
from protocols.coap.server import OscoreStateError, oscore_credentials, write_context_dir

SEQUENCE = '{"next-to-send": 5000, "received": {"index": 0, "bitfield": 0}}'  # as aiocoap writes


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


def test_new_keys_keep_the_number_and_the_peers_window_becomes_unknown(tmp_path: Path) -> None:
    base = started(tmp_path)
    write_context_dir(context("11" * 16), "coap")
    assert json.loads((base / "sequence.json").read_text()) == {
        "next-to-send": 5000,  # going on from there is as good as fresh under new keys
        # not empty: keys that come back would accept the peer's old requests again (Echo)
        "received": "unknown",
    }


def test_keys_that_come_back_never_start_at_zero(tmp_path: Path) -> None:
    """Keys A, then B, then A again (an edit undone, a reload falling back to the config it
    replaced): A must go on past the numbers it used, not restart (nonce reuse)."""
    base = started(tmp_path)  # A, at 5000
    write_context_dir(context("11" * 16), "coap")  # B
    write_context_dir(context(), "coap")  # A again
    assert json.loads((base / "sequence.json").read_text())["next-to-send"] >= 5000


@pytest.mark.parametrize(
    "damage",
    [b"", b'{"next-to', b"\xff\xfe\x00garbage", b"[]", b'{"received": "unknown"}',
     b'{"next-to-send": -1, "received": "unknown"}', b'{"next-to-send": "5000"}'],
    ids=["empty", "truncated", "not utf-8", "not an object", "no number", "negative", "text"],
)  # fmt: skip
def test_a_damaged_sequence_file_is_refused_not_reset(tmp_path: Path, damage: bytes) -> None:
    base = started(tmp_path)
    (base / "sequence.json").write_bytes(damage)
    with pytest.raises(OscoreStateError) as refused:
        write_context_dir(context(), "coap")
    message = str(refused.value)
    assert str(base / "sequence.json") in message
    assert "new key material" in message and "never delete it while the keys stay" in message
    assert (base / "sequence.json").read_bytes() == damage  # left for the operator


def test_new_keys_recover_from_a_damaged_sequence_file(tmp_path: Path) -> None:
    base = started(tmp_path)
    (base / "sequence.json").write_bytes(b"\x00" * 10)
    write_context_dir(context("11" * 16), "coap")  # what the error says to do
    assert not (base / "sequence.json").exists()


@pytest.mark.parametrize(
    "window",
    [{"index": "x", "bitfield": 0}, "garbage", None],
    ids=["bad index", "not a window", "missing"],
)
def test_a_damaged_replay_window_becomes_unknown_and_the_number_is_kept(
    tmp_path: Path, window: object, caplog: pytest.LogCaptureFixture
) -> None:
    base = started(tmp_path)
    state: dict[str, Any] = {"next-to-send": 5000}
    if window is not None:
        state["received"] = window
    (base / "sequence.json").write_text(json.dumps(state))
    write_context_dir(context(), "coap")
    assert json.loads((base / "sequence.json").read_text()) == {
        "next-to-send": 5000,
        "received": "unknown",  # aiocoap's own word after an abnormal stop: Echo recovery
    }
    assert "replay window was damaged" in caplog.text and "sequence.json" in caplog.text


def test_a_window_aiocoap_never_initialised_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = started(tmp_path)
    written = '{"next-to-send": 55, "received": {"index": null, "bitfield": null}}'
    (base / "sequence.json").write_text(written)  # what aiocoap writes after an "unknown" run
    write_context_dir(context(), "coap")
    assert (base / "sequence.json").read_text() == written
    assert not caplog.text


def test_loading_a_damaged_context_is_one_clear_error_without_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    base = started(tmp_path)
    (base / "sequence.json").write_text('{"next')
    with pytest.raises(OscoreStateError, match="sequence.json is damaged"):
        oscore_credentials(context(), "coap", ":client")
    gc.collect()  # a half-loaded aiocoap context would print an AttributeError from __del__
    assert unraisable == []


def test_one_state_folder_for_two_entries_is_a_clear_error(tmp_path: Path) -> None:
    first = oscore_credentials(context(), "coap", ":client")
    with pytest.raises(OscoreStateError, match="is in use .*give each its own"):
        oscore_credentials(context(), "coap", ":client")
    del first
    gc.collect()  # aiocoap releases the folder's lock when its context is collected


async def test_a_client_with_a_damaged_state_opens_no_socket(tmp_path: Path) -> None:
    oscore = {"sender_id": "01", "recipient_id": "02", "master_secret": "00" * 16}
    config = CoapClient.model_validate(
        {"url": "coap://127.0.0.1:5683", "security": {"oscore": oscore},
         "points": [{"name": "t", "path": "t"}]}
    )  # fmt: skip
    adapter = CoapClientAdapter("dev", config, AdapterContext(Bus(), "gw"))
    base = write_context_dir(Oscore.model_validate(oscore), "dev")
    (base / "sequence.json").write_text("")
    with pytest.raises(OscoreStateError):
        await adapter.__aenter__()
    assert adapter._ctx is None  # the runtime does not call __aexit__ after a failed enter


async def test_a_closed_server_releases_its_state_folder_at_once(tmp_path: Path) -> None:
    """A reload starts the new gateway while the old one's objects may not be collected yet
    (reference cycles): closing must release the folder's lock itself."""
    from conftest import free_port

    from protocols.coap.config import CoapServer
    from protocols.coap.server import CoapServerAdapter

    config = CoapServer.model_validate(
        {
            "host": "127.0.0.1",
            "port": free_port(),
            "security": {"oscore": {"sender_id": "01", "recipient_id": "02",
                                     "master_secret": "00" * 16}},
        }
    )  # fmt: skip
    first = CoapServerAdapter("cs", config, AdapterContext(Bus(), "gw"))
    async with first:
        pass
    kept = first  # still referenced: its contexts are not collected
    second = CoapServerAdapter("cs", config, AdapterContext(Bus(), "gw"))
    async with second:  # before: OscoreStateError, the folder "in use"
        pass
    assert kept is first
