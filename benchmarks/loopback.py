"""Loopback helpers for the peers the benchmarks and the tests start: a free port, and polling with
a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port() -> int:
    """A port nobody listens on now (the OS picks it; the caller binds it right after)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct such ports (all bound at once while the OS picks them)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Whether ``predicate()`` turned true within ``timeout`` s, polled every ``interval`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
