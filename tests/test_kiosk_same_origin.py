"""Same-origin only for changes: a form or fetch from another site, a form without the kiosk's CSRF
token, a text/plain body and a foreign Host are refused, and nothing changes; the kiosk's own pages
and programs without an Origin still work."""

from __future__ import annotations

import io

import pytest

from device.appliance.context import appliance_of
from device.kiosk import create_app
from device.kiosk.security import csrf_token
from kiosk_support import png_bytes

EVIL = "http://evil.example"
OWN = "http://localhost"  # Flask's test client sends Host: localhost


@pytest.fixture
def bare(app):
    """A client that posts like another site's page: no CSRF token (not a `with` client: two of
    those on one app would pop each other's request contexts)."""
    return app.test_client()


def _study(client) -> int:
    form = {"file": (io.BytesIO(png_bytes(1)), "x.png")}
    return client.post("/api/v1/studies", data=form, content_type="multipart/form-data").json["id"]


CROSS_SITE_FORMS = [
    ("/settings", {"operator": "mallory"}),
    ("/studies/1/review", {"note": "changed"}),
    ("/studies/1/export", {"destination": "/tmp"}),
    ("/history/export", {"q": ""}),
    ("/studies/import", {"path": "/etc/passwd"}),
]


@pytest.mark.parametrize("path, form", CROSS_SITE_FORMS)
@pytest.mark.parametrize("headers", [{"Origin": EVIL}, {"Referer": EVIL + "/page"}, {"Origin": "null"}, {}])
def test_cross_site_form_posts_are_refused(client, bare, path, form, headers):
    sid = _study(client)
    r = bare.post(path.replace("/1/", f"/{sid}/"), data=form, headers=headers)
    assert r.status_code == 403 and "<html" in r.get_data(as_text=True)
    assert client.get("/api/v1/settings").json["operator"] != "mallory"
    assert client.get(f"/api/v1/studies/{sid}").json["review"]["reviewed"] is False


def test_a_form_with_the_token_from_another_site_is_still_refused(client):
    r = client.post("/settings", data={"operator": "mallory"}, headers={"Origin": EVIL})
    assert r.status_code == 403


def test_the_kiosks_own_form_posts_work(app, bare):
    token = csrf_token(app)
    r = bare.post("/settings", data={"operator": "day shift", "csrf_token": token}, headers={"Origin": OWN})
    assert r.status_code == 200 and "Saved." in r.get_data(as_text=True)
    assert bare.get("/").get_data(as_text=True).count(f'<meta name="csrf-token" content="{token}">') == 1
    script = bare.get("/static/csrf.js")
    assert script.status_code == 200 and b"csrf_token" in script.data
    script.close()


@pytest.mark.parametrize(
    "method, path, kwargs",
    [
        ("post", "/api/v1/studies", {"data": {"file": (io.BytesIO(b"x"), "x.png")}, "content_type": "multipart/form-data"}),
        ("put", "/api/v1/settings", {"json": {"operator": "mallory"}}),
        ("post", "/api/v1/imports", {"json": {"paths": ["/x"]}}),
        ("post", "/api/v1/exports/history", {"json": {}}),
    ],
)
def test_cross_site_api_writes_are_refused(bare, method, path, kwargs):
    r = getattr(bare, method)(path, headers={"Origin": EVIL}, **kwargs)
    assert r.status_code == 403 and r.json["error"]["code"] == "cross_site"


def test_api_programs_without_an_origin_and_same_origin_fetches_work(bare):
    assert bare.put("/api/v1/settings", json={"operator": "a"}).status_code == 200
    assert bare.put("/api/v1/settings", json={"operator": "b"}, headers={"Origin": OWN}).status_code == 200


def test_the_operator_is_not_taken_from_a_header_or_the_query(client):
    client.put("/api/v1/settings", json={"operator": "day shift"})
    sid = _study(client)
    client.get(f"/api/v1/studies/{sid}?operator=mallory", headers={"X-Bedside-Operator": "mallory"})
    client.post(f"/api/v1/studies/{sid}/review?operator=mallory", json={}, headers={"X-Bedside-Operator": "mallory"})
    operators = {e["operator"] for e in client.get(f"/api/v1/audit?study={sid}").json["entries"]}
    assert operators == {"day shift"}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.2", "[::2]:80", "localhost:x"])
def test_foreign_host_names_are_refused_with_421(bare, host):
    r = bare.get("/api/v1/studies", headers={"Host": host})
    assert r.status_code == 421 and r.json["error"]["code"] == "unknown_host"
    assert bare.get("/", headers={"Host": host}).status_code == 421


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8080", "127.0.0.1:8080", "[::1]:8080"])
def test_local_host_names_are_served(bare, host):
    assert bare.get("/api/v1/studies", headers={"Host": host}).status_code == 200


def test_configured_host_names_are_served(config):
    data = config.model_dump(mode="json")
    data["server"]["allowed_hosts"] = ["bedside-ward4.local"]
    application = create_app(type(config).model_validate(data))
    try:
        with application.test_client() as c:
            assert c.get("/api/v1/exams", headers={"Host": "bedside-ward4.local:8080"}).status_code == 200
            assert c.get("/api/v1/exams", headers={"Host": "evil.example"}).status_code == 421
    finally:
        appliance_of(application).close()
