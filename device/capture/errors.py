"""The one error a capture reader raises: the source cannot deliver (with a reason for people)."""

from __future__ import annotations


class CaptureError(Exception):
    """Opening or reading a source failed; the capture thread reconnects after a back-off."""
