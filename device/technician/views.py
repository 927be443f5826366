"""What the technician area's page modules share: the running appliance (None in safe mode), who is
asking, and how a page is answered (never cached)."""

from __future__ import annotations

from flask import current_app, render_template, request

from device.appliance.context import EXTENSION as APPLIANCE
from device.appliance.running import Appliance

NO_STORE = {"Cache-Control": "no-store"}


def running_appliance() -> Appliance | None:
    """The running appliance, or None in safe mode."""
    return current_app.extensions.get(APPLIANCE)


def remote() -> str:
    return request.remote_addr or "-"


def show(template: str, status_code: int = 200, **values):
    return render_template(f"technician/{template}", **values), status_code, NO_STORE
