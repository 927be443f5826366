"""The worklist and history filters as the pages and the JSON API receive them: request parameters
(text) checked and turned into the store's StudyFilter, or BadRequest naming the parameter."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from device.core.errors import BadRequest
from device.core.store import StudyFilter
from device.core.study_service import clean_text
from device.decision.triage import TRIAGE_ORDER
from device.machine.clock import utc_iso

MAX_QUERY = 120  # a reference search; longer LIKE patterns make SQLite give up ("too complex")
MIN_YEAR, MAX_YEAR = 1900, 9000
REVIEWED_ARGS = {"": None, "yes": True, "no": False}


def study_filter(
    triage: list[str] | None = None, date_from: str | None = None, date_to: str | None = None, q: str | None = None,
    reviewed: str | None = None,
) -> StudyFilter:
    """Filters from request parameters; dates are YYYY-MM-DD in the kiosk's local time, both inclusive;
    ``reviewed`` is "yes", "no" or empty (either)."""
    wanted = tuple(t.strip().upper() for t in triage or [] if t.strip())
    unknown = [t for t in wanted if t not in TRIAGE_ORDER]
    if unknown:
        raise BadRequest(f"unknown triage category {unknown[0]!r}; use {', '.join(TRIAGE_ORDER)}")
    start = _local_day_start(date_from, "from") if date_from else None
    end = _local_day_start(date_to, "to", days=1) if date_to else None
    reference = clean_text(q, MAX_QUERY, "the search ('q')") or None
    wanted_review = (reviewed or "").strip().lower()
    if wanted_review not in REVIEWED_ARGS:
        raise BadRequest(f"'reviewed' must be yes or no, not {reviewed!r}")
    return StudyFilter(triage=wanted, created_from=start, created_before=end, reference=reference,
                       reviewed=REVIEWED_ARGS[wanted_review])


def _local_day_start(text: str, name: str, days: int = 0) -> str:
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"'{name}' must be a date like 2025-01-31, not {text!r}") from None
    # Days at the calendar's ends cannot be shifted a day or to UTC (OverflowError); no study lies there.
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise BadRequest(f"'{name}' must be a date between the years {MIN_YEAR} and {MAX_YEAR}, not {text!r}")
    return utc_iso(datetime.combine(day + timedelta(days=days), datetime.min.time()).timestamp())
