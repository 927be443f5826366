"""An MJPEG-over-HTTP reader: multipart JPEG parts read with explicit socket timeouts.

Not cv2.VideoCapture: on a stream that stalls without closing, its read can block indefinitely,
which is exactly the failure cameras show in the field. Here every socket operation has a
timeout, and ``interrupt`` (from the watchdog's thread) shuts the socket down so a blocked read
returns at once. The frame stays as JPEG bytes: decoding is the consumer's business.

Accepts both proper ``multipart/x-mixed-replace; boundary=...`` responses (IP cameras, mjpg-streamer)
and FFmpeg's mpjpeg muxer, which sends ``application/octet-stream`` with ``--ffmpeg`` parts and
chunked transfer encoding (http.client undoes the chunking).
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
from urllib.parse import unquote, urlsplit

from device.capture.errors import CaptureError

MAX_PART_BYTES = 32 * 2**20  # a 4K JPEG is a few MB; a larger part means a broken or hostile stream
MAX_HEADER_LINES = 64
MAX_LINE_BYTES = 8192


class MjpegReader:
    """Connects in the constructor; ``read`` returns the next JPEG's bytes or raises CaptureError."""

    def __init__(self, url: str, open_timeout_s: float, read_timeout_s: float):
        parts = urlsplit(url)
        self._closed = threading.Event()
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=open_timeout_s, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=open_timeout_s)
        self._conn = conn
        headers = {"Accept": "multipart/x-mixed-replace, image/jpeg", "User-Agent": "bedside-capture"}
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._sock: socket.socket | None = None
        try:
            conn.request("GET", path, headers=headers)
            # Kept now: for an HTTP/1.0 or `Connection: close` response http.client drops conn.sock
            # in getresponse() (the response owns the socket from then on).
            self._sock = conn.sock
            response = conn.getresponse()
            if response.status != 200:
                raise CaptureError(f"the camera answered HTTP {response.status} {response.reason}")
            self._sock.settimeout(read_timeout_s)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise CaptureError(f"cannot connect: {_reason(exc)}") from None
        except CaptureError:
            conn.close()
            raise
        self._response = response
        self._boundary = _boundary(response.getheader("Content-Type", ""))
        # True when the boundary before the next part was already consumed (a part without
        # Content-Length ends by reading up to and including the next boundary line).
        self._at_part = False

    def read(self) -> bytes:
        try:
            headers = self._part_headers()
            length = headers.get("content-length")
            if length is not None:
                data = self._read_exactly(_part_length(length))
            else:
                data = self._read_until_boundary()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if self._closed.is_set():
                raise CaptureError("interrupted") from None
            raise CaptureError(f"stream broken: {_reason(exc)}") from None
        if not data.startswith(b"\xff\xd8"):
            raise CaptureError("stream part is not a JPEG image")
        return data

    def interrupt(self) -> None:
        """Unblock a read in progress from another thread; the owner still calls close()."""
        self._closed.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already disconnected

    def close(self) -> None:
        self._closed.set()
        self._response.close()
        self._conn.close()

    # ---- multipart parsing --------------------------------------------------------------------

    def _line(self) -> bytes:
        line = self._response.readline(MAX_LINE_BYTES + 1)
        if not line:
            raise CaptureError("the camera closed the stream")
        if len(line) > MAX_LINE_BYTES:
            raise CaptureError("stream has an over-long header line")
        return line

    def _part_headers(self) -> dict[str, str]:
        """Skip to the next boundary line, then read the part's headers up to the blank line."""
        if not self._at_part:
            self._skip_to_boundary()
        self._at_part = False
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            line = self._line().strip()
            if not line:
                return headers
            name, sep, value = line.decode("latin-1").partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        raise CaptureError("stream part has too many header lines")

    def _skip_to_boundary(self) -> None:
        for _ in range(MAX_HEADER_LINES):
            line = self._line().strip()
            if line.startswith(b"--"):
                if self._boundary is None:
                    self._boundary = line[2:]
                return
        raise CaptureError("no multipart boundary in the stream")

    def _read_exactly(self, n: int) -> bytes:
        data = self._response.read(n)
        if len(data) != n:
            raise CaptureError("the camera closed the stream mid-frame")
        return data

    def _read_until_boundary(self) -> bytes:
        """For parts without Content-Length: the bytes up to the next boundary line."""
        marker = b"--" + (self._boundary or b"")
        chunks: list[bytes] = []
        size = 0
        while True:
            line = self._response.readline(65536)
            if not line:
                raise CaptureError("the camera closed the stream mid-frame")
            if line.startswith(marker) and line.strip() in (marker, marker + b"--"):
                # The boundary's leading CRLF belongs to the delimiter, not to the JPEG.
                self._at_part = True
                data = b"".join(chunks)
                return data[:-2] if data.endswith(b"\r\n") else data
            chunks.append(line)
            size += len(line)
            if size > MAX_PART_BYTES:
                raise CaptureError("stream part is larger than 32 MiB")


def _boundary(content_type: str) -> bytes | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value:
            value = value.strip('"')
            return (value[2:] if value.startswith("--") else value).encode("latin-1")
    return None


def _part_length(text: str) -> int:
    n = int(text)
    if not 0 < n <= MAX_PART_BYTES:
        raise ValueError(f"part length {n} out of range")
    return n


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    return str(exc) or type(exc).__name__
