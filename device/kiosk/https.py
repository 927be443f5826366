"""The kiosk's HTTPS listener: cheroot (CherryPy's WSGI server: a thread pool, TLS on Python's ``ssl``).

Why cheroot: waitress, which serves plain HTTP, has no TLS at all; gunicorn forks worker processes
under its own arbiter, and each would load every model and open the study store again. cheroot runs
in this process like waitress, and its connections are Python sockets that ``ssl`` can wrap.

What is added to it, and why (cheroot does these otherwise or not at all):

- The TLS handshake runs in the worker thread that serves the connection, not in cheroot's single
  accept loop: there one client that opens a connection and never finishes its handshake would
  hold every other new connection for the whole socket timeout. It is bounded by
  ``HANDSHAKE_TIMEOUT_S`` or ``server.channel_timeout_s``, the shorter; a refused handshake (TLS
  1.0/1.1, no shared cipher, a stall) is one warning line, and the worker goes on to the next
  connection. A stalled handshake still holds its worker thread until then.
- Plain HTTP sent to this port gets no page: a 400 whose one line says to use https://.
- Each handshake takes the context of ``ReloadingContext.current()``: a renewed certificate serves
  new connections at once, while those already open (a study being uploaded) keep theirs.
- cheroot's own error lines go to this module's logger instead of stderr.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading

from cheroot import wsgi
from cheroot.makefile import MakeFile
from cheroot.server import HTTPConnection
from flask import Flask

from device.core.settings import ServerSettings
from device.core.tls import ReloadingContext

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT_S = 10  # at most this long (or server.channel_timeout_s) to send a first byte and shake hands
TLS_RECORD_HANDSHAKE = 0x16  # the first byte of every TLS ClientHello
_PLAIN_HTTP_WORDS = b"This port speaks HTTPS only: open https:// instead.\n"
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_PLAIN_HTTP_WORDS), _PLAIN_HTTP_WORDS)
)


class _TlsConnection(HTTPConnection):
    """A connection that becomes TLS in its worker thread before its first request is read."""

    secured = False

    def communicate(self):
        if not self.secured and not self._handshake():
            return False
        return super().communicate()

    def _handshake(self) -> bool:
        raw, peer = self.socket, f"{self.remote_addr}:{self.remote_port}"
        server: _Server = self.server
        raw.settimeout(min(HANDSHAKE_TIMEOUT_S, server.timeout))
        try:
            first = raw.recv(1, socket.MSG_PEEK)
            if not first:
                return False
            if first[0] != TLS_RECORD_HANDSHAKE:
                log.warning("plain HTTP from %s to the HTTPS port refused", peer)
                raw.sendall(PLAIN_HTTP_ANSWER)
                return False
            # The TLS socket takes over the descriptor at once (the plain one is detached), so it is
            # the one cheroot closes, whatever the handshake does.
            secure = server.tls.current().wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            self.socket = secure
            secure.do_handshake()
        except ssl.SSLError as exc:
            log.warning("TLS handshake from %s refused: %s", peer, exc.reason or exc.strerror or exc)
            return False
        except OSError as exc:  # a timeout, a reset
            log.warning("TLS handshake from %s not completed: %s", peer, exc.strerror or str(exc) or "timed out")
            return False
        secure.settimeout(server.timeout)
        self.rfile = MakeFile(secure, "rb", self.rbufsize)
        self.wfile = MakeFile(secure, "wb", self.wbufsize)
        version, cipher = secure.version(), secure.cipher()
        self.ssl_env = {"wsgi.url_scheme": "https", "HTTPS": "on", "SSL_PROTOCOL": version or "",
                        "SSL_CIPHER": cipher[0] if cipher else ""}
        self.secured = True
        return True


class _Server(wsgi.Server):
    ConnectionClass = _TlsConnection
    tls: ReloadingContext

    def error_log(self, msg="", level=logging.INFO, traceback=False):
        log.log(level, "%s", msg, exc_info=traceback)


class HttpsServer:
    """Binds at construction (port 0: a free one, read ``port``); ``start`` serves in a thread of its
    own until ``stop``."""

    def __init__(self, app: Flask, settings: ServerSettings, tls: ReloadingContext, max_body: int):
        self._server = _Server(
            (settings.host, settings.port), app,
            numthreads=settings.threads,
            server_name="bedside",
            timeout=settings.channel_timeout_s,
            shutdown_timeout=5,
            # Waiting connections queue here rather than being refused while every thread is busy.
            request_queue_size=settings.connection_limit,
            accepted_queue_size=settings.connection_limit,
        )
        self._server.tls = tls
        self._server.max_request_body_size = max_body
        self._server.prepare()
        self.port = int(self._server.bind_addr[1])
        self._thread = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve, name="https", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
