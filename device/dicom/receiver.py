"""The C-STORE SCP inside the kiosk process (pynetdicom): C-ECHO, and storage of the SOP classes in
contexts.py, from the callers the ``[dicom]`` settings allow.

An association from an unknown calling AE title, or from a known title at another address, is
rejected before any presentation context is looked at: A-ASSOCIATE-RJ, rejected-permanent,
service-user, "calling AE title not recognised" - what a PACS administrator expects to see.

With ``tls_cert`` the port speaks TLS only (device/dicom/tls_server.py); with
``tls_require_client_cert`` an allowed caller must also present a client certificate from ``tls_ca``
that names it (its ``tls_name``, else its host), or it is rejected the same way.
"""

from __future__ import annotations

import logging
import threading

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from device.core.settings import ConfigError
from device.core.settings.dicom import DicomSettings
from device.core.tls import ReloadingContext, TlsError, certificate_names
from device.dicom.contexts import supported_contexts
from device.dicom.ingest import Ingest
from device.dicom.tls_server import TlsAssociationServer

log = logging.getLogger(__name__)

REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


class DicomReceiver:
    """A listening SCP; ``close`` stops it (associations in progress are aborted)."""

    def __init__(self, settings: DicomSettings, ingest: Ingest):
        self.settings = settings
        self.ingest = ingest
        self._allowed = {(c.ae_title.strip(), c.host): c.certificate_name() for c in settings.allowed_callers}
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.supported_contexts = supported_contexts()
        # Also pynetdicom's own title check, behind _check_caller (which adds the address); with no
        # allowed caller the list is empty, which pynetdicom reads as "anyone": _check_caller refuses.
        self.ae.require_calling_aet = sorted({title for title, _ in self._allowed})
        self.ae.maximum_associations = settings.max_associations
        self.ae.acse_timeout = settings.acse_timeout_s
        self.ae.dimse_timeout = settings.dimse_timeout_s
        self.ae.network_timeout = settings.network_timeout_s
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> "DicomReceiver":
        """Bind and listen; ConfigError when the address cannot be bound (taken, not ours)."""
        handlers = [(evt.EVT_REQUESTED, self._check_caller), (evt.EVT_C_STORE, self._store)]
        address = (self.settings.host, self.settings.port)
        tls = self.settings.server_tls()
        try:
            if tls is None:
                self._server = self.ae.start_server(address, block=False, evt_handlers=handlers)
            else:
                self._server = self._start_tls(address, handlers, ReloadingContext(tls))
        except TlsError as exc:
            raise ConfigError(f"[dicom]: cannot serve DICOM over TLS: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"[dicom]: cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        log.info("DICOM SCP %s listening on %s:%d%s", self.settings.ae_title, self.settings.host, self.settings.port,
                 "" if tls is None else " (TLS only)")
        return self

    def _start_tls(self, address, handlers, tls: ReloadingContext) -> TlsAssociationServer:
        """As AE.start_server(block=False) does, with the TLS listener's class."""
        server = self.ae.make_server(address, evt_handlers=handlers, server_class=TlsAssociationServer)
        server.tls, server.handshake_timeout_s = tls, self.settings.acse_timeout_s
        threading.Thread(target=server.serve_forever, name="dicom-tls-acceptor", daemon=True).start()
        return server

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _check_caller(self, event: evt.Event) -> None:
        calling = event.assoc.requestor.primitive.calling_ae_title.strip()
        host = event.assoc.requestor.address
        why = "calling AE title not recognised (from this address)"
        if (calling, host) in self._allowed:
            if not self.settings.tls_require_client_cert:
                return
            names = certificate_names(event.assoc.dul.socket.socket.getpeercert())
            wanted = self._allowed[(calling, host)]
            if wanted in names:
                return
            why = f"its client certificate names {', '.join(sorted(names)) or 'nobody'}, not {wanted}"
        # Reject first: an error while recording it must not let the association go on.
        event.assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        # As pynetdicom does after its own rejections: kill() lets the DUL send the A-ASSOCIATE-RJ
        # before the socket is shut down (without it the caller sees an abort instead).
        event.assoc.kill()
        log.warning("DICOM association from %r at %s rejected: not an allowed caller (%s)", calling, host, why)
        self.ingest.studies.store.dicom_event(event="association_rejected", calling_ae=calling, peer=host,
                                            sop_instance_uid="", status=None, detail=why)

    def _store(self, event: evt.Event) -> int:
        # The bytes as received, with a file meta built from the context: parsed by ingest, not here.
        data = event.encoded_dataset(include_meta=True)
        return self.ingest.store(data, event.assoc.requestor.ae_title.strip(), event.assoc.requestor.address)
