"""The outbox's C-STORE SCU: one thread that sends what is due to each destination (FHIR Bundles to
their folder or endpoint), and backs off (doubling from retry_first_s up to retry_max_s per item)
while a peer is down."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections import defaultdict

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from device.core.settings.dicom import Destination, DicomSettings, FhirDestination, PeerTls
from device.core.tls import TlsError
from device.dicom import fhir
from device.dicom.outbox import Item, Outbox

log = logging.getLogger(__name__)

SENT_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and the storage warnings (stored, coerced)
IDLE_WAKE_S = 60.0  # with nothing queued, look again this often (wake() is the usual trigger)


class Sender:
    def __init__(self, settings: DicomSettings, outbox: Outbox):
        self.settings = settings
        self.outbox = outbox
        self._destinations = {d.name: d for d in settings.destinations}
        self._fhir = {d.name: d for d in settings.fhir_destinations}
        # Made once (an insecure one warns once); one that cannot be made says why at each try.
        self._tls = {d.name: _client_context(d, f"DICOM destination {d.name}") for d in settings.destinations if d.tls}
        self._tls.update((d.name, _client_context(d, f"FHIR destination {d.name}"))
                         for d in settings.fhir_destinations if d.url and d.url.startswith("https://"))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicom-sender", daemon=True)

    def start(self) -> "Sender":
        self._thread.start()
        return self

    def wake(self) -> None:
        """Something was queued: look now."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.settings.network_timeout_s + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._send_due()
            except Exception:  # a bug here must not end delivery for good; the next round retries
                log.exception("DICOM sender: unexpected error")
                self.outbox.requeue_sending()
            when = self.outbox.next_due()
            wait = IDLE_WAKE_S if when is None else min(IDLE_WAKE_S, max(0.0, when - time.time()))
            self._wake.wait(wait)
            self._wake.clear()

    def _send_due(self) -> None:
        by_destination: dict[str, list[Item]] = defaultdict(list)
        for item in self.outbox.due(time.time()):
            by_destination[item.destination].append(item)
        for name, items in by_destination.items():
            if name in self._fhir:
                for item in items:
                    self._deliver(self._fhir[name], item)
                continue
            destination = self._destinations.get(name)
            if destination is None:
                for item in items:
                    self.outbox.retry(item, f"destination {name!r} is not configured", self._backoff(item))
                continue
            self._send(destination, items)

    def _send(self, destination: Destination, items: list[Item]) -> None:
        ae = AE(ae_title=self.settings.ae_title)
        ae.acse_timeout = self.settings.acse_timeout_s
        ae.dimse_timeout = self.settings.dimse_timeout_s
        ae.network_timeout = self.settings.network_timeout_s
        for sop_class in sorted({i.sop_class for i in items}):
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        where = f"{destination.ae_title} at {destination.host}:{destination.port}"
        context = self._tls.get(destination.name)
        refused = str(context) if isinstance(context, TlsError) else self._unreachable(destination, context)
        # With TLS the peer's certificate must also name host (pynetdicom passes it as server_hostname).
        tls_args = (context, destination.host) if context is not None and not refused else None
        assoc = None if refused else ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                                                  tls_args=tls_args)
        if assoc is None or not assoc.is_established:
            why = f"cannot connect to {where}: {refused}" if refused else f"cannot associate with {where}"
            log.warning("DICOM sender: %s; %d objects wait", why, len(items))
            for item in items:
                self.outbox.retry(item, why, self._backoff(item))
            return
        try:
            for item in items:
                self._store(assoc, item)
        finally:
            if assoc.is_established:
                assoc.release()

    def _unreachable(self, destination: Destination, tls: ssl.SSLContext | None) -> str | None:
        """Why a connection to the peer fails now, or None. pynetdicom 3.0 leaks its socket when the
        connect is refused (it shuts it down but never closes it): during an outage each retry would
        leave one behind, so a down peer is found out here, with a socket that is closed. With TLS
        the handshake is tried here too: pynetdicom only says that the association failed, this
        says why (an untrusted or expired certificate, another host name) in the outbox's words."""
        try:
            with socket.create_connection((destination.host, destination.port), self.settings.acse_timeout_s) as sock:
                if tls is not None:
                    tls.wrap_socket(sock, server_hostname=destination.host).close()
                return None
        except ssl.SSLCertVerificationError as exc:
            return f"its certificate is refused: {exc.verify_message.rstrip('.')}"
        except ssl.SSLError as exc:
            return f"TLS refused: {exc.reason or exc}"
        except OSError as exc:
            return exc.strerror or str(exc)

    def _store(self, assoc, item: Item) -> None:
        try:
            status = assoc.send_c_store(item.file)
        except (OSError, ValueError) as exc:
            self.outbox.retry(item, f"{type(exc).__name__}: {exc}", self._backoff(item))
            return
        code = status.get("Status") if status else None
        if code in SENT_STATUSES:
            self.outbox.sent(item)
        elif code is None:  # no response: the association went down mid-way
            self.outbox.retry(item, "no response from the peer", self._backoff(item))
        else:
            log.warning("DICOM sender: %s refused %s with status 0x%04X", item.destination, item.sop_instance_uid, code)
            self.outbox.failed(item, f"the peer answered status 0x{code:04X}")

    def _deliver(self, destination: FhirDestination, item: Item) -> None:
        """One FHIR Bundle to its folder or endpoint (device/dicom/fhir.py)."""
        context = self._tls.get(destination.name)
        try:
            if isinstance(context, TlsError):
                raise fhir.NotDelivered(str(context))
            fhir.deliver(destination, item.sop_instance_uid, item.file.read_bytes(), context)
        except fhir.Refused as exc:
            log.warning("FHIR destination %s refused Bundle %s: %s", item.destination, item.sop_instance_uid, exc)
            self.outbox.failed(item, str(exc))
        except fhir.NotDelivered as exc:
            self.outbox.retry(item, str(exc), self._backoff(item))
        else:
            self.outbox.sent(item)

    def _backoff(self, item: Item) -> float:
        return min(self.settings.retry_max_s, self.settings.retry_first_s * 2 ** item.attempts)


def _client_context(peer: PeerTls, name: str) -> ssl.SSLContext | TlsError:
    try:
        return peer.client_tls().context(name)
    except TlsError as exc:
        log.error("%s: %s", name, exc)
        return exc
