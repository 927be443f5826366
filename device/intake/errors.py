"""The one exception intake raises: every bad input becomes an IntakeError with a short kind code."""

from __future__ import annotations

EMPTY = "empty"
TRUNCATED = "truncated"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED = "unsupported"
NO_PIXEL_DATA = "no_pixel_data"
TOO_LARGE = "too_large"
UNDECODABLE = "undecodable"
UNREADABLE = "unreadable"

KINDS = frozenset(
    {EMPTY, TRUNCATED, NOT_AN_IMAGE, UNSUPPORTED, NO_PIXEL_DATA, TOO_LARGE, UNDECODABLE, UNREADABLE}
)


class IntakeError(Exception):
    """A file that cannot become a DecodedImage. ``str(e)`` is ``"<source>: <reason>"``.

    ``kind`` lets the kiosk choose a status code without parsing the message
    (not_an_image/unsupported -> 415, too_large -> 413, the rest -> 422).
    """

    def __init__(self, source: str, reason: str, kind: str = UNDECODABLE):
        if kind not in KINDS:
            raise ValueError(f"unknown IntakeError kind {kind!r}")
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.kind = kind


def first_line(text: str) -> str:
    """The first non-blank line of a library's (possibly multi-line) message; "" if there is none."""
    text = text.strip()
    return text.splitlines()[0] if text else ""
