"""Security of the OPC UA server: endpoints, the application certificate, the client trust
list, users and passwords, with asyncua's client and node-opcua's (a peer we did not write)."""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from conftest import HOST, free_port, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from test_opcua_server import (
    SECRET_HASH,
    Plant,
    _good,
    one,
    plant_gateway,
    run_node_client,
    write,
)

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.passwords import hash_password
from protocols.modbus.codec import ByteOrder, DataType, encode
from protocols.modbus.simulator import Simulator
from protocols.opcua import pki
from protocols.opcua.config import OpcuaServer
from protocols.opcua.pki import (
    CERT_FILE,
    ensure_certificate,
    load_certificate,
    load_trust_store,
)
from protocols.opcua.server import OpcuaServerAdapter

READER_HASH = hash_password("look")
SECURE = f"""users:
      - {{username: op, password_hash: '{SECRET_HASH}', access: write}}
      - {{username: viewer, password_hash: '{READER_HASH}', access: read}}
    security:
      endpoints: [{{policy: Basic256Sha256, mode: SignAndEncrypt}}]
      pki_dir: PKI"""
CLIENT_URI = "urn:protocol-brain:test-client"


def server_only(tmp_path: Path, **settings: object) -> OpcuaServerAdapter:
    config = OpcuaServer.model_validate(
        {
            "host": HOST,
            "port": free_port(),
            "security": {"pki_dir": str(tmp_path / "pki" / "{name}")},
            **settings,
        }
    )
    return OpcuaServerAdapter("opcua", config, AdapterContext(Bus(), "sec"))


async def endpoints(url: str) -> list[ua.EndpointDescription]:
    result: list[ua.EndpointDescription] = await Client(url).connect_and_get_server_endpoints()
    return result


async def secure_client(plant: Plant, pki: Path, user: str | None, password: str | None) -> Client:
    """A Basic256Sha256 SignAndEncrypt client with its own certificate (not yet trusted)."""
    cert, key = await ensure_certificate(pki, CLIENT_URI, "localhost")
    client = Client(plant.url)
    client.application_uri = CLIENT_URI
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        certificate=str(cert),
        private_key=str(key),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    return client


def trust(plant: Plant, tmp_path: Path, certificate: Path) -> None:
    trusted = tmp_path / "pki" / "trusted"
    assert trusted.is_dir()  # made by the server on start
    shutil.copy(certificate, trusted / certificate.name)


@pytest.fixture
async def secure_plant(simulator: Simulator, tmp_path: Path) -> AsyncIterator[Plant]:
    async with plant_gateway(simulator, tmp_path, server=SECURE) as plant:
        yield plant


async def test_certificate_generated_on_first_run_and_reused(tmp_path: Path) -> None:
    first = server_only(tmp_path, anonymous=True)
    async with first:
        generated = tmp_path / "pki" / "opcua" / CERT_FILE
        assert generated.is_file()
        served = (await endpoints(first.endpoint_url))[0].ServerCertificate
        assert served == generated.read_bytes()
        san = load_certificate(generated).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == ["urn:protocol-brain:sec"]
    again = server_only(tmp_path, anonymous=True)
    async with again:
        assert (await endpoints(again.endpoint_url))[0].ServerCertificate == served


async def test_none_endpoint_only_when_allowed(tmp_path: Path) -> None:
    default = server_only(tmp_path, anonymous=True)
    async with default:
        found = await endpoints(default.endpoint_url)
    modes = {(e.SecurityPolicyUri.split("#")[-1], e.SecurityMode.name) for e in found}
    assert modes == {
        (policy, mode)
        for policy in ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
        for mode in ("Sign", "SignAndEncrypt")
    }
    # anonymous: true offers anonymous tokens, on secure endpoints only
    tokens = {t.TokenType for e in found for t in e.UserIdentityTokens}
    assert tokens == {ua.UserTokenType.Anonymous, ua.UserTokenType.UserName}

    with_none = server_only(tmp_path, security={"allow_none": True, "pki_dir": str(tmp_path)})
    async with with_none:
        found = await endpoints(with_none.endpoint_url)
        # users only (anonymous: false): an anonymous session on None is refused
        with pytest.raises(ua.UaStatusCodeError):
            async with Client(with_none.endpoint_url):
                pass
    assert ua.MessageSecurityMode.None_ in {e.SecurityMode for e in found}
    assert len(found) == 7
    assert {t.TokenType for e in found for t in e.UserIdentityTokens} == {ua.UserTokenType.UserName}


async def test_untrusted_client_certificate_is_rejected(
    secure_plant: Plant, tmp_path: Path
) -> None:
    client = await secure_client(secure_plant, tmp_path / "client", "op", "secret")
    with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
        async with client:
            pass
    rejected = list((tmp_path / "pki" / "rejected").glob("*.der"))
    assert len(rejected) == 1  # where an operator finds it, to move it to trusted
    assert secure_plant.server.status()["certificates_refused"] >= 1

    trust(secure_plant, tmp_path, tmp_path / "client" / CERT_FILE)
    client = await secure_client(secure_plant, tmp_path / "client", "op", "secret")
    async with client:
        temp = secure_plant.node_id("temp")
        dv = await wait_for(lambda: _good(client, temp), message="a Good value")
        assert dv.Value.Value == 21.5
        assert await write(client, secure_plant.node_id("level"), ua.Variant(50.0)) == "Good"
    assert secure_plant.device.get_registers("holding", 20) == [500]


async def test_users_passwords_and_read_only_access(secure_plant: Plant, tmp_path: Path) -> None:
    cert, _ = await ensure_certificate(tmp_path / "client", CLIENT_URI, "localhost")
    trust(secure_plant, tmp_path, cert)
    for user, password in (("op", "wrong"), ("nobody", "secret"), (None, None)):
        client = await secure_client(secure_plant, tmp_path / "client", user, password)
        with pytest.raises(ua.UaStatusCodeError) as refused:
            async with client:
                pass
        assert type(refused.value).__name__ in (
            "BadUserAccessDenied",
            "BadIdentityTokenRejected",
            "BadIdentityTokenInvalid",
        ), (user, refused.value)
    assert secure_plant.server.status()["logins_refused"] == 2

    viewer = await secure_client(secure_plant, tmp_path / "client", "viewer", "look")
    async with viewer:
        temp = secure_plant.node_id("temp")
        assert (await wait_for(lambda: _good(viewer, temp), message="viewer reads")).Value
        level = secure_plant.node_id("level")
        assert await write(viewer, level, ua.Variant(50.0)) == "BadUserAccessDenied"
    assert secure_plant.device.get_registers("holding", 20) == [425]


async def test_node_opcua_secure_with_user_and_trust_list(
    secure_plant: Plant, tmp_path: Path
) -> None:
    plant = secure_plant
    await wait_for(lambda: plant.server.status()["updates"] >= 6, message="first values")
    security = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt"}
    user = {"username": "op", "password": "secret"}
    trusted_pki = tmp_path / "node-trusted"
    code, lines = await run_node_client({"pki": str(trusted_pki), "certificateOnly": True})
    assert code == 0
    trust(plant, tmp_path, Path(one(lines, "certificate")))

    plan = {
        "pki": str(trusted_pki),
        "url": plant.url,
        "security": security,
        "user": user,
        "browse": f"ns={plant.ns};s=Plant/pump",
        "read": [plant.node_id("setpoint")],
        "subscribe": {"nodes": [plant.node_id("temp")], "count": 1, "timeout": 5000},
        "write": [
            {"nodeId": plant.node_id("setpoint"), "dataType": "Float", "value": 212},
            {"nodeId": plant.node_id("setpoint"), "dataType": "Float", "value": 400},
            {"nodeId": plant.node_id("temp"), "dataType": "Double", "value": 1},
            {"nodeId": plant.node_id("nope"), "dataType": "Double", "value": 1},
        ],
    }
    code, lines = await run_node_client(plan)
    assert code == 0, lines
    assert len(one(lines, "browse")) == 6
    (setpoint,) = one(lines, "read")
    assert setpoint["value"] == 122 and setpoint["status"] == "Good"
    assert setpoint["properties"]["EngineeringUnits"]["unitId"] == 4604232
    assert one(lines, "change")["value"] == 21.5
    assert [w["status"] for w in one(lines, "write")] == [
        "Good",
        "BadOutOfRange",
        "BadNotWritable",
        "BadNodeIdUnknown",
    ]
    # 212 degF = 100 degC on the device
    assert plant.device.get_registers("holding", 10, 2) == encode(
        100.0, DataType.FLOAT32, ByteOrder.CDAB
    )

    # the same plan with a certificate nobody trusted
    plan["pki"] = str(tmp_path / "node-stranger")
    code, lines = await run_node_client(plan)
    assert code == 1
    assert "connected" not in {k for line in lines for k in line}
    assert lines[-1]["status"] in ("BadCertificateUntrusted", "BadSecurityChecksFailed"), lines


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[str, rsa.RSAPrivateKey] | None,
    ca: bool,
    *,
    cert_sign: bool | None = None,  # None: no KeyUsage extension
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if cert_sign is not None:
        usage = dict.fromkeys(
            (
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "crl_sign",
                "encipher_only",
                "decipher_only",
            ),
            False,
        )
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=cert_sign, **usage), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


def test_trust_list_takes_exact_certificates_and_ca_issued_ones(tmp_path: Path) -> None:
    ca_key, leaf_key, other_key = (rsa.generate_private_key(65537, 2048) for _ in range(3))
    ca = _certificate("Plant CA", ca_key, None, ca=True)
    issued = _certificate("hmi-1", leaf_key, ("Plant CA", ca_key), ca=False)
    forged = _certificate("hmi-2", other_key, ("Plant CA", other_key), ca=False)  # CA's name only
    stranger = _certificate("laptop", other_key, None, ca=False)

    trust = load_trust_store(tmp_path, None, peer="client")
    assert not trust.is_trusted(issued)
    (trust.trusted / "ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    assert trust.is_trusted(issued)  # re-read: trusting needs no restart
    assert not trust.is_trusted(forged)
    assert not trust.is_trusted(stranger)
    with pytest.raises(ServiceError) as refused:
        trust.check(stranger)
    assert refused.value.code == ua.StatusCodes.BadCertificateUntrusted
    assert len(list((tmp_path / "rejected").glob("*.der"))) == 1

    (trust.trusted / "laptop.pem").write_bytes(stranger.public_bytes(serialization.Encoding.PEM))
    trust.check(stranger)  # an exact certificate, PEM this time
    assert (trust.accepted, trust.refused) == (1, 1)


def test_a_trusted_application_certificate_issues_nothing(tmp_path: Path) -> None:
    """Trusting a client's own certificate (CA:FALSE, as OPC UA application certificates are)
    does not make what its key signs trusted: only a CA's (CA:TRUE, keyCertSign if it has a
    KeyUsage) issued certificates are."""
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(4)]
    leaf_key, forged_key, ca_key, issued_key = keys
    trust = load_trust_store(tmp_path, None, peer="client")

    def only_trusted(name: str, cert: x509.Certificate) -> None:
        """``cert`` the only file in trusted/ (a new name: the folder is re-read)."""
        for old in trust.trusted.iterdir():
            old.unlink()
        (trust.trusted / name).write_bytes(cert.public_bytes(serialization.Encoding.DER))

    forged = _certificate("scada-admin", forged_key, ("hmi-1", leaf_key), ca=False)
    for i, cert_sign in enumerate((None, False, True)):  # a KeyUsage says nothing without CA
        leaf = _certificate("hmi-1", leaf_key, None, ca=False, cert_sign=cert_sign)
        only_trusted(f"hmi-1-{i}.der", leaf)
        assert trust.is_trusted(leaf)  # trusted directly, as before
        assert forged.verify_directly_issued_by(leaf) is None  # a valid signature, by the leaf
        assert not trust.is_trusted(forged), cert_sign
    with pytest.raises(ServiceError) as refused:
        trust.check(forged)
    assert refused.value.code == ua.StatusCodes.BadCertificateUntrusted

    # A CA that may sign certificates: what it issues is trusted; a CA whose KeyUsage lacks
    # keyCertSign may not sign certificates.
    issued = _certificate("hmi-2", issued_key, ("Plant CA", ca_key), ca=False)
    for i, (cert_sign, trusted) in enumerate(((True, True), (None, True), (False, False))):
        only_trusted(
            f"ca-{i}.der", _certificate("Plant CA", ca_key, None, ca=True, cert_sign=cert_sign)
        )
        assert trust.is_trusted(issued) is trusted, cert_sign


def test_a_scan_of_fresh_certificates_fills_neither_disk_nor_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each OpenSecureChannel can present a new self-signed certificate: the rejected folder
    keeps the newest REJECTED_MAX, a retrying peer's file is not rewritten, an operator's own
    file there stays, and the log says a burst of new ones in one line."""
    monkeypatch.setattr(pki, "REJECTED_MAX", 5)
    monkeypatch.setattr(pki, "WARN_BURST", 3)
    clock = [1000.0]
    monkeypatch.setattr(pki.time, "monotonic", lambda: clock[0])
    key = rsa.generate_private_key(65537, 2048)
    certs = [_certificate(f"scanner-{i}", key, None, ca=False) for i in range(12)]
    trust = load_trust_store(tmp_path, None, peer="client")
    (trust.rejected / "hmi-keep.der").write_bytes(b"the operator's")
    for i, cert in enumerate(certs):
        clock[0] += 1
        saved = trust.rejected / f"{cert.fingerprint(hashes.SHA256()).hex()}.der"
        with pytest.raises(ServiceError):
            trust.check(cert)
        os.utime(saved, (i, i))  # distinct mtimes, oldest first, whatever the filesystem's grain
    by_name = {f"{c.fingerprint(hashes.SHA256()).hex()}.der": c for c in certs}
    kept = sorted(p.name for p in trust.rejected.iterdir())
    newest = sorted(list(by_name)[-5:])
    assert kept == sorted([*newest, "hmi-keep.der"])

    retrying = trust.rejected / newest[0]
    before = retrying.stat().st_mtime_ns
    retrying.write_bytes(b"marker")  # rewritten would put the certificate back
    with pytest.raises(ServiceError):
        trust.check(by_name[newest[0]])
    assert retrying.read_bytes() == b"marker"
    assert retrying.stat().st_mtime_ns > before  # the newest now, kept longest

    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 3  # the burst; the other 9 counted
    clock[0] += pki.WARN_WINDOW
    with pytest.raises(ServiceError):
        trust.check(_certificate("after", key, None, ca=False))
    with pytest.raises(ServiceError):  # one kept quiet in the burst: its own line now
        trust.check(certs[5])
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"][3:]
    # 9 new ones and the retry of a quiet one (not marked as warned)
    assert len(said) == 3 and said[0].startswith("10 more client certificates refused in")
    assert "the newest 5 untrusted ones are kept in" in said[0]
    assert said[1].startswith("refused untrusted client certificate CN=after")
    assert said[2].startswith("refused untrusted client certificate CN=scanner-5")


async def test_configured_certificate_pem_under_any_name(tmp_path: Path) -> None:
    cert, key = await ensure_certificate(tmp_path / "made", "urn:protocol-brain:sec", "localhost")
    pem = tmp_path / "server.crt"  # PEM, though the name says nothing
    pem.write_bytes(load_certificate(cert).public_bytes(serialization.Encoding.PEM))
    adapter = server_only(
        tmp_path,
        anonymous=True,
        security={"certificate": str(pem), "private_key": str(key), "pki_dir": str(tmp_path)},
    )
    async with adapter:
        found = await endpoints(adapter.endpoint_url)
    assert {e.ServerCertificate for e in found} == {cert.read_bytes()}
    assert not (tmp_path / CERT_FILE).exists()  # nothing generated


def test_a_stop_says_the_count_of_a_burst_kept_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The count of first-time refusals kept quiet is said when the trust list is closed (the
    adapter's stop), not lost with the window."""
    monkeypatch.setattr(pki, "WARN_BURST", 2)
    key = rsa.generate_private_key(65537, 2048)
    trust = load_trust_store(tmp_path, None, peer="server")
    for i in range(5):
        with pytest.raises(ServiceError):
            trust.check(_certificate(f"scanner-{i}", key, None, ca=False))
    trust.close()
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 3 and said[2].startswith("3 more server certificates refused in")
    trust.close()  # said once
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 3
