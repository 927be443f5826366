"""The technician's two live checks: grab one frame from a capture URI (before it goes into the
settings), and a DICOM C-ECHO to each result destination."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import cv2
import numpy as np
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from device.capture.errors import CaptureError
from device.capture.readers import open_reader
from device.capture.sources import SourceError, parse_source, redact
from device.core.settings.dicom import DicomSettings, Destination

PREVIEW_WIDTH = 640


@dataclass(frozen=True)
class SourceTest:
    uri: str  # redacted
    ok: bool
    message: str
    jpeg: bytes | None = None


def _preview(payload: bytes | np.ndarray) -> tuple[bytes, str]:
    """A small JPEG of the frame and its size, as words."""
    image = payload if isinstance(payload, np.ndarray) else cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise CaptureError("the source sent a frame that is not an image")
    height, width = image.shape[:2]
    if width > PREVIEW_WIDTH:
        image = cv2.resize(image, (PREVIEW_WIDTH, round(height * PREVIEW_WIDTH / width)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise CaptureError("the frame cannot be shown (JPEG encoding failed)")
    return buf.tobytes(), f"{width} x {height}"


def test_source(uri: str, open_timeout_s: float) -> SourceTest:
    """Open the source, read one frame, close it again."""
    try:
        spec = parse_source(uri.strip())
    except SourceError as exc:
        return SourceTest(uri[:200], False, str(exc))
    shown = redact(spec.uri)
    try:
        reader = open_reader(spec, open_timeout_s, open_timeout_s)
        try:
            payload = reader.read()
        finally:
            reader.close()
        if payload is None:
            return SourceTest(shown, False, "the source opened but sent no frame (an empty folder or video?)")
        jpeg, size = _preview(payload)
    except CaptureError as exc:
        return SourceTest(shown, False, str(exc))
    return SourceTest(shown, True, f"one frame received, {size} pixels", jpeg)


@dataclass(frozen=True)
class EchoResult:
    destination: str
    ok: bool
    message: str


def echo(settings: DicomSettings, destination: Destination) -> EchoResult:
    """C-ECHO from our AE title to one destination."""
    where = f"{destination.name} ({destination.ae_title} at {destination.host}:{destination.port})"
    # pynetdicom 3.0 leaks its socket when the connection is refused (see dicom/sender.py): find a
    # peer that is down with a socket of our own, which is closed.
    try:
        with socket.create_connection((destination.host, destination.port), settings.acse_timeout_s):
            pass
    except OSError as exc:
        return EchoResult(where, False, f"not reachable: {exc.strerror or exc}")
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "not reachable or it did not answer"
        return EchoResult(where, False, f"no association: {reason}")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status and getattr(status, "Status", None) == 0x0000:
        return EchoResult(where, True, "C-ECHO answered: success")
    code = getattr(status, "Status", None) if status else None
    return EchoResult(where, False, "no answer to the C-ECHO" if code is None else f"C-ECHO status 0x{code:04X}")
