"""Safe mode, after OctoPrint's: when the last start did not complete, or the settings file cannot be
used, the kiosk starts with the last known good settings, no models and nothing that triages; the
clinicians keep the worklist and the studies (read, reviewed, exported: Appliance.open_safe), told
in plain words that new images cannot be triaged and a technician is needed; the technician area
says why. Where not even the studies can be opened (the store is what failed), the technician area
runs alone (``technician_only_pages``).

The start record (``<data_dir>/startup.json``, written atomically) holds the state of the latest
start: ``starting`` from the first moment, ``failed`` (with the reason) when the start raised,
``started`` once the models were warm and the socket bound, ``safe`` in safe mode. A record still
``starting`` or ``failed`` at the next start means that start did not complete: killed, out of
memory, a power cut, a crash in a model runtime. The settings of each completed start are kept
(``<data_dir>/last-good-config.json``) for safe mode to start with.

One safe start per incomplete start: the start after a safe one tries normal mode again (the
technician's restart does the same), so a cause that went away leaves safe mode by itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, jsonify, render_template

from device.core.settings import ConfigError, KioskConfig, validate
from device.machine.clock import utc_iso
from device.technician.area import area
from models.atomic import write_bytes

RECORD = "startup.json"
LAST_GOOD = "last-good-config.json"
STARTING, FAILED, STARTED, SAFE = "starting", "failed", "started", "safe"

safe_mode_pages = Blueprint("safe", __name__)  # every safe start
technician_only_pages = Blueprint("technician_only", __name__)  # a safe start without the studies


@dataclass(frozen=True)
class StartRecord:
    data_dir: Path

    def _write(self, **record: object) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_bytes(self.data_dir / RECORD, json.dumps({**record, "at": utc_iso()}).encode(), mode=0o640)

    def previous(self) -> dict | None:
        try:
            data = json.loads((self.data_dir / RECORD).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # a torn record cannot happen (atomic writes); a foreign one can
            return {"state": FAILED, "reason": f"the start record is unreadable ({exc})", "at": "?"}
        return data if isinstance(data, dict) else None

    def why_safe(self) -> str | None:
        """Why this start must be a safe one, or None."""
        last = self.previous()
        if last is None:
            return None
        if last.get("state") == STARTING:
            return f"the last start (at {last.get('at')} UTC) did not complete: it was interrupted or crashed"
        if last.get("state") == FAILED:
            return f"the last start (at {last.get('at')} UTC) failed: {last.get('reason')}"
        return None

    def starting(self) -> None:
        self._write(state=STARTING)

    def failed(self, reason: str) -> None:
        self._write(state=FAILED, reason=reason[:2000])

    def started(self, config: KioskConfig) -> None:
        write_bytes(self.data_dir / LAST_GOOD, config.model_dump_json(indent=2).encode(), mode=0o640)
        self._write(state=STARTED)

    def safe(self, reason: str) -> None:
        self._write(state=SAFE, reason=reason[:2000])

    def last_good_config(self) -> KioskConfig | None:
        """The settings of the latest completed start, or None (there was none, or they no longer validate)."""
        try:
            data = json.loads((self.data_dir / LAST_GOOD).read_text())
        except (OSError, ValueError):
            return None
        try:
            return validate(data, str(self.data_dir / LAST_GOOD))
        except ConfigError:
            return None


@technician_only_pages.get("/")
def home():
    return render_template("technician/safe.html"), 503, {"Cache-Control": "no-store"}


@technician_only_pages.get("/api/v1/health")
def health():
    return jsonify({"ready": False, "safe_mode": True, "reason": area().safe_mode}), 503


@safe_mode_pages.get("/api/v1/alive")
def alive():
    """What the systemd watchdog asks in safe mode: the technician area answers."""
    return jsonify({"alive": True, "safe_mode": True}), 200
