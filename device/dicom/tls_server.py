"""The SCP's listener when ``[dicom] tls_cert`` is set: pynetdicom's threaded association server, with
the TLS handshake moved out of its accept loop.

pynetdicom (3.0) wraps each accepted socket in ``get_request``, on the one thread that accepts every
connection, with no timeout: a caller that connects and never finishes its handshake would stop
every other modality from connecting, for good; a failed handshake is dropped without a word. Here
``get_request`` only accepts, and the handshake runs in the connection's own thread, bounded by the
association timeout (acse_timeout_s); a plain association, an old TLS version, an untrusted or
missing client certificate are each refused with one warning line. Each handshake takes the
context of ``ReloadingContext.current()``, so a renewed certificate needs no restart.
"""

from __future__ import annotations

import logging
import socket
import ssl

from pynetdicom.transport import AssociationServer, ThreadedAssociationServer

from device.core.tls import ReloadingContext

log = logging.getLogger(__name__)
PDU_ASSOCIATE_RQ = 0x01  # the first byte a plain DICOM caller sends
TLS_RECORD_HANDSHAKE = 0x16


class TlsAssociationServer(ThreadedAssociationServer):
    tls: ReloadingContext
    handshake_timeout_s: float

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        return self.socket.accept()

    def shutdown(self) -> None:
        """pynetdicom's, less forgetting this server in ``AE._servers``: only AE.start_server lists it there."""
        super(AssociationServer, self).shutdown()
        self.server_close()

    def process_request_thread(self, request: socket.socket, client_address) -> None:
        secure = self._handshake(request, f"{client_address[0]}:{client_address[1]}")
        if secure is None:
            self.shutdown_request(request)
            return
        super().process_request_thread(secure, client_address)

    def _handshake(self, raw: socket.socket, peer: str) -> ssl.SSLSocket | None:
        raw.settimeout(self.handshake_timeout_s)
        try:
            first = raw.recv(1, socket.MSG_PEEK)
            if not first:
                return None
            if first[0] != TLS_RECORD_HANDSHAKE:
                plain = "a plain DICOM association" if first[0] == PDU_ASSOCIATE_RQ else "a connection without TLS"
                log.warning("%s from %s refused: this DICOM port speaks TLS only", plain, peer)
                return None
            secure = self.tls.current().wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            log.warning("DICOM TLS handshake from %s not completed: %s", peer, exc.strerror or str(exc) or "timed out")
            return None
        try:
            secure.do_handshake()
        except ssl.SSLError as exc:
            log.warning("DICOM TLS handshake from %s refused: %s", peer, exc.reason or exc.strerror or exc)
        except OSError as exc:  # a timeout, a reset
            log.warning("DICOM TLS handshake from %s not completed: %s", peer, exc.strerror or str(exc) or "timed out")
        else:
            secure.settimeout(None)  # pynetdicom sets its own timeouts on the association
            return secure
        secure.close()
        return None
