"""The data dir on a small tmpfs (mounted for the test; needs root, else skipped with the reason):
below the free-space reserve new studies get 507 "Storage full" with a plain message on screen, while
viewing, the audit log and health keep working; a disk that fills all the same gives 507, never 500."""

from __future__ import annotations

import io
import os
import subprocess

import pytest

from device.appliance.context import appliance_of
from device.core.settings import KioskConfig
from device.kiosk import create_app
from kiosk_support import form_client, png_bytes

DISK_MB = 48
RESERVE_MB = 16


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the disk-full path needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _app(config: KioskConfig, data_dir, reserve_mb: int):
    data = config.model_dump(mode="json")
    data["store"] = {"data_dir": str(data_dir / "data"), "reserve_mb": reserve_mb}
    return create_app(KioskConfig.model_validate(data))


def _fill(disk, leave_bytes: int) -> None:
    """Fill the disk up to `leave_bytes` free (0: until the file system refuses)."""
    chunk = bytes(2**20)
    with open(disk / "filler", "ab") as fh:
        while (free := os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize) > leave_bytes:
            try:
                fh.write(chunk[: max(4096, min(len(chunk), free - leave_bytes))])
                fh.flush()
            except OSError:
                return


def _upload(client, seed: int, path: str = "/api/v1/studies"):
    form = {"file": (io.BytesIO(png_bytes(seed)), "x.png")}
    return client.post(path, data=form, content_type="multipart/form-data")


def test_below_the_reserve_new_studies_get_507_and_reading_goes_on(config, small_disk):
    app = _app(config, small_disk, RESERVE_MB)
    try:
        with form_client(app) as client:
            sid = _upload(client, 1).json["id"]
            assert client.get("/api/v1/health").json["storage"]["ok"] is True
            _fill(small_disk, (RESERVE_MB - 4) * 2**20)
            r = _upload(client, 2)
            assert r.status_code == 507 and r.json["error"]["code"] == "storage_full"
            assert r.json["error"]["message"].startswith("Storage full - export and remove old studies")
            page = _upload(client, 3, "/studies")
            assert page.status_code == 507 and "Storage full - export and remove old studies" in page.get_data(as_text=True)
            assert client.get(f"/api/v1/studies/{sid}").status_code == 200
            assert client.get(f"/studies/{sid}").status_code == 200
            assert client.post(f"/api/v1/studies/{sid}/review", json={"note": "seen"}).status_code == 200
            actions = [e["action"] for e in client.get(f"/api/v1/audit?study={sid}").json["entries"]]
            assert actions.count("study_viewed") == 2 and "study_reviewed" in actions
            health = client.get("/api/v1/health")
            assert health.status_code == 200 and health.json["storage"]["ok"] is False
            assert health.json["storage"]["reserve_bytes"] == RESERVE_MB * 2**20
    finally:
        appliance_of(app).close()


def test_a_disk_full_despite_the_reserve_gives_507_not_500(config, small_disk):
    app = _app(config, small_disk, 0)
    try:
        with form_client(app) as client:
            sid = _upload(client, 4).json["id"]
            # The store's write-ahead log emptied first: a commit must then grow it on disk by about 50 KiB
            # (how big it already is depends on what start-up wrote, migrations included, and its room is
            # reused); 16 KiB left: room for the image file, not for the database as well.
            appliance_of(app).store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            _fill(small_disk, 16 * 2**10)
            answers = [_upload(client, 5 + i) for i in range(8)]
            assert {r.status_code for r in answers} <= {201, 507}
            messages = {r.json["error"]["message"] for r in answers if r.status_code == 507}
            assert any("the disk is full" in m for m in messages), messages
            assert client.get(f"/api/v1/studies/{sid}").status_code == 200
            assert client.post(f"/api/v1/studies/{sid}/review", json={"note": "x" * 1500}).status_code in (200, 507)
    finally:
        appliance_of(app).close()
