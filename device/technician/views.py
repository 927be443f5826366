"""What the technician area's page modules share: the running appliance (None in safe mode), who is
asking, and how a page is answered (never cached)."""

from __future__ import annotations

from flask import current_app, render_template, request

from device.appliance.context import EXTENSION as APPLIANCE
from device.appliance.running import Appliance

NO_STORE = {"Cache-Control": "no-store"}


def running_appliance() -> Appliance | None:
    """The running appliance with its models, or None in safe mode (where at most its studies are
    open, for the clinicians: nothing the technician area may reload or health-check)."""
    appliance = current_app.extensions.get(APPLIANCE)
    return None if appliance is None or appliance.safe_mode else appliance


def remote() -> str:
    return request.remote_addr or "-"


def show(template: str, status_code: int = 200, **values):
    return render_template(f"technician/{template}", **values), status_code, NO_STORE
