"""Where web handlers (the kiosk's pages and JSON API, the technician area) find the running
appliance of the app that is handling the request; None of it in safe mode."""

from __future__ import annotations

from flask import Flask, current_app

from device.appliance.running import Appliance

EXTENSION = "bedside"


def appliance_of(app: Flask) -> Appliance:
    return app.extensions[EXTENSION]


def current_appliance() -> Appliance:
    return current_app.extensions[EXTENSION]
