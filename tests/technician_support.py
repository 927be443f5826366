"""Helpers for the technician tests against a real `bedside serve`: a provisioning file, and a
browser-like HTTP session (cookie, the page's CSRF token) over the standard library."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from device.technician.credentials import hash_password

PASSWORD = "correct horse battery"
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def provisioned_config(folder: Path, text: str = "") -> Path:
    """A settings file whose technician password is PASSWORD (from a provisioning file), plus `text`."""
    provision = folder / "technician.toml"
    provision.write_text(f'password_hash = "{hash_password(PASSWORD)}"\n')
    config = folder / "bedside.toml"
    config.write_text(f'{text}\n[technician]\nprovisioning_file = "{provision}"\n')
    return config


class WebSession:
    """One connection with a cookie jar of one cookie, as a browser on the kiosk's pages."""

    def __init__(self, url: str, token: str | None = None):
        parts = urlsplit(url)
        self.origin = f"http://{parts.netloc}"
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.cookie: str | None = None
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        sent = dict(headers or {})
        if self.cookie:
            sent["Cookie"] = self.cookie
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        self.conn.request(method, path, body=body, headers=sent)
        response = self.conn.getresponse()
        data = response.read()
        cookie = response.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return response.status, response, data

    def csrf(self, path: str = "/technician/login") -> str:
        status, _, page = self.request("GET", path)
        match = CSRF_META.search(page.decode())
        if match is None:
            raise AssertionError(f"no CSRF token on {path} ({status})")
        return match.group(1)

    def post_form(self, path: str, fields: dict, token_from: str = "/technician/login"):
        body = urlencode({**fields, "csrf_token": self.csrf(token_from)}).encode()
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded",
                                                 "Origin": self.origin})

    def log_in(self, password: str = PASSWORD) -> None:
        status, response, _ = self.post_form("/technician/login", {"password": password, "next": "/technician/"})
        if status != 303 or not self.cookie:
            raise AssertionError(f"login failed: {status}")

    def get_json(self, path: str):
        status, _, data = self.request("GET", path)
        return status, json.loads(data)

    def close(self) -> None:
        self.conn.close()
