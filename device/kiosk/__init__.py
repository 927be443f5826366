"""The kiosk: the Flask appliance a clinician uses at the bedside, and its JSON API.

``create_app(config)`` builds the whole appliance (models loaded and warmed up, store opened and
checked) so that a server only has to serve it.
"""

from device.kiosk.app import create_app
from device.core.settings import KioskConfig, load_config

__all__ = ["KioskConfig", "create_app", "load_config"]
