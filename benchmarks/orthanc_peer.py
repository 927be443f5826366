"""A real Orthanc (Debian package orthanc) on loopback for the tests and benchmarks: its own configuration and
storage, HTTP and DICOM ports chosen free, and its REST API to see what arrived."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from loopback import free_port

AE_TITLE = "ORTHANC"
START_S = 60


class Orthanc:
    """``settings``: more of Orthanc's configuration (DICOM TLS: DicomTlsEnabled and its files)."""

    def __init__(self, folder: Path, settings: dict | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "bedside-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": AE_TITLE,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": True,
            "Plugins": [], "HttpServerEnabled": True, "DicomServerEnabled": True, **(settings or {}),
        }))
        self.proc: subprocess.Popen | None = None
        self.log = folder / "orthanc.log"

    def start(self) -> None:
        """Start and wait (bounded) until its REST API answers."""
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(["Orthanc", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer in {START_S} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc = None

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def instances(self) -> list[dict]:
        """Every stored instance's tags (simplified: keyword -> value)."""
        return [self.get(f"/instances/{i}/simplified-tags") for i in self.get("/instances")]
