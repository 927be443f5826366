"""A real `bedside serve` on loopback against memory bombs and connection exhaustion: the bombs are
refused with 413 while the server's peak memory grows by less than 300 MB, a legitimate 30-megapixel
radiograph is still triaged, and 500 idle or half-sent connections block neither health nor an upload."""

from __future__ import annotations

import pytest

from hostile_inputs import deflated_dicom_bomb, hold_connections, png_pixel_bomb, radiograph_png, reset_peak, status_kb
from kiosk_support import Client, png_bytes, running_server

MAX_GROWTH_BYTES = 300 * 2**20
IDLE_CONNECTIONS = 500


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
        rss = reset_peak(server.proc.pid)
        status, body = client.upload(name, data)
        growth = status_kb(server.proc.pid, "VmHWM") * 1024 - rss
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


def test_idle_and_slow_connections_block_neither_health_nor_uploads(server):
    held = hold_connections(server.url, IDLE_CONNECTIONS)
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
    (sock,) = hold_connections(server.url, 1)
    try:
        sock.settimeout(60)  # channel_timeout_s is 10 here; the server closes it first
        assert sock.recv(1) == b""
    finally:
        sock.close()
