"""What the technician's status page shows: versions, backends, CPU and GPU, temperatures where the
kernel reports them, disk, uptime, recent problems and engine builds. Read from /proc and /sys
(absent files are left out, never guessed)."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from device.core.certificates import CertificateError, describe_certificate
from device.core.settings import LOOPBACK_NAMES
from device.runtime import registry

PACKAGES = ("bedside", "onnxruntime", "numpy", "opencv-python-headless", "pydicom", "pynetdicom", "flask", "waitress", "cheroot")
THERMAL = Path("/sys/class/thermal")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # the NVIDIA driver: one folder per GPU, with "information"
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")  # a Jetson names itself here


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "kernel": platform.release()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def cpu() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"model": model or platform.machine(), "cores": os.cpu_count(), "usable": len(os.sched_getaffinity(0)),
            "load_1_5_15": [round(v, 2) for v in load] if load else None}


def memory() -> dict:
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return {"total_bytes": values.get("MemTotal"), "available_bytes": values.get("MemAvailable")}


def gpus(nvidia: Path = NVIDIA_GPUS, device_tree: Path = DEVICE_TREE_MODEL) -> list[dict]:
    """The GPUs the kernel reports: each NVIDIA driver GPU's model and bus, or the Jetson module."""
    found = []
    for folder in sorted(nvidia.glob("*")):
        try:
            fields = dict(line.split(":", 1) for line in (folder / "information").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        found.append({"model": fields.get("Model", "").strip() or "NVIDIA GPU", "bus": folder.name})
    if not found:
        try:
            model = device_tree.read_bytes().rstrip(b"\0").decode(errors="replace").strip()
        except OSError:
            model = ""
        if "jetson" in model.lower():
            found.append({"model": model, "bus": "integrated"})
    return found


def temperatures() -> list[dict]:
    """Every thermal zone the kernel exposes, in degrees Celsius."""
    found = []
    for zone in sorted(THERMAL.glob("thermal_zone*")):
        try:
            milli = int((zone / "temp").read_text().strip())
            kind = (zone / "type").read_text().strip()
        except (OSError, ValueError):
            continue
        found.append({"zone": zone.name, "type": kind, "celsius": round(milli / 1000, 1)})
    return found


def disk(path: Path) -> dict:
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return {"path": str(path), "error": exc.strerror or str(exc)}
    return {"path": str(path), "total_bytes": usage.total, "free_bytes": usage.free,
            "used_percent": round(100 * (usage.total - usage.free) / usage.total, 1) if usage.total else None}


def uptime(started_at: float) -> dict:
    system = None
    try:
        system = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return {"kiosk_s": round(time.time() - started_at), "system_s": round(system) if system is not None else None}


def backends() -> dict:
    return {name: {"available": s.ok, "version": s.version, "reason": s.reason,
                   "target": registry.backend_class(name).target}
            for name, s in registry.all_availability().items()}


def collect(config, started_at: float, recent: list, exams=None) -> dict:
    """The status page's content; ``exams`` (the kiosk's, None in safe mode) adds models and engine builds."""
    models = [] if exams is None else [
        {"id": e.id, "version": e.bundle.manifest.version, "backend": e.model.backend,
         "precision": e.model.precision, "engine_build": e.gpu_status(), "remote": e.remote_status()}
        for e in exams
    ]
    return {
        "versions": versions(),
        "executable": sys.executable,
        "backends": backends(),
        "models": models,
        "cpu": cpu(),
        "gpus": gpus(),
        "memory": memory(),
        "temperatures": temperatures(),
        "disk": disk(config.store.data_dir),
        "uptime": uptime(started_at),
        "recent_problems": [vars(p) for p in recent],
        "links": links(config),
    }


def links(config) -> list[dict]:
    """Each link the kiosk serves or opens on the network: TLS or not, its certificate (subject,
    SHA-256 fingerprint, expiry) and, where something needs doing, a warning in plain words (a
    certificate within 30 days of expiry, a plain link on the network, an insecure switch)."""
    server, dicom = config.server, config.dicom
    found = [_served("Kiosk (HTTPS)" if server.tls_cert else "Kiosk (HTTP)", server.tls_cert,
                     None if server.tls_cert or server.host in LOOPBACK_NAMES else
                     f"pages, API and passwords cross the network in clear text on {server.host}:{server.port}: "
                     "set [server] tls_cert and tls_key")]
    if dicom.port:
        found.append(_served("DICOM listener (TLS)" if dicom.tls_cert else "DICOM listener", dicom.tls_cert,
                             None if dicom.tls_cert or dicom.host in LOOPBACK_NAMES else
                             "images arrive in clear text: set [dicom] tls_cert and tls_key"))
    for d in dicom.destinations:
        found.append(_peer(f"DICOM destination {d.name}", d, d.tls, "set tls = true and tls_ca"))
    for f in dicom.fhir_destinations:
        if f.url:
            found.append(_peer(f"FHIR destination {f.name}", f, f.url.startswith("https://"), "use an https:// url"))
    remote = config.models.remote_settings()
    if remote is not None:
        found.append(_peer("Central inference node", remote, remote.secure, "use an https:// remote_url"))
    return found


def _served(name: str, cert: Path | None, plain_warning: str | None) -> dict:
    link = {"name": name, "tls": cert is not None, "warning": plain_warning}
    if cert is None:
        return link
    try:
        info = describe_certificate(cert)
    except CertificateError as exc:
        return {**link, "warning": str(exc)}
    return {**link, "subject": info.subject, "fingerprint": info.fingerprint_sha256,
            "expires": f"{info.not_after:%Y-%m-%d}", "days_left": info.days_left, "warning": info.warning()}


def _peer(name: str, peer, tls: bool, how: str) -> dict:
    """`how`: what makes this link TLS, for the warning."""
    if not tls:
        return {"name": name, "tls": False, "warning": f"sent in clear text: {how}"}
    if peer.tls_insecure:
        return {"name": name, "tls": True, "warning": "INSECURE: the peer's certificate and name are not checked "
                "(tls_insecure); anyone on the network path can read and change what is sent"}
    return {"name": name, "tls": True, "checked_against": str(peer.tls_ca or "the system's CAs"), "warning": None}
