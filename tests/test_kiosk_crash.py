"""Kill the server with SIGKILL in the middle of a burst of uploads: every study that was
acknowledged (201) must be there afterwards, with its image intact, and the database must pass
PRAGMA integrity_check."""

from __future__ import annotations

import hashlib
import http.client
import signal
import sqlite3
import threading

from device.core.store import DB_NAME, Store
from kiosk_support import png_bytes, start_server, stop_server

CLIENTS = 8
KILL_AFTER_ACKS = 25


def burst_then_kill(server, seed: int) -> dict[int, str]:
    """Upload from CLIENTS threads until KILL_AFTER_ACKS acks, SIGKILL the server mid-burst,
    and return {study id: sha256} of every acknowledged study."""
    acked: dict[int, str] = {}
    lock = threading.Lock()
    enough = threading.Event()
    cut_off: list[int] = []

    def client(n: int) -> None:
        c = server.client()
        try:
            for i in range(1000):
                data = png_bytes(seed + n * 1000 + i, size=192)
                try:
                    status, body = c.upload(f"c{n}-{i}.png", data)
                except (OSError, http.client.HTTPException, ValueError):
                    with lock:
                        cut_off.append(n)  # this client's request was in flight when the server died
                    return
                assert status == 201, body
                assert body["image"]["sha256"] == hashlib.sha256(data).hexdigest()
                with lock:
                    acked[body["id"]] = body["image"]["sha256"]
                    if len(acked) >= KILL_AFTER_ACKS:
                        enough.set()
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    enough.wait(120)
    server.proc.send_signal(signal.SIGKILL)
    for t in threads:
        t.join(60)
    stop_server(server)
    assert len(cut_off) == CLIENTS, "every client should have been uploading when the server was killed"
    return dict(acked)


def assert_store_holds(data_dir, acked: dict[int, str]) -> None:
    db = sqlite3.connect(data_dir / DB_NAME)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()
    store = Store.open(data_dir)
    try:
        assert store.check.ok, store.check.problems
        for study_id, sha in acked.items():
            study = store.get(study_id)
            assert study is not None, f"acknowledged study {study_id} is missing"
            assert study.image_sha256 == sha
            assert hashlib.sha256(store.image_path(sha).read_bytes()).hexdigest() == sha
    finally:
        store.close()


def test_sigkill_mid_burst_loses_no_acknowledged_study(tmp_path, tiny_bundle):
    data_dir = tmp_path / "data"
    all_acked: dict[int, str] = {}
    for round_ in range(2):
        server = start_server(data_dir, [tiny_bundle], "--threads", "8")
        acked = burst_then_kill(server, seed=round_ * 1_000_000)
        assert server.proc.returncode == -signal.SIGKILL
        assert len(acked) >= KILL_AFTER_ACKS
        all_acked.update(acked)
        assert_store_holds(data_dir, all_acked)

    # And the restarted appliance serves every one of them.
    server = start_server(data_dir, [tiny_bundle])
    c = server.client()
    try:
        for study_id, sha in all_acked.items():
            status, body = c.get_json(f"/api/v1/studies/{study_id}")
            assert status == 200 and body["image"]["sha256"] == sha
        status, health = c.get_json("/api/v1/health")
        assert health["store"]["ok"] and health["store"]["studies_at_start"] >= len(all_acked)
    finally:
        c.close()
        stop_server(server)
