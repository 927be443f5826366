"""A real `bedside serve` on an ephemeral port: ready before it says so, many clients at once with
good and bad uploads mixed, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import socket
from concurrent.futures import ThreadPoolExecutor

from kiosk_support import dicom_without_pixels, huge_png_header, jpeg_bytes, png_bytes, start_server, stop_server


def test_concurrent_clients_good_and_bad_uploads(tmp_path, tiny_bundle):
    server = start_server(tmp_path / "data", [tiny_bundle])
    try:
        bad = [("empty.png", b"", 422), ("text.dcm", b"plain text " * 50, 415),
               ("huge.png", huge_png_header(), 413), ("cut.jpg", jpeg_bytes(1, 256)[:600], 422),
               ("nopixels.dcm", dicom_without_pixels(), 422)]

        def client_run(n: int) -> list[tuple[int, int]]:
            c = server.client()
            got = []
            try:
                for i in range(6):
                    status, body = c.upload(f"img{n}-{i}.png", png_bytes(n * 100 + i), reference=f"c{n}")
                    got.append((status, 201))
                    name, data, want = bad[(n + i) % len(bad)]
                    status, body = c.upload(name, data)
                    got.append((status, want))
                    assert "error" in body
            finally:
                c.close()
            return got

        with ThreadPoolExecutor(8) as pool:
            results = [pair for chunk in pool.map(client_run, range(8)) for pair in chunk]
        assert all(status == want for status, want in results), results
        c = server.client()
        try:
            status, listing = c.get_json("/api/v1/studies?limit=1")
            assert status == 200 and listing["total"] == 48
            status, health = c.get_json("/api/v1/health")
            assert status == 200 and health["ready"]
            status, ctype, page = c.request("GET", "/")
            assert status == 200 and b"Tiny test model" in page
        finally:
            c.close()
    finally:
        rc = stop_server(server, signal.SIGTERM)
    assert rc == 0


def test_tells_systemd_it_is_ready(tmp_path, tiny_bundle, monkeypatch):
    """Type=notify: READY=1 arrives on $NOTIFY_SOCKET once the server is up."""
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        server = start_server(tmp_path / "data", [tiny_bundle])
        try:
            assert sock.recv(256) == b"READY=1"
        finally:
            stop_server(server)
        assert sock.recv(256) == b"STOPPING=1"
