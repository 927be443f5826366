"""TLS for every link the appliance accepts or opens, on Python's ``ssl`` (OpenSSL): TLS 1.2 or newer
only (BCP 195), the private key refused unless only the service user can read it, and a server
certificate that is picked up again when its files are renewed.

A key's contents and passphrase never reach a log or a message: errors name the file and what to do."""

from __future__ import annotations

import logging
import os
import pwd
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
RELOAD_CHECK_S = 1.0  # how often a handshake may look at the certificate's files again


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used; the message says which file and what to do."""


def check_private_key(path: Path) -> None:
    """Refuse a key another user could read or that the service user does not own."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TlsError(f"cannot read the private key {path}: {exc.strerror or exc}") from None
    me = os.geteuid()
    if st.st_uid != me:
        raise TlsError(f"the private key {path} belongs to {_user(st.st_uid)}, not to {_user(me)} that runs "
                       f"Bedside: run `chown {_user(me)} {path}`")
    if st.st_mode & 0o077:
        raise TlsError(f"the private key {path} can be read by other users (mode {st.st_mode & 0o777:o}): "
                       f"run `chmod 600 {path}`")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"user {uid}"


@dataclass(frozen=True)
class ServerTls:
    """What a TLS listener needs: its certificate (PEM; a chain may follow it) and key, and where it
    checks client certificates, the CA bundle they must chain to."""

    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = False

    def context(self) -> ssl.SSLContext:
        check_private_key(self.key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = MINIMUM_VERSION
        _load_chain(context, self.cert, self.key)
        if self.ca is not None:
            _load_ca(context, self.ca)
            context.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
        elif self.require_client_cert:
            raise TlsError("client certificates can only be required with a CA bundle (tls_ca) to check them against")
        return context

    def files(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.ca,) if self.ca else ())


@dataclass(frozen=True)
class ClientTls:
    """What a TLS client needs: the CA bundle the server's chain must reach (None: the system's), an
    optional client certificate and key, and ``insecure`` (no chain or hostname check, loudly logged)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False

    def context(self, peer: str) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = MINIMUM_VERSION
        if self.ca is not None:
            _load_ca(context, self.ca)
        if self.cert is not None:
            if self.key is None:
                raise TlsError(f"{peer}: a client certificate needs its key (tls_key)")
            check_private_key(self.key)
            _load_chain(context, self.cert, self.key)
        if self.insecure:
            log.warning("INSECURE TLS to %s: its certificate and host name are NOT checked; anyone on the "
                        "network path can read and change what is sent. Set a CA bundle instead.", peer)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def certificate_names(peer: dict | None) -> set[str]:
    """The names a verified peer certificate carries (``SSLSocket.getpeercert()``): its common names
    and subject alternative names (DNS names, IP addresses)."""
    if not peer:
        return set()
    names = {value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"}
    names.update(value for kind, value in peer.get("subjectAltName", ()) if kind in ("DNS", "IP Address"))
    return names


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TlsError(f"cannot read {exc.filename or cert}: no such file") from None
    except (OSError, ssl.SSLError):
        raise TlsError(f"the certificate {cert} and key {key} cannot be used together: both must be PEM and "
                       "the key must be the certificate's (and not encrypted)") from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise TlsError(f"cannot read the CA bundle {ca}: no such file") from None
    except (OSError, ssl.SSLError):
        raise TlsError(f"the CA bundle {ca} holds no PEM certificate") from None


class ReloadingContext:
    """A server context that follows its files: each handshake asks for ``current()``, which (at most
    once a second) looks at the files' modification times and, when one changed, loads them again.
    A renewed certificate thus serves new handshakes at once; connections already open keep theirs,
    so no study in flight is lost. A renewal that cannot be used (half written, key and certificate
    not matching) is logged once and the previous certificate goes on serving."""

    def __init__(self, tls: ServerTls):
        self._tls = tls
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._context = tls.context()  # at start, a file that cannot be used is an error
        self._checked = time.monotonic()
        self._refused: tuple | None = None

    def current(self) -> ssl.SSLContext:
        if time.monotonic() - self._checked < RELOAD_CHECK_S:
            return self._context
        with self._lock:
            self._checked = time.monotonic()
            stamp = self._stamps()
            if stamp != self._stamp and stamp != self._refused:
                try:
                    self._context = self._tls.context()
                except TlsError as exc:
                    self._refused = stamp
                    log.error("the renewed certificate is not used, the previous one goes on serving: %s", exc)
                else:
                    self._stamp = stamp
                    log.info("certificate %s loaded again (it changed on disk)", self._tls.cert)
        return self._context

    def _stamps(self) -> tuple:
        stamps = []
        for path in self._tls.files():
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append(None)
        return tuple(stamps)
