"""The health check after a switch: the live kiosk loads the new bundle and must serve it correctly
under real requests before the install is committed.

A check is any object with ``check(exam_id, version) -> str`` (a one-line summary; raises
HealthCheckFailed) and ``restore(exam_id)`` (after a switch back: the kiosk loads the old bundle again).
``LiveKiosk`` talks to a running ``bedside serve`` over HTTP (the CLI); ``InProcess`` drives the kiosk
of the calling process (the technician page). With neither, an install commits after its self-test
and the kiosk loads the bundle at its next start.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Protocol

from device.updates.errors import HealthCheckFailed

log = logging.getLogger("bedside.updates")


class HealthCheck(Protocol):
    def check(self, exam_id: str, version: str) -> str: ...

    def restore(self, exam_id: str) -> None: ...


class LiveExams(Protocol):
    """What a kiosk offers the health check (device.appliance.running.Appliance has both)."""

    def reload_exam(self, exam_id: str) -> dict: ...

    def selftest_exam(self, exam_id: str) -> dict: ...


def _judge(exam_id: str, version: str, loaded: dict, tests: list[dict]) -> str:
    if loaded.get("version") != version:
        raise HealthCheckFailed(f"the kiosk loaded {exam_id} {loaded.get('version')}, not {version}")
    failed = [t for t in tests if not t.get("ok")]
    if failed:
        first = failed[0]
        raise HealthCheckFailed(f"the live kiosk's self-test of {exam_id} {version} failed: "
                                f"{first.get('error') or first.get('reason') or first}")
    model = loaded.get("model", {})
    return (f"the live kiosk serves {exam_id} {version} on {model.get('backend', '?')} {model.get('precision', '?')} "
            f"and passed {len(tests)} self-test request(s)")


class InProcess:
    def __init__(self, kiosk: LiveExams, requests: int = 3):
        self.kiosk, self.requests = kiosk, requests

    def check(self, exam_id: str, version: str) -> str:
        try:
            loaded = self.kiosk.reload_exam(exam_id)
            tests = [self.kiosk.selftest_exam(exam_id) for _ in range(self.requests)]
        except Exception as exc:  # whatever the kiosk raised, the new bundle is not healthy
            raise HealthCheckFailed(f"the kiosk could not serve {exam_id} {version}: {exc}") from None
        return _judge(exam_id, version, loaded, tests)

    def restore(self, exam_id: str) -> None:
        try:
            self.kiosk.reload_exam(exam_id)
        except Exception as exc:
            log.error("%s: the kiosk could not reload the previous bundle: %s", exam_id, exc)


class LiveKiosk:
    """A running kiosk at ``url`` (loopback): POST /api/v1/exams/<id>/reload, then self-test requests."""

    def __init__(self, url: str, requests: int = 3, timeout_s: float = 300):
        self.url, self.requests, self.timeout_s = url.rstrip("/"), requests, timeout_s

    def _call(self, method: str, path: str) -> tuple[int, dict]:
        body = b"{}" if method == "POST" else None
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read() or b"{}")
            except ValueError:
                detail = {}
            return exc.code, detail
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HealthCheckFailed(f"no answer from the kiosk at {self.url}: {reason}") from None

    def _ok(self, method: str, path: str) -> dict:
        status, body = self._call(method, path)
        if status != 200:
            message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else None
            raise HealthCheckFailed(f"the kiosk answered {status} to {method} {path}: {message or body}")
        return body

    def answers(self) -> bool:
        """Whether a kiosk answers its health endpoint at all (before an install starts)."""
        try:
            self._call("GET", "/api/v1/health")
        except HealthCheckFailed:
            return False
        return True

    def check(self, exam_id: str, version: str) -> str:
        loaded = self._ok("POST", f"/api/v1/exams/{exam_id}/reload")
        tests = [self._ok("POST", f"/api/v1/exams/{exam_id}/selftest") for _ in range(self.requests)]
        summary = _judge(exam_id, version, loaded, tests)
        if not self._ok("GET", "/api/v1/health").get("ready"):
            raise HealthCheckFailed("the kiosk reports itself not ready")
        return summary

    def restore(self, exam_id: str) -> None:
        try:
            self._ok("POST", f"/api/v1/exams/{exam_id}/reload")
        except HealthCheckFailed as exc:
            log.error("%s: the kiosk could not reload the previous bundle: %s", exam_id, exc)


def kiosk_url(host: str, port: int) -> str:
    """The URL a local program reaches the kiosk at (a wildcard bind is reached on loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
