"""What the technician area's page modules share: the running kiosk (None in safe mode), who is
asking, and how a page is answered (never cached)."""

from __future__ import annotations

from flask import current_app, render_template, request

from device.appliance.context import EXTENSION as KIOSK

NO_STORE = {"Cache-Control": "no-store"}


def running_kiosk():
    """The running Kiosk, or None in safe mode."""
    return current_app.extensions.get(KIOSK)


def remote() -> str:
    return request.remote_addr or "-"


def show(template: str, status_code: int = 200, **values):
    return render_template(f"technician/{template}", **values), status_code, NO_STORE
