"""The kiosk: the web a clinician uses at the bedside, and its JSON API (Flask).

``create_app(config)`` builds the whole appliance (models loaded and warmed up, store opened and
checked, device/appliance) so that a server only has to serve it.
"""

from device.kiosk.app import create_app

__all__ = ["create_app"]
