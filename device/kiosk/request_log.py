"""One log line per request: ``POST /api/v1/studies 201 12.3 ms 127.0.0.1``. Waitress logs none.

The query string is left out: it can hold a patient reference (``?q=``). Requests that repeat by
themselves (static files, the live page's once-a-second status poll) are logged at debug level only.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

log = logging.getLogger("bedside.requests")
QUIET_ENDPOINTS = {"static", "api.source"}


def log_requests(app: Flask) -> None:
    app.before_request(_started)
    app.after_request(_finished)


def _started() -> None:
    g.request_started = time.perf_counter()


def _finished(response: Response) -> Response:
    started = g.get("request_started")
    elapsed_ms = 0.0 if started is None else (time.perf_counter() - started) * 1e3
    level = logging.DEBUG if request.endpoint in QUIET_ENDPOINTS else logging.INFO
    log.log(level, "%s %s %d %.1f ms %s", request.method, request.path, response.status_code, elapsed_ms,
            request.remote_addr or "-")
    return response
