"""SIGKILL the kiosk while storescu sends 100 instances: every instance that got a success status
is in the store afterwards (success is only sent after the fsync and the commit)."""

from __future__ import annotations

import signal
import subprocess
import threading

import numpy as np
import pydicom

from device.core.store import Store
from dicom_factory import grayscale_dicom
from dcmtk_peer import storescu_config
from dicom_peers import need_dcmtk, wait_until
from loopback import free_port
from kiosk_support import start_server, stop_server

COUNT = 100
KILL_AFTER = 20  # acknowledged instances before the kill


def test_every_acknowledged_instance_survives_sigkill(tmp_path, tiny_bundle):
    need_dcmtk()
    files = []
    for i in range(COUNT):
        path = tmp_path / "send" / f"{i:03d}.dcm"
        path.parent.mkdir(exist_ok=True)
        stored = np.random.default_rng(i).integers(0, 255, (64, 64), dtype=np.uint8)
        path.write_bytes(grayscale_dicom(stored, bits=8, modality="CR"))
        files.append(path)
    config = tmp_path / "bedside.toml"
    config.write_text('[dicom]\nallowed_callers = [{ ae_title = "XRAY1", host = "127.0.0.1" }]\n')
    port = free_port()
    server = start_server(tmp_path / "data", [tiny_bundle], "--config", str(config), "--dicom-port", str(port))
    acknowledged: list[str] = []
    sender = subprocess.Popen(
        ["storescu", "-v", "--no-halt", "--config-file", str(storescu_config(files[:1], tmp_path)), "Files",
         "-aet", "XRAY1", "-aec", "BEDSIDE", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    reader = threading.Thread(target=_read_acknowledged, args=(sender, acknowledged), daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(acknowledged) >= KILL_AFTER, 120, f"{KILL_AFTER} instances acknowledged")
        server.proc.send_signal(signal.SIGKILL)
    finally:
        stop_server(server, signal.SIGKILL)
        sender.wait(60)
        reader.join(10)
    assert KILL_AFTER <= len(acknowledged) < COUNT  # the kill came mid-way
    store = Store.open(tmp_path / "data")
    try:
        missing = [str(p) for p in acknowledged
                   if store.dicom_instance(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) is None]
        assert store.check.ok, store.check.problems
    finally:
        store.close()
    assert not missing


def _read_acknowledged(sender: subprocess.Popen, acknowledged: list) -> None:
    """The files storescu got a Success response for, in order (it logs the file, then the response)."""
    current = None
    for line in sender.stdout:
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif "Received Store Response (Success)" in line and current:
            acknowledged.append(current)
    sender.stdout.close()
