"""What the technician area keeps for one process: its credentials, sessions, the login limiter,
the watchdog's own token, and (in safe mode) why the kiosk started without its models."""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
import time

from flask import Flask, current_app

from device.core.settings import KioskConfig
from device.machine.clock import utc_iso
from device.technician.credentials import CredentialError, Credentials
from device.technician.logbook import Logbook
from device.technician.sessions import Clock, LoginLimiter, Sessions

log = logging.getLogger("bedside.technician")
EXTENSION = "bedside.technician"
# The exit status of a restart asked for on the technician pages: systemd (Restart=on-failure)
# starts the kiosk again, in normal mode.
RESTART_EXIT_STATUS = 75


def is_loopback(host: str) -> bool:
    """True for an address (or "localhost") that only this machine can reach."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class TechnicianArea:
    def __init__(self, config: KioskConfig, logbook: Logbook, safe_mode: str | None = None,
                 clock: Clock = time.monotonic):
        t = config.technician
        self.config = config
        self.logbook = logbook
        self.safe_mode = safe_mode
        self.credentials = Credentials.open(config.store.data_dir)
        self.provisioning_error: str | None = None
        try:
            if self.credentials.provision(t.provisioning_file):
                log.info("technician password set from %s", t.provisioning_file)
        except CredentialError as exc:  # the password can still be set on the device's screen
            self.provisioning_error = str(exc)
            log.error("%s", exc)
        self.sessions = Sessions(t.session_idle_minutes * 60, t.session_max_hours * 3600, clock)
        self.limiter = LoginLimiter(t.max_failed_logins, t.lockout_minutes * 60, clock)
        # The watchdog's health probe authenticates with this (never shown, new in each process).
        self.internal_token = secrets.token_urlsafe(32)
        self.started_at = time.time()
        self.restart_requested = threading.Event()
        self.last_test_frame: bytes | None = None  # the capture test's frame, shown on its page

    @property
    def started_at_utc(self) -> str:
        return utc_iso(self.started_at)

    @property
    def exposed(self) -> bool:
        """The kiosk listens beyond loopback: every page and API then needs a login or a token."""
        return not is_loopback(self.config.server.host)

    def close(self) -> None:
        self.credentials.close()
        self.logbook.close()


def area_of(app: Flask) -> TechnicianArea:
    return app.extensions[EXTENSION]


def area() -> TechnicianArea:
    return current_app.extensions[EXTENSION]
