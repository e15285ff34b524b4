"""The OPC UA trust list with a plant PKI: a root CA in trusted, an issuing CA in issuers,
leaves issued by it, and revocation lists; the chains are built with `cryptography` here, and
once checked by the gateway's server against node-opcua's client (a peer we did not write)."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.common.utils import ServiceError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_opcua_security import server_only
from test_opcua_server import one, run_node

from protocols.opcua import pki
from protocols.opcua.pki import TrustList, load_trust_store

DER, PEM = serialization.Encoding.DER, serialization.Encoding.PEM
NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)
CLIENT_URI = "urn:plant:hmi-1"


@cache
def key(name: str) -> rsa.RSAPrivateKey:
    """One RSA key per name (a renewed CA keeps its key), made once for the module."""
    return rsa.generate_private_key(65537, 2048)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def name(self) -> str:
        return self.cert.subject.rfc4514_string()


def issue(
    subject: str,
    by: Issued | None = None,
    *,
    ca: bool = False,
    cert_sign: bool = True,
    path_length: int | None = None,
    valid: tuple[datetime.datetime, datetime.datetime] = (NOW - DAY, NOW + 365 * DAY),
    signer: rsa.RSAPrivateKey | None = None,  # another key than the issuer's: a forgery
    key_name: str | None = None,
) -> Issued:
    """A certificate for ``subject`` issued by ``by`` (self-signed without), CA or leaf."""
    own = key(key_name or subject)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    usage = dict.fromkeys(
        ("key_agreement", "encipher_only", "decipher_only", "content_commitment"), False
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(by.cert.subject if by else name)
        .public_key(own.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                key_encipherment=False,
                data_encipherment=False,
                key_cert_sign=cert_sign,
                crl_sign=True,
                **usage,
            ),
            critical=True,
        )
    else:  # an OPC UA application certificate (Part 6 6.2.2)
        builder = (
            builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=True,
                    data_encipherment=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    **usage,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(CLIENT_URI), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
    return Issued(builder.sign(signer or (by.key if by else own), hashes.SHA256()), own)


def revocation_list(
    by: Issued, *revoked: Issued, signer: rsa.RSAPrivateKey | None = None
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(by.cert.subject)
        .last_update(NOW - DAY)
        .next_update(NOW + 7 * DAY)
    )
    for gone in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(gone.cert.serial_number)
            .revocation_date(NOW - DAY)
            .build()
        )
    return builder.sign(signer or by.key, hashes.SHA256())


def put(folder: Path, name: str, item: Issued | x509.CertificateRevocationList) -> None:
    encoding = PEM if name.endswith(".pem") else DER
    data = item.cert if isinstance(item, Issued) else item
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data.public_bytes(encoding))


def refusal(trust: TrustList, leaf: Issued) -> str:
    """The status name ``trust.check`` refuses ``leaf`` with."""
    with pytest.raises(ServiceError) as refused:
        trust.check(leaf.cert)
    name: str = ua.StatusCode(refused.value.code).name
    return name


@pytest.fixture
def plant() -> tuple[Issued, Issued, Issued]:
    """(root CA, issuing CA, a leaf it issued)."""
    root = issue("Plant Root CA", ca=True)
    issuing = issue("Plant Issuing CA", root, ca=True, path_length=0)
    return root, issuing, issue("hmi-1", issuing)


def trust_list(tmp_path: Path) -> TrustList:
    return load_trust_store(tmp_path, None, peer="client")


def planted(tmp_path: Path, root: Issued, issuing: Issued) -> TrustList:
    """A trust list with ``root`` in trusted and ``issuing`` in issuers: a plant's PKI."""
    trust = trust_list(tmp_path)
    put(trust.trusted, "root.der", root)
    put(issuers(trust), "issuing.der", issuing)
    return trust


def issuers(trust: TrustList) -> Path:
    """``{pki_dir}/issuers`` (the folder, not ``trust.issuers``: these tests run on the code
    before it too, to show they fail there)."""
    return trust.trusted.parent / "issuers"


def crls(trust: TrustList) -> Path:
    return trust.trusted.parent / "crl"


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_leaf_through_an_intermediate_in_issuers_is_trusted(
    tmp_path: Path, plant: tuple[Issued, Issued, Issued]
) -> None:
    root, issuing, leaf = plant
    trust = trust_list(tmp_path)
    put(trust.trusted, "root.der", root)
    put(issuers(trust), "issuing.pem", issuing)
    trust.check(leaf.cert)
    assert trust.is_trusted(leaf.cert)
    # The intermediate itself trusted (no root anywhere) is enough too: it is a CA in trusted.
    (trust.trusted / "root.der").unlink()
    (issuers(trust) / "issuing.pem").rename(trust.trusted / "issuing.pem")
    trust.check(leaf.cert)
    assert (trust.accepted, trust.refused) == (2, 0)
    assert (trust.issuers, trust.crls) == (tmp_path / "issuers", tmp_path / "crl")


def test_an_intermediate_without_its_root_trusted_is_refused(
    tmp_path: Path, plant: tuple[Issued, Issued, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    root, issuing, leaf = plant
    trust = trust_list(tmp_path)
    put(issuers(trust), "issuing.der", issuing)
    assert refusal(trust, leaf) == "BadCertificateUntrusted"
    assert warnings(caplog)[-1].startswith(
        "refused untrusted client certificate CN=hmi-1 (CN=Plant Root CA, the issuer of "
        f"CN=Plant Issuing CA, not found); to accept it, put it or a CA of its chain in {tmp_path}"
    )
    assert (
        len(list((tmp_path / "rejected").glob("*.der"))) == 1
    )  # for an operator to move, as before
    put(issuers(trust), "root.der", root)  # in issuers: helps a chain, trusted by nobody
    leaf2 = issue("hmi-2", issuing)
    assert refusal(trust, leaf2) == "BadCertificateUntrusted"
    assert "its root CN=Plant Root CA is not trusted" in warnings(caplog)[-1]
    (issuers(trust) / "root.der").rename(trust.trusted / "root.der")
    trust.check(leaf2.cert)


def test_an_intermediate_that_may_not_issue_is_refused(
    tmp_path: Path, plant: tuple[Issued, Issued, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    root, _, _ = plant
    trust = trust_list(tmp_path)
    put(trust.trusted, "root.der", root)
    # an application certificate the root issued, whose key signs a certificate: no CA
    app = issue("Plant Issuing CA", root, key_name="app")
    put(issuers(trust), "app.der", app)
    forged = issue("hmi-1", app)
    forged.cert.verify_directly_issued_by(app.cert)  # a good signature: raises otherwise
    assert refusal(trust, forged) == "BadCertificateUntrusted"
    assert "CN=Plant Issuing CA is not a CA that may sign certificates" in warnings(caplog)[-1]
    # a CA whose KeyUsage lacks keyCertSign
    no_sign = issue("Plant Issuing CA", root, ca=True, cert_sign=False, key_name="no-sign")
    put(issuers(trust), "app.der", no_sign)
    assert refusal(trust, issue("hmi-2", no_sign)) == "BadCertificateUntrusted"
    # a CA with pathLenConstraint 0 may issue leaves but no CA below it
    capped = issue("Plant Issuing CA", root, ca=True, path_length=0)
    put(issuers(trust), "app.der", capped)
    sub = issue("Cell CA", capped, ca=True)
    put(issuers(trust), "sub.der", sub)
    assert refusal(trust, issue("hmi-3", sub)) == "BadCertificateIssuerUseNotAllowed"


def test_a_wrong_signature_is_refused(
    tmp_path: Path, plant: tuple[Issued, Issued, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    root, issuing, _ = plant
    trust = planted(tmp_path, root, issuing)
    # the issuing CA's name, another key's signature
    forged = issue("hmi-1", issuing, signer=key("intruder"))
    assert refusal(trust, forged) == "BadCertificateUntrusted"
    assert "CN=hmi-1 is not signed by CN=Plant Issuing CA" in warnings(caplog)[-1]
    # an intermediate claiming the root's name, signed by another key
    fake_ca = issue("Plant Issuing CA", root, ca=True, signer=key("intruder"), key_name="fake")
    put(issuers(trust), "issuing.der", fake_ca)
    assert refusal(trust, issue("hmi-2", fake_ca)) == "BadCertificateUntrusted"


def test_a_revoked_leaf_is_refused(
    tmp_path: Path, plant: tuple[Issued, Issued, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    root, issuing, leaf = plant
    other = issue("hmi-2", issuing)
    trust = planted(tmp_path, root, issuing)
    trust.check(leaf.cert)
    put(crls(trust), "issuing.crl", revocation_list(issuing, leaf))  # re-read: no restart
    assert refusal(trust, leaf) == "BadCertificateRevoked"
    assert warnings(caplog)[-1] == (
        "refused client certificate CN=hmi-1: revoked by CRL of CN=Plant Issuing CA"
    )
    # nothing an operator should move to trusted
    assert list((tmp_path / "rejected").iterdir()) == []
    trust.check(other.cert)  # not in the list
    # a PEM CRL under .pem; the exact certificate in trusted does not lift a revocation
    (crls(trust) / "issuing.crl").unlink()
    put(crls(trust), "issuing.pem", revocation_list(issuing, leaf, other))
    put(trust.trusted, "hmi-2.der", other)
    assert refusal(trust, other) == "BadCertificateRevoked"
    (crls(trust) / "issuing.pem").unlink()
    trust.check(leaf.cert)  # the CRL gone: no CRL, not checked


def test_a_revoked_intermediate_is_refused(
    tmp_path: Path, plant: tuple[Issued, Issued, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    root, issuing, leaf = plant
    trust = planted(tmp_path, root, issuing)
    put(crls(trust), "root.der", revocation_list(root, issuing))
    assert refusal(trust, leaf) == "BadCertificateIssuerRevoked"
    assert warnings(caplog)[-1].endswith(
        ": its issuer CN=Plant Issuing CA is revoked by CRL of CN=Plant Root CA"
    )
    # also when the intermediate is itself in trusted: its issuer revoked it
    (issuers(trust) / "issuing.der").rename(trust.trusted / "issuing.der")
    assert refusal(trust, issue("hmi-2", issuing)) == "BadCertificateIssuerRevoked"


def test_a_crl_whose_signature_does_not_verify_is_ignored(
    tmp_path: Path, plant: tuple[Issued, Issued, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    root, issuing, leaf = plant
    trust = planted(tmp_path, root, issuing)
    put(crls(trust), "forged.crl", revocation_list(issuing, leaf, signer=key("intruder")))
    (crls(trust) / "junk.crl").write_bytes(b"not a CRL")
    trust.check(leaf.cert)
    said = warnings(caplog)
    assert any(
        line.startswith(f"revocation list {crls(trust) / 'forged.crl'} is ignored: its signature")
        for line in said
    ), said
    assert any(f"{crls(trust) / 'junk.crl'} is ignored" in line for line in said), said
    trust.check(leaf.cert)  # the folders unchanged: not read, nor warned about, again
    assert len(warnings(caplog)) == len(said)
    # a CRL of a CA we do not hold
    put(crls(trust), "unknown.crl", revocation_list(issue("Other CA", ca=True), leaf))
    trust.check(leaf.cert)
    assert warnings(caplog)[-1].endswith(
        f"is ignored: there is no CA named CN=Other CA in {trust.trusted} or {issuers(trust)}"
    )


def test_chains_are_limited_in_depth_and_loops_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = issue("Root", ca=True)
    trust = trust_list(tmp_path)
    put(trust.trusted, "root.der", root)
    above = root
    for i in range(1, 7):
        above = issue(f"CA {i}", above, ca=True)
        put(issuers(trust), f"ca-{i}.der", above)
        leaf = issue(f"leaf {i}", above)
        if i < 5:  # i intermediates and the root above the leaf: at most 5 CAs
            trust.check(leaf.cert)
        else:
            assert refusal(trust, leaf) == "BadCertificateUntrusted"
    assert "more than 5 CAs above it" in warnings(caplog)[-1]
    assert pki.MAX_CHAIN == 5

    # Two CAs that issued each other (cross-certified): the search ends, refused.
    loop = tmp_path / "loop"
    trust = trust_list(loop)
    first = issue("Loop A", issue("Loop B", ca=True), ca=True)
    second = issue("Loop B", first, ca=True)
    put(issuers(trust), "a.der", first)
    put(issuers(trust), "b.der", second)
    assert refusal(trust, issue("leaf", first)) == "BadCertificateUntrusted"
    assert "its issuers loop back to CN=Loop A" in warnings(caplog)[-1]


def test_validity_of_every_ca_and_a_renewed_ca(
    tmp_path: Path, plant: tuple[Issued, Issued, Issued]
) -> None:
    root, _, _ = plant
    trust = trust_list(tmp_path)
    put(trust.trusted, "root.der", root)
    expired = issue("Plant Issuing CA", root, ca=True, valid=(NOW - 9 * DAY, NOW - DAY))
    put(issuers(trust), "old.der", expired)
    leaf = issue("hmi-1", expired)
    assert refusal(trust, leaf) == "BadCertificateIssuerTimeInvalid"
    put(issuers(trust), "new.der", issue("Plant Issuing CA", root, ca=True))  # same name, key
    trust.check(leaf.cert)
    late = issue("hmi-2", expired, valid=(NOW - 9 * DAY, NOW - DAY))
    assert refusal(trust, late) == "BadCertificateTimeInvalid"


async def test_node_opcua_client_issued_by_an_intermediate_then_revoked(
    tmp_path: Path, plant: tuple[Issued, Issued, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway's server, its root CA in trusted and the issuing CA in issuers, gives a
    session to a node-opcua client whose certificate the issuing CA made; once the issuing
    CA's CRL lists it, the next session is refused (the folders are read at each session)."""
    root, issuing, leaf = plant
    folder = tmp_path / "pki"
    put(folder / "trusted", "root.der", root)
    put(folder / "issuers", "issuing.der", issuing)
    put(tmp_path, "hmi-1.pem", leaf)
    (tmp_path / "hmi-1-key.pem").write_bytes(
        leaf.key.private_bytes(
            PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    adapter = server_only(
        tmp_path,
        anonymous=True,
        security={
            "endpoints": [{"policy": "Basic256Sha256", "mode": "SignAndEncrypt"}],
            "pki_dir": str(folder),
        },
    )
    plan = {
        "pki": str(tmp_path / "node-pki"),
        "certificateFile": str(tmp_path / "hmi-1.pem"),
        "privateKeyFile": str(tmp_path / "hmi-1-key.pem"),
        "applicationUri": CLIENT_URI,
        "url": adapter.endpoint_url,
        "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt"},
        "read": ["i=2259"],
    }
    async with adapter:
        code, lines, err = await run_node(("opcua_client.js",), plan)
        assert code == 0, (lines, err.decode(errors="replace")[-2000:])
        assert one(lines, "read")[0]["value"] == 0  # ServerState Running
        assert adapter.trust is not None and adapter.trust.accepted >= 1

        put(folder / "crl", "issuing.crl", revocation_list(issuing, leaf))
        code, lines, _ = await run_node(("opcua_client.js",), plan)
    assert code == 1
    assert "connected" not in {k for line in lines for k in line}
    assert lines[-1]["status"] == "BadCertificateRevoked", lines
    assert "refused client certificate CN=hmi-1: revoked by CRL of CN=Plant Issuing CA" in warnings(
        caplog
    )
