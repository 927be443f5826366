"""Technician sessions (server side, in memory: a restart logs everyone out) and the rate limit on
failed logins. Both take their clock from the caller's ``clock`` (time.monotonic by default), so
that expiry is tested by moving the clock, not by waiting."""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass
class Session:
    created: float
    last_used: float


class Sessions:
    def __init__(self, idle_s: float, max_s: float, clock: Clock = time.monotonic):
        self.idle_s = idle_s
        self.max_s = max_s
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self) -> str:
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._drop_expired(now)
            self._sessions[sid] = Session(now, now)
        return sid

    def touch(self, sid: str | None) -> bool:
        """True (and the session's idle time starts again) when `sid` is a live session."""
        if not sid:
            return False
        now = self.clock()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return False
            if now - session.last_used > self.idle_s or now - session.created > self.max_s:
                del self._sessions[sid]
                return False
            session.last_used = now
            return True

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)

    def _drop_expired(self, now: float) -> None:
        for sid, s in list(self._sessions.items()):
            if now - s.last_used > self.idle_s or now - s.created > self.max_s:
                del self._sessions[sid]


class LoginLimiter:
    """At most ``max_failures`` failed logins per address within ``window_s``; then that address
    waits until its oldest failure in the window is ``window_s`` old."""

    def __init__(self, max_failures: int, window_s: float, clock: Clock = time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, remote: str) -> float:
        """Seconds `remote` must wait before trying again (0: it may try now)."""
        now = self.clock()
        with self._lock:
            failures = self._recent(remote, now)
            if len(failures) < self.max_failures:
                return 0.0
            return max(0.0, failures[0] + self.window_s - now)

    def failed(self, remote: str) -> None:
        now = self.clock()
        with self._lock:
            self._recent(remote, now)
            self._failures.setdefault(remote, deque()).append(now)

    def succeeded(self, remote: str) -> None:
        with self._lock:
            self._failures.pop(remote, None)

    def _recent(self, remote: str, now: float) -> deque[float]:
        """The address's failures within the window; an address with none is forgotten (the table
        holds only addresses that failed lately, however many try)."""
        failures = self._failures.get(remote, deque())
        while failures and now - failures[0] >= self.window_s:
            failures.popleft()
        if not failures:
            self._failures.pop(remote, None)
        return failures
