"""Damaged OPC UA certificate and key files: a clear error naming the file, and the gateway's own
certificate rebuilt from its key (never its key: peers trust what was made from it)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from conftest import free_port
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from protocols.opcua.client import OpcuaClientAdapter
from protocols.opcua.config import OpcuaClient, OpcuaServer
from protocols.opcua.pki import (
    CERT_FILE,
    KEY_FILE,
    PkiError,
    ensure_certificate,
    load_certificate,
    load_private_key,
)
from protocols.opcua.server import OpcuaServerAdapter

URI = "urn:protocol-brain:keyfiles"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PKI folder as the gateway makes it on first run (RSA takes a while: made once)."""
    import asyncio

    pki = tmp_path_factory.mktemp("made")
    asyncio.run(ensure_certificate(pki, URI, "localhost"))
    return pki


@pytest.fixture
def pki(made: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pki"
    shutil.copytree(made, copy)
    return copy


def damages(pki: Path) -> dict[str, bytes]:
    cert, key = (pki / CERT_FILE).read_bytes(), (pki / KEY_FILE).read_bytes()
    return {
        "random": os.urandom(300),
        "empty": b"",
        "truncated der": cert[: len(cert) // 2],
        "truncated pem": key[: len(key) // 2],
        "key for cert": key,
        "cert for key": cert,
    }


NAMES = ["random", "empty", "truncated der", "truncated pem"]


@pytest.mark.parametrize("damage", [*NAMES, "key for cert"])
async def test_a_damaged_own_certificate_is_rebuilt_from_the_key(
    pki: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = damages(pki)[damage]
    key_before = (pki / KEY_FILE).read_bytes()
    (pki / CERT_FILE).write_bytes(data)
    with caplog.at_level(logging.WARNING, "protocols.opcua.pki"):
        cert, key = await ensure_certificate(pki, URI, "localhost")
    assert key.read_bytes() == key_before  # the same key, so a CA's trust still holds
    rebuilt = load_certificate(cert)
    assert rebuilt.public_key() == load_private_key(key).public_key()
    aside = pki / "own" / "cert.der.bad"
    assert aside.read_bytes() == data
    assert str(pki / CERT_FILE) in caplog.text and str(aside) in caplog.text


async def test_an_earlier_damaged_copy_is_kept(pki: Path) -> None:
    (pki / CERT_FILE).write_bytes(b"first")
    await ensure_certificate(pki, URI, "localhost")
    (pki / CERT_FILE).write_bytes(b"second")
    await ensure_certificate(pki, URI, "localhost")
    own = pki / "own"
    assert (own / "cert.der.bad").read_bytes() == b"first"
    assert (own / "cert.der.bad.1").read_bytes() == b"second"


@pytest.mark.parametrize("damage", [*NAMES, "cert for key"])
async def test_a_damaged_own_key_is_refused_with_what_to_do(pki: Path, damage: str) -> None:
    data = damages(pki)[damage]
    cert_before = (pki / CERT_FILE).read_bytes()
    (pki / KEY_FILE).write_bytes(data)
    with pytest.raises(PkiError) as refused:
        await ensure_certificate(pki, URI, "localhost")
    message = str(refused.value)
    assert str(pki / KEY_FILE) in message
    assert "restore it from a backup" in message and "move it aside" in message
    assert "trust the new" in message  # peers trusted the old certificate
    assert (pki / KEY_FILE).read_bytes() == data  # nothing replaced behind the operator's back
    assert (pki / CERT_FILE).read_bytes() == cert_before


async def test_moving_a_damaged_key_aside_makes_a_new_pair(pki: Path) -> None:
    (pki / KEY_FILE).write_bytes(b"")
    (pki / KEY_FILE).rename(pki / "key.pem.old")  # what the error says to do
    old_cert = (pki / CERT_FILE).read_bytes()
    cert, key = await ensure_certificate(pki, URI, "localhost")
    assert cert.read_bytes() != old_cert
    assert load_certificate(cert).public_key() == load_private_key(key).public_key()
    assert key.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage", NAMES)
def test_a_configured_certificate_names_the_file(pki: Path, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "server.crt"
    path.write_bytes(damages(pki)[damage])
    with pytest.raises(PkiError, match=f"certificate {path} cannot be read"):
        load_certificate(path)


def test_a_configured_key_names_the_file_and_the_problem(pki: Path, tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    cases = {
        "cert for key": "it holds a certificate, not a private key",
        "empty": "the file is empty",
        "truncated pem": "a damaged or truncated PEM PRIVATE KEY",
        "random": "not a private key in DER form",
    }
    for damage, why in cases.items():
        path.write_bytes(damages(pki)[damage])
        with pytest.raises(PkiError, match=f"private key {path} cannot be read: {why}"):
            load_private_key(path)
    path.write_bytes(
        rsa.generate_private_key(65537, 1024).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(PkiError, match=f"private key {path} is encrypted"):
        load_private_key(path)
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(PkiError, match=f"private key {path} is not an RSA key"):
        load_private_key(path)
    with pytest.raises(PkiError, match=f"private key {tmp_path} cannot be read"):
        load_private_key(tmp_path)  # a folder: unreadable, named too


async def test_the_server_refuses_to_start_naming_a_configured_file(
    pki: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "server.crt"
    broken.write_bytes(b"")
    config = OpcuaServer.model_validate(
        {
            "host": "127.0.0.1",
            "port": free_port(),
            "anonymous": True,
            "security": {
                "certificate": str(broken),
                "private_key": str(pki / KEY_FILE),
                "pki_dir": str(tmp_path / "unused"),
            },
        }
    )
    adapter = OpcuaServerAdapter("opcua", config, AdapterContext(Bus(), "gw"))
    with pytest.raises(PkiError, match=f"certificate {broken} cannot be read: the file is empty"):
        async with adapter:
            pass
    assert broken.read_bytes() == b""  # a configured file is never rebuilt


def opcua_client(security: dict[str, str]) -> OpcuaClientAdapter:
    config = OpcuaClient.model_validate(
        {
            "url": f"opc.tcp://127.0.0.1:{free_port()}",  # nothing listens: enter must not care
            "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", **security},
            "points": [{"name": "t", "node_id": "ns=2;s=t"}],
        }
    )
    return OpcuaClientAdapter("ua", config, AdapterContext(Bus(), "gw"))


async def test_the_client_refuses_to_start_naming_a_configured_key(
    pki: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "client.key"
    broken.write_bytes((pki / CERT_FILE).read_bytes())
    adapter = opcua_client({"certificate": str(pki / CERT_FILE), "private_key": str(broken)})
    with pytest.raises(PkiError, match=f"private key {broken} cannot be read: it holds a cert"):
        async with adapter:
            pass


async def test_the_client_refuses_to_start_on_its_own_damaged_key(pki: Path) -> None:
    (pki / KEY_FILE).write_bytes(b"")
    adapter = opcua_client({"pki_dir": str(pki)})
    with pytest.raises(PkiError, match=str(pki / KEY_FILE)):
        async with adapter:
            pass


def test_validate_warns_of_configured_files_that_run_would_refuse(
    pki: Path, tmp_path: Path
) -> None:
    """validate only checked that a configured certificate and key exist: a damaged or
    swapped pair passed, and run then refused the entry."""
    from gateway.config import load_config_text

    cert, key = pki / CERT_FILE, pki / KEY_FILE
    swapped = f"{{certificate: {key}, private_key: {cert}}}"
    text = (
        "endpoints:\n"
        f"  ua: {{protocol: opcua, role: server, security: {swapped}}}\n"
        "devices:\n"
        "  plc: {protocol: opcua, url: 'opc.tcp://h:4840', points: [{name: t, node_id: 'i=1'}],"
        f" security: {{certificate: {cert}, private_key: {tmp_path}/empty.pem}}}}\n"
    )
    (tmp_path / "empty.pem").write_bytes(b"")
    warnings = load_config_text(text, str(tmp_path / "gw.yaml"), check_adapters=True).warnings
    said = "\n".join(warnings)
    assert f"endpoints.ua.security.certificate: certificate {key}" in said
    assert f"endpoints.ua.security.private_key: private key {cert}" in said
    assert f"private key {tmp_path}/empty.pem cannot be read: the file is empty" in said
    assert "refuses to start this entry with it" in said
    assert len(warnings) == 3  # the client's good certificate is not mentioned
    good = text.replace(swapped, f"{{certificate: {cert}, private_key: {key}}}").replace(
        f"{tmp_path}/empty.pem", str(key)
    )
    assert load_config_text(good, str(tmp_path / "gw.yaml"), check_adapters=True).warnings == ()
