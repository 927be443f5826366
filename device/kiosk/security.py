"""Same-origin only for whatever changes state, and only for the names this kiosk answers to.

- **Host allow-list**: a request whose Host is not the bind address, localhost, a loopback address
  or a name in ``server.allowed_hosts`` is answered 421 before any handler runs, so a page on a
  rebound DNS name (``evil.example`` resolving to 127.0.0.1) cannot read the study list.
- **Origin/Referer**: a POST, PUT, PATCH or DELETE that a browser sends from another origin (its
  Origin, or else its Referer, is not this kiosk's own) is refused with 403. Programs that send
  neither (curl, the tests) are not browsers and cannot be made to send a request by a web page.
- **CSRF token**: every state-changing request to the pages and the technician area (the HTML forms) must carry this
  process's token, in the ``csrf_token`` field (static/csrf.js adds it to every form on submit from
  the ``csrf-token`` meta tag of base.html) or the ``X-CSRF-Token`` header. JSON endpoints take only
  ``application/json`` bodies (api.request_body), which a cross-site form cannot send.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import Flask, request

from device.core.errors import CrossSiteRequest, MisdirectedRequest
from device.core.settings import ServerSettings

TOKEN_FIELD = "csrf_token"
TOKEN_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
TOKEN_EXTENSION = "bedside.csrf_token"
FORM_BLUEPRINTS = frozenset({"pages", "technician"})  # HTML forms: the clinician and technician pages


def allowed_hosts(settings: ServerSettings) -> frozenset[str]:
    """Host names (no port, lower case, IPv6 without brackets) this kiosk answers to."""
    return frozenset(n.lower().strip("[]") for n in (settings.host, *LOCAL_NAMES, *settings.allowed_hosts))


def protect(app: Flask, settings: ServerSettings) -> None:
    """Check every request of `app` as the module docstring says; the token is new in each process."""
    token = secrets.token_urlsafe(32)
    hosts = allowed_hosts(settings)
    app.extensions[TOKEN_EXTENSION] = token
    app.context_processor(lambda: {TOKEN_FIELD: token})

    @app.before_request
    def _same_origin_only() -> None:
        _check_host(hosts)
        if request.method in SAFE_METHODS:
            return
        _check_origin()
        if FORM_BLUEPRINTS.intersection(request.blueprints):  # nested ones (technician.bundles) too
            _check_token(token)


def csrf_token(app: Flask) -> str:
    """The token the pages of `app` carry (for programs that post the forms, such as the tests)."""
    return app.extensions[TOKEN_EXTENSION]


def _host_name(host: str) -> str | None:
    try:
        return urlsplit(f"//{host}").hostname
    except ValueError:  # a port that is not a number, an unbalanced bracket
        return None


def _check_host(hosts: frozenset[str]) -> None:
    name = _host_name(request.host)
    if name not in hosts:
        raise MisdirectedRequest(
            f"this kiosk does not answer to the host name {request.host[:100]!r}; use the address it is "
            "served at, or add the name to server.allowed_hosts in the settings file"
        )


def _check_origin() -> None:
    own = f"{request.scheme}://{request.host}".lower()
    origin = request.headers.get("Origin")
    referer = request.headers.get("Referer")
    if origin is not None:
        sender = origin.lower()
    elif referer is not None:
        parts = urlsplit(referer)
        sender = f"{parts.scheme}://{parts.netloc}".lower()
    else:
        return
    if sender != own:
        raise CrossSiteRequest(
            f"refused: this change was sent from another site ({sender[:100]}); the kiosk only accepts "
            "changes made on its own pages"
        )


def _check_token(token: str) -> None:
    sent = request.headers.get(TOKEN_HEADER) or request.form.get(TOKEN_FIELD) or ""
    if not hmac.compare_digest(sent.encode(), token.encode()):
        raise CrossSiteRequest(
            "this form did not come from the kiosk's current pages (it may be from before a restart); "
            "reload the page and try again"
        )
