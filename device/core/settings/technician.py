"""The ``[technician]`` section of the kiosk's settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from models.bundle import _Strict


class TechnicianSettings(_Strict):
    session_idle_minutes: int = Field(
        default=15, ge=1, le=24 * 60, description="a technician session unused this long ends (log in again)"
    )
    session_max_hours: int = Field(default=8, ge=1, le=72, description="a technician session ends this long after login")
    max_failed_logins: int = Field(
        default=5, ge=1, le=100, description="failed logins from one address within lockout_minutes before it must wait"
    )
    lockout_minutes: int = Field(default=5, ge=1, le=24 * 60, description="the window of max_failed_logins, and the wait")
    provisioning_file: Path = Field(
        default=Path("/etc/bedside/technician.toml"),
        description="password_hash = \"$argon2id$...\" (bedside technician hash-password): the technician's "
        "password at first start, so that it need not be set on the device's screen",
    )
