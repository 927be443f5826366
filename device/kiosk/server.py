"""Serving the kiosk, and telling systemd about it: READY=1 once the models are warm and the socket is
bound, and WATCHDOG=1 pings only while the kiosk really answers its own health endpoint.

Plain HTTP is served by waitress (a production WSGI server: a thread pool, no dev server; it buffers
each request whole before a thread takes it, so slow clients hold no thread). With ``server.tls_cert``
the port serves HTTPS only, through cheroot (device/kiosk/https.py says why), and waitress serves
plain HTTP on ``127.0.0.1:plain_http_loopback_port`` alone, where one is set, for the device's own screen."""

from __future__ import annotations

import http.client
import logging
import os
import resource
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import waitress
from flask import Flask

from device.core.settings import LOOPBACK_NAMES, ServerSettings
from device.core.tls import ReloadingContext

log = logging.getLogger(__name__)
# Descriptors the process holds besides client connections: the store, models, capture, logs.
FILES_BESIDES_CONNECTIONS = 256


class KioskServer:
    """Binds at construction (port 0 picks a free port: read ``url``); ``serve_forever`` returns
    after SIGINT/SIGTERM (KeyboardInterrupt or SystemExit raised in the main thread).

    ``before_close`` runs when serving stops, before the server waits for its threads: it must end
    the long responses (live views), or closing waits out waitress's own timeout for each."""

    def __init__(self, app: Flask, settings: ServerSettings, before_close: Callable[[], None],
                 probe: HealthProbe):
        """Raises TlsError where the certificate or key cannot be used, OSError where a port cannot be bound."""
        self._before_close = before_close
        self._probe = probe
        _allow_open_files(settings.connection_limit + FILES_BESIDES_CONNECTIONS)
        # A little over the app's own limit so that Flask answers 413 with a clear JSON message.
        max_body = settings.max_upload_mb * 2**20 + 2**20
        tls = settings.tls()
        self._https = None
        self._plain = None
        if tls is not None:
            from device.kiosk.https import HttpsServer

            self._https = HttpsServer(app, settings, ReloadingContext(tls), max_body)
            self.host, self.port = _bracketed(settings.host), self._https.port
            if settings.plain_http_loopback_port is not None:
                try:
                    self._plain = _waitress(app, settings, "127.0.0.1", settings.plain_http_loopback_port, max_body)
                except OSError:
                    self._https.stop()
                    raise
        else:
            self._plain = _waitress(app, settings, settings.host, settings.port, max_body)
            self.host, self.port = _bracketed(self._plain.effective_host), int(self._plain.effective_port)
            if settings.host not in LOOPBACK_NAMES:
                log.warning("serving plain HTTP on %s: pages, API tokens and passwords cross the network in clear "
                            "text; set [server] tls_cert and tls_key", settings.host)

    @property
    def url(self) -> str:
        return f"{'https' if self._https else 'http'}://{self.host}:{self.port}/"

    @property
    def loopback_url(self) -> str | None:
        """The device's own screen's plain-HTTP address beside HTTPS, if there is one."""
        if self._https is None or self._plain is None:
            return None
        return f"http://127.0.0.1:{int(self._plain.effective_port)}/"

    def serve_forever(self) -> None:
        notify("READY=1")
        watchdog = _start_watchdog(self.host, self.port, self._probe, secure=self._https is not None)
        try:
            if self._https is not None:
                self._https.start()
            if self._plain is not None:
                self._plain.run()
            else:
                threading.Event().wait()  # until SIGTERM/SIGINT raise here
        finally:
            if watchdog is not None:
                watchdog.set()
            notify("STOPPING=1")
            self._before_close()
            if self._https is not None:
                self._https.stop()
            if self._plain is not None:
                self._plain.close()


def _bracketed(host) -> str:
    return f"[{host}]" if ":" in str(host) else str(host)


def _waitress(app: Flask, settings: ServerSettings, host: str, port: int, max_body: int):
    return waitress.create_server(
        app,
        host=host,
        port=port,
        threads=settings.threads,
        ident="bedside",
        max_request_body_size=max_body,
        # Keep uploads in memory up to this size instead of spooling each one to a temp file.
        inbuf_overflow=16 * 2**20,
        # Read uploads in big chunks: at the default 8 KiB a 2 MB X-ray takes 250 trips through
        # the event loop, about a millisecond of pure overhead per study.
        recv_bytes=256 * 2**10,
        # Idle and slow connections hold no thread (waitress buffers a request until it is
        # complete), only a socket: allow many, close the silent ones soon, check often.
        connection_limit=settings.connection_limit,
        channel_timeout=settings.channel_timeout_s,
        cleanup_interval=max(1, settings.channel_timeout_s // 6),
        # poll(2), not select(2): select cannot watch descriptors above 1024.
        asyncore_use_poll=True,
        clear_untrusted_proxy_headers=True,
    )


def _allow_open_files(wanted: int) -> None:
    """Raise the soft limit on open files to `wanted` where the hard limit allows (one per connection)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning("only %d open files allowed (hard limit); server.connection_limit needs %d", target, wanted)


def notify(state: str) -> bool:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", state, exc)
        return False
    return True


@dataclass(frozen=True)
class HealthProbe:
    """What the watchdog asks: ``path`` must answer 200. ``token`` authenticates the probe (the
    technician area's own token for it) where the kiosk requires a login."""

    path: str
    token: str


def _start_watchdog(host: str, port: int, probe: HealthProbe, secure: bool = False) -> threading.Event | None:
    """Ping systemd's watchdog at half its interval, but only after the health endpoint answered 200:
    in normal mode that is /api/v1/health, which answers 503 while a model is hung in one call
    (models.stuck_after_s), so a hung inference worker stops the pings and systemd restarts the kiosk."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not os.environ.get("NOTIFY_SOCKET"):
        return None
    interval = int(usec) / 2e6
    stop = threading.Event()
    target = "127.0.0.1" if host in ("0.0.0.0", "[::]", "") else host.strip("[]")

    def loop() -> None:
        while not stop.wait(interval):
            if _healthy(target, port, probe, timeout=interval, secure=secure):
                notify("WATCHDOG=1")
            else:
                log.warning("health check failed; not pinging the watchdog")

    threading.Thread(target=loop, name="watchdog", daemon=True).start()
    return stop


def _healthy(host: str, port: int, probe: HealthProbe, timeout: float, secure: bool = False) -> bool:
    if secure:
        # The kiosk asks itself on its own address: whether it answers, not who it is.
        unchecked = ssl.create_default_context()
        unchecked.check_hostname, unchecked.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=unchecked)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", probe.path, headers={"Authorization": f"Bearer {probe.token}"})
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()
