"""Where the blueprints find the Kiosk of the app that is handling the request."""

from __future__ import annotations

from flask import Flask, current_app

from device.core.studies import Kiosk

EXTENSION = "bedside"


def kiosk_of(app: Flask) -> Kiosk:
    return app.extensions[EXTENSION]


def kiosk() -> Kiosk:
    return current_app.extensions[EXTENSION]
