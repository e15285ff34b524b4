"""Application certificates and trust lists, shared by the OPC UA client and server adapters.

Layout of a PKI folder (the usual OPC UA one, so operators recognise it)::

    {pki_dir}/own/cert.der           our application certificate (generated on first run)
    {pki_dir}/own/private/key.pem    its private key (mode 0600)
    {pki_dir}/trusted/               peer certificates we accept (DER or PEM), or their CAs
    {pki_dir}/issuers/               intermediate CAs that complete a chain, not trusted alone
    {pki_dir}/crl/                   revocation lists of those CAs (*.crl, *.der, *.pem)
    {pki_dir}/rejected/              peers we refused, saved so an operator can move one to trusted
                                     (the newest REJECTED_MAX)

Trust is decided per connection by `TrustList`, which asyncua calls as its
``certificate_validator``, as an OPC UA trust list does (Part 4 6.1.3, Part 12): a peer is
trusted when its exact certificate is in the trusted folder (the common case: self-signed
application certificates), or when it chains, signature by signature, through CA certificates
of trusted or issuers to one in trusted (a plant PKI: root CA trusted, issuing CA in issuers).
Each CA in the chain must be one (BasicConstraints CA:TRUE, keyCertSign where it has a KeyUsage,
within its pathLenConstraint) and, as the peer's own certificate, within its validity; at most
MAX_CHAIN CAs, none twice. A certificate in trusted that is a CA:FALSE application certificate
is trusted itself, but issues nothing. The chain comes from our folders only: asyncua keeps the
first certificate of a chain a peer sends and drops the rest.

Revocation: a CRL in the crl folder counts when its signature verifies against a CA of trusted
or issuers with its name (one that does not is ignored, with a warning); a certificate whose
serial number it lists is refused ("revoked by CRL of <CA>"), a leaf or an intermediate CA
alike, one in trusted too (the chain goes on past it while we hold its issuer), whatever the
CRL's nextUpdate says. A CA with no CRL there is not checked: OPC UA would refuse
its certificates (revocation unknown), but a small site often has none to publish. The folders
are re-read when a file in them changes, at the next check (every new session), so trusting or
revoking needs no restart.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import re
import time
from pathlib import Path
from typing import Literal

from asyncua.common.utils import ServiceError
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.storefiles import set_aside, write_atomic
from gateway.streak import LogQuota

log = logging.getLogger(__name__)

CERT_FILE = Path("own/cert.der")
KEY_FILE = Path("own/private/key.pem")
VALID_DAYS = 5 * 365
CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")
CRL_SUFFIXES = (".crl", ".der", ".pem")
# CA certificates above a peer's (a chain that needs more is refused), and chains tried per
# certificate: a CA renewed under the same name and key gives two ways up at each level.
MAX_CHAIN = 5
MAX_CHAINS = 16
WARNED_MAX = 256  # refused certificates remembered as warned about (`TrustList.warned`)
# A scan presenting a fresh certificate each time must not fill the disk or the log: the newest
# REJECTED_MAX refused certificates are kept, and at most WARN_BURST new ones are warned about
# per WARN_WINDOW seconds (the rest are counted, and said in one line when the window ends; one
# kept quiet is warned about when it comes again after it).
REJECTED_MAX = 100
WARN_BURST = 10
WARN_WINDOW = 60.0
_SAVED_NAME = re.compile(r"[0-9a-f]{64}\.der")  # what `_save_rejected` writes; nothing else


def trusted_dir(pki_dir: Path, configured: str | None) -> Path:
    """The folder of trusted peer certificates (``configured`` or ``{pki_dir}/trusted``), created
    if missing."""
    folder = Path(configured).expanduser() if configured else pki_dir / "trusted"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pki_folder(pki_dir: Path, name: Literal["issuers", "crl", "rejected"]) -> Path:
    """``{pki_dir}/{name}``, created if missing: ``issuers`` holds CA certificates that complete
    chains, trusted only through a CA in the trusted folder (OPC UA's issuer list); ``crl`` the
    revocation lists of the CAs in trusted and issuers; ``rejected`` the refused peers."""
    folder = pki_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def ensure_certificate(
    pki_dir: Path, application_uri: str, hostname: str
) -> tuple[Path, Path]:
    """Return ``(certificate, private_key)`` paths, generating a self-signed pair on first run.

    An existing pair is reused as long as it is still valid and names ``application_uri``
    (clients check that the certificate matches the URI the application announces); otherwise
    a new certificate is made for the existing key, also when the certificate file is damaged
    (moved aside to ``cert.der.bad``). A damaged key is a `PkiError`, never replaced (see
    `_own_key`). Key generation runs in a thread: RSA-2048 takes long enough to stall the event
    loop.
    """
    return await asyncio.to_thread(_ensure_certificate, pki_dir, application_uri, hostname)


def _ensure_certificate(pki_dir: Path, application_uri: str, hostname: str) -> tuple[Path, Path]:
    cert_path, key_path = pki_dir / CERT_FILE, pki_dir / KEY_FILE
    if key_path.is_file():
        key = _own_key(key_path, cert_path)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
        cert_path.unlink(missing_ok=True)  # a certificate for another key is useless
    cert = _own_certificate(cert_path) if cert_path.is_file() else None
    if cert is not None and _reusable(cert, key, application_uri):
        return cert_path, key_path
    cert = _self_signed(key, application_uri, hostname)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.DER))
    log.info("generated application certificate %s for %s", cert_path, application_uri)
    return cert_path, key_path


def _own_key(key_path: Path, cert_path: Path) -> rsa.RSAPrivateKey:
    """The gateway's own key, which is refused when damaged, not replaced like the certificate:
    peers trust the certificate made from this key, so a new key would lock the gateway out of
    each of them without a word. The operator chooses: restore a backup (the trusts hold) or
    take a new key and have the peers trust its certificate."""
    try:
        return load_private_key(key_path)
    except PkiError as exc:
        raise PkiError(
            f"{exc}. This is the gateway's own key: restore it from a backup, or move it aside "
            f"(the next start makes a new key and certificate) and then trust the new {cert_path} "
            "on every peer that trusted the old one"
        ) from exc


def _own_certificate(cert_path: Path) -> x509.Certificate | None:
    """The gateway's own certificate, or None when it is damaged: then it was moved aside and the
    caller makes a new one from the key. Safe, as the gateway made it from that key; a peer that
    trusted the exact certificate must trust the new one, which the warning says."""
    try:
        return load_certificate(cert_path)
    except PkiError as exc:
        if isinstance(exc.__cause__, OSError):  # unreadable, not damaged: nothing to rebuild
            raise
        aside = set_aside(cert_path)  # cert.der.bad, .bad.1, ...: an earlier one is kept
        log.warning(
            "%s; moved to %s, a new certificate is made from the key (a peer that trusted the "
            "old certificate itself must trust the new one)",
            exc,
            aside,
        )
        return None


def _reusable(cert: x509.Certificate, key: rsa.RSAPrivateKey, application_uri: str) -> bool:
    if cert.public_key() != key.public_key():
        return False
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc - datetime.timedelta(days=1):
        return False
    return application_uri in _uris(cert)


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def _self_signed(key: rsa.RSAPrivateKey, application_uri: str, hostname: str) -> x509.Certificate:
    # OPC 10000-6 6.2.2: the application URI in subjectAltName, the usages below, and both
    # client and server auth so that one certificate serves either role.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, application_uri[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Protocol Brain"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    alt_names.append(x509.DNSName(hostname))
    if hostname != "localhost":
        alt_names.append(x509.DNSName("localhost"))
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


class PkiError(ValueError):
    """A certificate or key file that cannot be used; the message names the file and the fix."""


def load_certificate(path: Path) -> x509.Certificate:
    """An X.509 certificate, PEM or DER whatever the file is called; `PkiError` if it is not."""
    data = _read(path, "certificate")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(
            f"certificate {path} cannot be read: {_why(data, 'certificate', 'CERTIFICATE')}; "
            "it must be an X.509 certificate, DER or PEM"
        ) from exc


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """An unencrypted RSA key, PEM or DER whatever the file is called; `PkiError` if not."""
    data = _read(path, "private key")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError as exc:  # cryptography's word for "encrypted, and no password given"
        raise PkiError(
            f"private key {path} is encrypted; it must be unencrypted (keep the file mode 0600)"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PkiError(
            f"private key {path} cannot be read: {_why(data, 'private key', 'PRIVATE KEY')}; "
            "it must be an unencrypted RSA private key, PEM or DER"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PkiError(f"private key {path} is not an RSA key; OPC UA needs an RSA private key")
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PkiError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc


def _why(data: bytes, what: str, label: str) -> str:
    """Why ``data`` did not parse as ``what``, in the words an operator can act on."""
    if not data.strip():
        return "the file is empty"
    found = re.search(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)
    if found is None:
        if label != "CERTIFICATE" and _der_certificate(data):
            return f"it holds a certificate, not a {what} (the two files swapped?)"
        return f"not a {what} in DER form (damaged, truncated, or another kind of file)"
    name = found.group(1).decode()
    if label not in name:
        return f"it holds a PEM {name}, not a {what}"
    return f"a damaged or truncated PEM {name}"


def _der_certificate(data: bytes) -> bool:
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return False
    return True


class TrustList:
    """Validates peer certificates against a folder; an asyncua ``certificate_validator``.

    ``issuers`` holds CA certificates that complete a chain but are not trusted by themselves,
    ``crls`` the revocation lists of the CAs in either folder (see the module docstring).
    ``peer`` is the role of the other side (``"client"`` for a server's trust list), only used
    in log lines. Untrusted certificates are copied to ``rejected`` when given.
    """

    def __init__(
        self,
        trusted: Path,
        *,
        issuers: Path | None = None,
        crls: Path | None = None,
        rejected: Path | None = None,
        peer: Literal["client", "server"] = "client",
    ) -> None:
        self.trusted = trusted
        self.issuers = issuers
        self.crls = crls
        self.rejected = rejected
        self.peer = peer
        self.accepted = 0
        self.refused = 0
        # Refused certificates already warned about (SHA-256 -> refusals since): a peer retries
        # with the same certificate every few seconds, and the operator needs the line once.
        self.warned: dict[bytes, int] = {}
        # the clock passed as it is now, not as at import: a test's fake one applies
        self._warnings = LogQuota(
            self._say_quiet, quota=WARN_BURST, interval=WARN_WINDOW, clock=time.monotonic
        )
        self._stamp: tuple[tuple[str, float, int], ...] | None = None
        self._trusted_certs: set[x509.Certificate] = set()
        # every certificate of trusted and issuers by subject: the candidates for an issuer
        self._named: dict[x509.Name, list[x509.Certificate]] = {}
        # revocation lists whose signature verified, by their CA's (subject, public key)
        self._revocations: dict[tuple[x509.Name, bytes], list[x509.CertificateRevocationList]] = {}

    def _reload(self) -> None:
        # Re-read only when a file was added, removed or replaced, in any of the folders.
        trusted = _files(self.trusted, CERT_SUFFIXES)
        issuers = _files(self.issuers, CERT_SUFFIXES)
        crls = _files(self.crls, CRL_SUFFIXES)
        stamp = tuple(s for s in map(_file_stamp, (*trusted, *issuers, *crls)) if s is not None)
        if stamp == self._stamp:
            return
        self._trusted_certs = set(_certificates(self.trusted, trusted))
        self._named = {}
        for cert in (*self._trusted_certs, *_certificates(self.issuers, issuers)):
            self._named.setdefault(cert.subject, []).append(cert)
        self._revocations = {}
        for path in crls:
            crl = _revocation_list(path)
            if crl is None:
                continue
            named = self._named.get(crl.issuer, [])
            signer = next((ca for ca in named if _signed_crl(ca, crl)), None)
            if signer is None:  # a forgery, or the CA's certificate is missing
                why = "its signature does not verify against any" if named else "there is no"
                log.warning(
                    "revocation list %s is ignored: %s CA named %s in %s or %s",
                    path,
                    why,
                    _name(crl.issuer),
                    self.trusted,
                    self.issuers,
                )
                continue
            self._revocations.setdefault((signer.subject, _key_of(signer)), []).append(crl)
        self._stamp = stamp

    def is_trusted(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` chains to the trusted folder: it is there itself, or it was issued,
        through CAs of trusted or issuers, by a CA that is. Validity and revocation aside
        (`check` says those)."""
        self._reload()
        return any(self._anchored(chain) for chain, _ in self._chains(cert))

    def check(self, cert: x509.Certificate) -> None:
        """Raise ``ServiceError`` with the OPC UA status that says why ``cert`` is refused."""
        subject = cert.subject.rfc4514_string()
        thumbprint = cert.fingerprint(hashes.SHA256())
        refusal = self._refusal(cert, datetime.datetime.now(datetime.UTC))
        if refusal is None:
            self.accepted += 1
            self.warned.pop(thumbprint, None)  # accepted: a later refusal is news again
            return
        status, why = refusal
        if status == StatusCodes.BadCertificateUntrusted:
            self._save_rejected(cert, thumbprint)
            if not why:  # self-signed: the common case
                hint = f"; to accept it, put it in {self.trusted}"
            else:
                also = f" (intermediate CAs may go in {self.issuers})" if self.issuers else ""
                hint = (
                    f" ({why}); to accept it, put it or a CA of its chain in {self.trusted}{also}"
                )
            self._refuse(thumbprint, f"refused untrusted {self.peer} certificate {subject}", hint)
        else:
            self._refuse(thumbprint, f"refused {self.peer} certificate {subject}", f": {why}")
        raise ServiceError(status)

    def _refusal(self, cert: x509.Certificate, now: datetime.datetime) -> tuple[int, str] | None:
        """None when ``cert`` is trusted at ``now``; else the OPC UA status and why (for the
        log; empty for a self-signed certificate nobody trusted). Of several chains (a CA
        renewed under the same name and key), one that passes is enough."""
        self._reload()
        chains = self._chains(cert)
        anchored = [chain for chain, _ in chains if self._anchored(chain)]
        if not anchored:
            _, why = max(chains, key=lambda found: len(found[0]))
            return StatusCodes.BadCertificateUntrusted, why
        flaws = [self._flaw(chain, now) for chain in anchored]
        if None in flaws:
            return None
        return flaws[0]

    def _anchored(self, chain: list[x509.Certificate]) -> bool:
        return any(c in self._trusted_certs for c in chain)

    def _chains(self, cert: x509.Certificate) -> list[tuple[list[x509.Certificate], str]]:
        """The chains from ``cert`` up through the CAs of trusted and issuers, each as far as
        it goes (not only to the first trusted one: a trusted intermediate's own issuer may
        have revoked it), with why it stops there (`_stop`). At most MAX_CHAIN CAs, none
        twice (a loop), at most MAX_CHAINS chains."""
        done: list[tuple[list[x509.Certificate], str]] = []
        stack = [[cert]]
        while stack and len(done) < MAX_CHAINS:
            chain = stack.pop()
            last = chain[-1]
            above = [
                ca
                for ca in self._named.get(last.issuer, ())
                if ca not in chain and _issued_by(last, ca)
            ]
            if not above:
                done.append((chain, self._stop(last, chain)))
            elif len(chain) > MAX_CHAIN:
                done.append((chain, f"more than {MAX_CHAIN} CAs above it"))
            else:
                stack.extend([*chain, ca] for ca in reversed(above))
        return done

    def _stop(self, last: x509.Certificate, chain: list[x509.Certificate]) -> str:
        """Why the chain ends at ``last``, which no certificate we hold issued."""
        if last.issuer == last.subject:  # self-signed: a root, or an application certificate
            return "" if last is chain[0] else f"its root {_name(last.subject)} is not trusted"
        issuer = _name(last.issuer)
        named = self._named.get(last.issuer, [])
        if not named:
            return f"{issuer}, the issuer of {_name(last.subject)}, not found"
        if all(c in chain for c in named):
            return f"its issuers loop back to {issuer}"
        if not any(_may_issue(c) for c in named):
            return f"{issuer} is not a CA that may sign certificates"
        return f"{_name(last.subject)} is not signed by {issuer}"

    def _flaw(
        self, chain: list[x509.Certificate], now: datetime.datetime
    ) -> tuple[int, str] | None:
        """What refuses a trusted chain, leaf first: validity, then revocation."""
        if not _valid(chain[0], now):
            return StatusCodes.BadCertificateTimeInvalid, "outside its validity"
        for below, ca in enumerate(chain[1:]):  # ``below``: the CAs between it and the leaf
            if not _valid(ca, now):
                return StatusCodes.BadCertificateIssuerTimeInvalid, (
                    f"its issuer {_name(ca.subject)} is outside its validity"
                )
            limit = _path_length(ca)
            if limit is not None and below > limit:
                return StatusCodes.BadCertificateIssuerUseNotAllowed, (
                    f"{_name(ca.subject)} may have at most {limit} CAs below it"
                )
        for cert, ca in zip(chain, chain[1:], strict=False):
            if self._revoked(cert, ca):
                if cert is chain[0]:
                    return (
                        StatusCodes.BadCertificateRevoked,
                        f"revoked by CRL of {_name(ca.subject)}",
                    )
                return StatusCodes.BadCertificateIssuerRevoked, (
                    f"its issuer {_name(cert.subject)} is revoked by CRL of {_name(ca.subject)}"
                )
        return None

    def _revoked(self, cert: x509.Certificate, ca: x509.Certificate) -> bool:
        crls = self._revocations.get((ca.subject, _key_of(ca)), ())
        return any(c.get_revoked_certificate_by_serial_number(cert.serial_number) for c in crls)

    def _refuse(self, thumbprint: bytes, what: str, why: str) -> None:
        """Count a refusal; warn the first time for this certificate, then at debug level."""
        self.refused += 1
        repeats = self.warned.get(thumbprint)
        if repeats is None:
            if not self._warnings.allow():  # not marked as warned: its next refusal may be
                log.debug("%s%s", what, why)
                return
            if len(self.warned) >= WARNED_MAX:  # many peers (a scan): forget, do not grow
                self.warned.clear()
            self.warned[thumbprint] = 0
            log.warning("%s%s", what, why)
        else:
            self.warned[thumbprint] = repeats + 1
            log.debug("%s again (%d times since the warning)", what, repeats + 1)

    def close(self) -> None:
        """Say the count of first-time refusals kept quiet in the window now open (at a stop)."""
        self._warnings.close()

    def _say_quiet(self, count: int) -> None:
        """The count line of a window that kept some first-time refusals quiet."""
        kept = f"; the newest {REJECTED_MAX} untrusted ones are kept in {self.rejected}"
        log.warning(
            "%s more %s certificates refused in at most %.0f s without a line each (a scan?)%s",
            count,
            self.peer,
            self._warnings.interval,
            kept if self.rejected is not None else "",
        )

    def _save_rejected(self, cert: x509.Certificate, thumbprint: bytes) -> None:
        if self.rejected is None:
            return
        path = self.rejected / f"{thumbprint.hex()}.der"
        try:
            if path.exists():  # a peer retrying: mark it the newest, do not write it again
                os.utime(path)
                return
            self.rejected.mkdir(parents=True, exist_ok=True)
            path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
            saved = [p for p in self.rejected.iterdir() if _SAVED_NAME.fullmatch(p.name)]
            if len(saved) > REJECTED_MAX:
                saved.sort(key=_mtime)
                for old in saved[: len(saved) - REJECTED_MAX]:
                    old.unlink(missing_ok=True)
        except OSError as exc:  # a full disk must not turn a refusal into a crash
            log.warning("could not save rejected certificate: %s", exc)

    async def __call__(self, cert: x509.Certificate, app_description: object) -> None:
        self.check(cert)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile: first to go anyway
        return 0.0


def _may_issue(
    ca: x509.Certificate, use: Literal["key_cert_sign", "crl_sign"] = "key_cert_sign"
) -> bool:
    """Whether ``ca`` is a CA that may sign certificates (or, with ``use="crl_sign"``,
    revocation lists): BasicConstraints CA:TRUE, and that usage if it has a KeyUsage. A trusted
    application certificate (CA:FALSE, as OPC UA's are) is trusted itself, but what its key
    signs is not: else any client we trust could issue a certificate for anyone."""
    try:
        found = {type(e.value): e.value for e in ca.extensions}
    except ValueError:  # a damaged extension: no authority to issue anything
        return False
    constraints, usage = found.get(x509.BasicConstraints), found.get(x509.KeyUsage)
    if not isinstance(constraints, x509.BasicConstraints) or not constraints.ca:
        return False
    return not isinstance(usage, x509.KeyUsage) or bool(getattr(usage, use))


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject or cert.issuer == cert.subject or not _may_issue(ca):
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _signed_crl(ca: x509.Certificate, crl: x509.CertificateRevocationList) -> bool:
    if crl.issuer != ca.subject or not _may_issue(ca, "crl_sign"):
        return False
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):  # a key that signs no CRL (X25519)
        return False


def _path_length(ca: x509.Certificate) -> int | None:
    """The pathLenConstraint of ``ca``: how many CAs may sit between it and a leaf."""
    try:
        return ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except (x509.ExtensionNotFound, ValueError):
        return None


def _valid(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _key_of(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(name: x509.Name) -> str:
    return name.rfc4514_string()


def _files(folder: Path | None, suffixes: tuple[str, ...]) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in suffixes and p.is_file())


def _file_stamp(path: Path) -> tuple[str, float, int] | None:
    try:
        info = path.stat()
    except OSError:  # removed meanwhile: the next check reads the folder again
        return None
    return str(path), info.st_mtime, info.st_size


def _certificates(folder: Path | None, files: list[Path]) -> list[x509.Certificate]:
    certs = []
    for path in files:
        try:
            certs.append(load_certificate(path))
        except ValueError:
            log.warning("trust list %s: %s is not a certificate, ignored", folder, path.name)
    return certs


def _revocation_list(path: Path) -> x509.CertificateRevocationList | None:
    """A CRL, PEM or DER whatever the file is called; None (and a warning) if it is not one."""
    try:
        data = path.read_bytes()
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except (OSError, ValueError) as exc:
        log.warning("revocation list %s is ignored: it cannot be read (%s)", path, exc)
        return None


def load_trust_store(
    pki_dir: Path, configured: str | None, *, peer: Literal["client", "server"]
) -> TrustList:
    """The trust list of one endpoint or device: its trusted folder, and ``{pki_dir}/issuers``,
    ``{pki_dir}/crl`` and ``{pki_dir}/rejected``."""
    return TrustList(
        trusted_dir(pki_dir, configured),
        issuers=pki_folder(pki_dir, "issuers"),
        crls=pki_folder(pki_dir, "crl"),
        rejected=pki_folder(pki_dir, "rejected"),
        peer=peer,
    )
