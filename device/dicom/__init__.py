"""Bedside as a DICOM node: the C-STORE SCP that modalities push images to (receiver.py), and the
outbox that sends the results back (outbox.py, sender.py).

The node runs inside the kiosk (device.core.studies starts it) and uses its errors and store, so
the kiosk package is imported first: entering through a module here would otherwise meet the
kiosk half-initialised (service -> node -> ingest -> kiosk.errors).
"""

import device.kiosk  # noqa: F401 (import order, see above)
