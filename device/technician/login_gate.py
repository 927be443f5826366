"""Who may see what, checked before any handler runs:

- The technician area (``/technician/...``) always needs a technician session (the login page and
  the first-start password page excepted) or an API token.
- When the kiosk listens beyond loopback (``server.host`` is not a loopback address) every other
  page and API needs one too for a request from the network: anyone on the clinic's network could
  reach them. The device's own screen (a request from a loopback address: waitress trusts no proxy
  header, so that is the socket's peer) keeps the clinician pages open, unless
  ``server.screen_without_login`` is false. On a kiosk bound to loopback only this machine can
  connect, and the clinician pages stay open.

A session is the ``bedside_session`` cookie (HttpOnly, SameSite=Strict); a token is
``Authorization: Bearer bst_...`` (made on the technician's API tokens page). Pages without either
are sent to the login page; the API is answered 401.
"""

from __future__ import annotations

import hmac
from urllib.parse import quote

from flask import Flask, redirect, request

from device.core.errors import KioskError
from device.technician.area import area, is_loopback

COOKIE = "bedside_session"
SIGNED_IN = "bedside.signed_in"  # request.environ key
OPEN_ENDPOINTS = frozenset({"static", "technician.login", "technician.login_form", "technician.setup",
                            "technician.setup_form", "technician.started"})  # nested blueprints need a login


class LoginRequired(KioskError):
    status = 401
    code = "login_required"


def install_gate(app: Flask) -> None:
    app.before_request(_gate)
    app.after_request(_challenge)


def _challenge(response):
    """A 401 names the scheme it wants (RFC 6750), so that HTTP clients know to send a token."""
    if response.status_code == 401 and _is_api():
        response.headers["WWW-Authenticate"] = 'Bearer realm="bedside"'
    return response


def _is_api() -> bool:
    return request.path.startswith("/api/") or request.path == "/metrics"


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authenticated() -> bool:
    """A live session or a valid token (remembered for the rest of the request)."""
    known = request.environ.get(SIGNED_IN)
    if known is None:
        a = area()
        token = _bearer()
        if token is not None:
            known = hmac.compare_digest(token, a.internal_token) or a.credentials.token_valid(token)
        else:
            known = a.sessions.touch(request.cookies.get(COOKIE))
        request.environ[SIGNED_IN] = known
    return known


def _gate():
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    a = area()
    own_screen = a.config.server.screen_without_login and is_loopback(request.remote_addr or "")
    needs_login = "technician" in request.blueprints or (a.exposed and not own_screen)
    if not needs_login or authenticated():
        return None
    if _is_api():
        raise LoginRequired(
            "log in on the technician page, or send an API token (Authorization: Bearer ...) made there"
        )
    return redirect(f"/technician/login?next={quote(request.full_path.rstrip('?'), safe='/')}", 303)
