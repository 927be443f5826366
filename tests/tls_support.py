"""A small PKI for the TLS tests: a CA, and server and client certificates it signs (cryptography),
written as PEM files with keys 0600 as the appliance demands. The kiosk's own self-signed pair comes
from the project's `tls-cert` code (device/core/certificates.py) instead."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device.core.certificates import write_private_key
from loopback import free_port


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


class TestCa:
    """A certificate authority on disk (``ca.crt``) that issues leaf certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path, name: str = "Bedside Test CA"):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        self._cert = (
            x509.CertificateBuilder().subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = folder / "ca.crt"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, hosts: list[str] = (), client: bool = False, days: int = 30,
              not_before_days: int = -1) -> Pair:
        """A leaf for `name` (its common name) valid for `hosts` (DNS names or IPs); ``client``: for
        client authentication. ``not_before_days``/``days`` place its validity (negative: past)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=not_before_days)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general(h) for h in hosts]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pair = Pair(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_key(pair.key, key)
        return pair


def _general(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@contextmanager
def https_server(pair: Pair, handler=BaseHTTPRequestHandler):
    """A stdlib HTTP server on 127.0.0.1 over TLS with `pair`'s certificate; yields its port. The
    default handler answers every request 501: a peer for what the TLS handshake decides."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="https-peer", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def s_client(port: int, *options: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """`openssl s_client` to 127.0.0.1:port, closing at once after the handshake."""
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                           *options], input="", capture_output=True, text=True, timeout=timeout)


def served_fingerprint(port: int, ca: Path) -> str:
    """The SHA-256 fingerprint of the certificate the server at `port` presents (colon hex, upper case)."""
    shake = s_client(port, "-CAfile", str(ca))
    pem = shake.stdout[shake.stdout.index("-----BEGIN CERTIFICATE-----"):shake.stdout.index("-----END CERTIFICATE-----") + 25]
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def tls_dicom_app(config, pki: dict, require_client_cert: bool = False, **more):
    """The kiosk app with its SCP on a free port speaking TLS only (the acse timeout 3 s): XRAY1 from
    127.0.0.1 may call, whose client certificate must name xray1.clinic where one is required."""
    from device.kiosk import create_app

    callers = [{"ae_title": "XRAY1", "host": "127.0.0.1", "tls_name": "xray1.clinic"}]
    return create_app(config.with_overrides(**{
        "dicom.port": free_port(), "dicom.allowed_callers": callers, "dicom.acse_timeout_s": 3,
        "dicom.tls_cert": pki["scp"].cert, "dicom.tls_key": pki["scp"].key, "dicom.tls_ca": pki["ca"],
        "dicom.tls_require_client_cert": require_client_cert, **more,
    }))


def dcmtk_tls(pki: dict, name: str) -> tuple[str, ...]:
    """dcmtk's options for `name`'s key and certificate, trusting the test CA."""
    return ("+tls", str(pki[name].key), str(pki[name].cert), "+cf", str(pki["ca"]))


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False
