"""X.509 certificates, read and made with ``cryptography`` (the one module that imports it for them):
what the technician's Status page shows of a certificate, and the self-signed certificate and key of
``bedside technician tls-cert`` for a site without its own PKI."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

WARN_DAYS = 30  # the Status page warns this long before a certificate expires
SELF_SIGNED_DAYS = 825  # the longest lifetime browsers accept for a server certificate


class CertificateError(Exception):
    """A certificate file that cannot be read or made; the message says which and why."""


@dataclass(frozen=True)
class CertificateInfo:
    path: Path
    subject: str
    names: tuple[str, ...]  # the subject alternative names (DNS names and IP addresses)
    fingerprint_sha256: str  # colon-separated hex, as browsers and `openssl x509 -fingerprint` show it
    not_after: dt.datetime
    days_left: int

    @property
    def expired(self) -> bool:
        return self.days_left < 0

    @property
    def expires_soon(self) -> bool:
        return self.days_left < WARN_DAYS

    def warning(self) -> str | None:
        """What the technician must do, in plain words; None while the certificate has time left."""
        if self.expired:
            return (f"the certificate {self.path} expired on {self.not_after:%Y-%m-%d}: clients refuse the connection; "
                    "install a renewed one (Bedside picks it up without a restart)")
        if self.expires_soon:
            return (f"the certificate {self.path} expires on {self.not_after:%Y-%m-%d} ({self.days_left} days): "
                    "install a renewed one before then (Bedside picks it up without a restart)")
        return None


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def describe_certificate(path: Path, now: dt.datetime | None = None) -> CertificateInfo:
    """The first certificate of a PEM file (the server's own; a chain follows it)."""
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except OSError as exc:
        raise CertificateError(f"cannot read the certificate {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise CertificateError(f"{path} holds no PEM certificate") from None
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        alt = tuple(str(n.value) for n in names)
    except x509.ExtensionNotFound:
        alt = ()
    not_after = cert.not_valid_after_utc
    return CertificateInfo(path=Path(path), subject=cert.subject.rfc4514_string(), names=alt,
                           fingerprint_sha256=fingerprint(cert), not_after=not_after,
                           days_left=(not_after - now).days)


@dataclass(frozen=True)
class SelfSigned:
    cert: Path
    key: Path
    fingerprint_sha256: str


def make_self_signed(out: Path, hostnames: list[str], days: int = SELF_SIGNED_DAYS,
                     now: dt.datetime | None = None) -> SelfSigned:
    """A self-signed server certificate for `hostnames` (DNS names or IP addresses; the first is the
    subject's common name) and its P-256 key, written as ``out/bedside.crt`` and ``out/bedside.key``
    (the key 0600 from its creation on, never readable by others for a moment)."""
    if not hostnames:
        raise CertificateError("name at least one host name or address the kiosk is reached at")
    now = now or dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0][:64]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bedside")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hostnames]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out / "bedside.key", out / "bedside.crt"
    write_private_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return SelfSigned(cert=cert_path, key=key_path, fingerprint_sha256=fingerprint(cert))


def write_private_key(path: Path, key) -> None:
    """PEM, unencrypted (the service reads it unattended), created 0600."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
