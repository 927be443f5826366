"""A real `bedside serve` on loopback against memory bombs and connection exhaustion: the bombs are
refused with 413 while the server's peak memory grows by less than 300 MB, a legitimate 30-megapixel
radiograph is still triaged, and 500 idle or half-sent connections block neither health nor an upload."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hostile_inputs import deflated_dicom_bomb, png_pixel_bomb, radiograph_png
from kiosk_support import Client, png_bytes, running_server

MAX_GROWTH_BYTES = 300 * 2**20
IDLE_CONNECTIONS = 500


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def _reset_peak(pid: int) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5); returns the RSS in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kb(pid, "VmRSS") * 1024


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    config = tmp_path_factory.mktemp("conf") / "bedside.toml"
    config.write_text("[server]\nchannel_timeout_s = 10\n")
    with running_server(tmp_path_factory.mktemp("data"), [tiny_bundle], "--config", str(config)) as s:
        yield s


@pytest.mark.parametrize("name, make", [("bomb.png", png_pixel_bomb), ("bomb.dcm", deflated_dicom_bomb)])
def test_bombs_are_refused_before_their_memory_is_committed(server, name, make):
    data = make()
    client = server.client()
    try:
        rss = _reset_peak(server.proc.pid)
        status, body = client.upload(name, data)
        growth = _status_kb(server.proc.pid, "VmHWM") * 1024 - rss
    finally:
        client.close()
    assert status == 413 and body["error"]["code"] == "too_large", body
    assert "decode" in body["error"]["message"]
    assert growth < MAX_GROWTH_BYTES, f"peak RSS grew by {growth / 2**20:.0f} MiB"


def test_a_30_megapixel_radiograph_is_still_triaged(server):
    client = server.client()
    try:
        status, body = client.upload("radiograph.png", radiograph_png())
    finally:
        client.close()
    assert status == 201, body
    assert (body["image"]["width"], body["image"]["height"]) == (6000, 5000)


def _hold_connections(url: str, count: int) -> list[socket.socket]:
    """Half idle (connected, silent), half slow (part of a request's headers or body sent)."""
    client = Client(url)
    address = (client.host, client.port)
    client.close()
    held = []
    for i in range(count):
        sock = socket.create_connection(address, timeout=10)
        if i % 3 == 1:
            sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        elif i % 3 == 2:
            sock.sendall(b"POST /api/v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nabc")
        held.append(sock)
    return held


def test_idle_and_slow_connections_block_neither_health_nor_uploads(server):
    held = _hold_connections(server.url, IDLE_CONNECTIONS)
    client = Client(server.url, timeout=10)  # a bounded wait: health must answer well within it
    try:
        statuses = [client.get_json("/api/v1/health")[0] for _ in range(30)]
        upload_status, _ = client.upload("x.png", png_bytes(7))
    finally:
        client.close()
        for sock in held:
            sock.close()
    assert statuses == [200] * 30
    assert upload_status == 201


def test_a_silent_connection_is_closed_after_the_channel_timeout(server):
    (sock,) = _hold_connections(server.url, 1)
    try:
        sock.settimeout(60)  # channel_timeout_s is 10 here; the server closes it first
        assert sock.recv(1) == b""
    finally:
        sock.close()
