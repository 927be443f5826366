"""Time as the appliance writes it: fixed-width UTC ISO 8601 with milliseconds and a Z
(2025-01-31T14:05:09.123Z), so that text order is time order: the store sorts and filters on it."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def utc_iso(wall: float | None = None) -> str:
    """``wall`` (seconds since the epoch; default: now) in UTC."""
    moment = datetime.fromtimestamp(time.time() if wall is None else wall, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
