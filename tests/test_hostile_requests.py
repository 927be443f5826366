"""Requests an attacker or a clumsy user sends: each is a 4xx (or 507/503) with the JSON error, never
a 500. The corpus holds the cases found against `bedside serve` (dates at the calendar's ends, ids
beyond SQLite's integers, a huge LIKE pattern, looping and over-long paths, deep JSON, form limits)
and generated broken images; CSV export makes formulas inert."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import pytest

from kiosk_support import dicom_without_pixels, jpeg_bytes, multipart, png_bytes

HUGE_ID = "99999999999999999999"


def upload(client, data: bytes, name: str = "x.png", **fields):
    form = {"file": (io.BytesIO(data), name), **fields}
    return client.post("/api/v1/studies", data=form, content_type="multipart/form-data")


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    error = response.json["error"]
    assert error["status"] == status and error["message"]
    return error


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/studies?to=9999-12-31",
        "/api/v1/studies?from=0001-01-01",
        "/api/v1/studies?from=9999-12-31&to=0001-01-01",
        f"/api/v1/studies?q={'%_' * 25_000}",
        f"/api/v1/studies/{HUGE_ID}",
        f"/api/v1/studies/{HUGE_ID}/image",
        f"/api/v1/studies/{HUGE_ID}/preview",
        f"/api/v1/studies/{HUGE_ID}/heatmap",
        "/api/v1/studies?limit=99999999999999999999999",
        "/api/v1/audit?study=99999999999999999999999",
    ],
)
def test_hostile_queries_are_4xx_json(client, path):
    r = client.get(path)
    assert 400 <= r.status_code < 500, (path[:80], r.status_code)
    assert r.json["error"]["message"]


@pytest.mark.parametrize("query", ["to=9999-12-31", "from=0001-01-01", f"q={'x' * 49_999}"])
def test_history_page_refuses_hostile_filters_with_400(client, query):
    r = client.get(f"/history?{query}")
    assert r.status_code == 400 and "<html" in r.get_data(as_text=True)


def test_study_page_of_a_huge_id_is_404(client):
    assert client.get(f"/studies/{HUGE_ID}").status_code == 404
    assert_json_error(client.post(f"/api/v1/studies/{HUGE_ID}/review", json={"note": "x"}), 404)


def test_history_export_with_calendar_end_dates_is_400(client, drives):
    body = {"destination": str(drives["export"]), "from": "0001-01-01", "to": "9999-12-31"}
    assert_json_error(client.post("/api/v1/exports/history", json=body), 400)


def test_symlink_loops_and_overlong_names_as_paths_are_400(client, drives):
    sid = upload(client, png_bytes(1)).json["id"]
    loop = drives["export"] / "loop"
    os.symlink(loop, loop)
    assert_json_error(client.post(f"/api/v1/studies/{sid}/export", json={"destination": str(loop)}), 400)
    assert_json_error(client.post("/api/v1/exports/history", json={"destination": str(loop / "x")}), 400)
    usb_loop = drives["usb"] / "loop.png"
    os.symlink(usb_loop, usb_loop)
    r = client.post("/api/v1/imports", json={"paths": [str(usb_loop)]})
    assert r.status_code == 400 and r.json["errors"][0]["status"] == 400
    long_name = str(drives["usb"] / ("a" * 256 + ".png"))
    r = client.post("/api/v1/imports", json={"paths": [long_name]})
    assert r.status_code == 400 and "file name" in r.json["errors"][0]["message"]


def test_deeply_nested_json_is_400(client):
    sid = upload(client, png_bytes(2)).json["id"]
    deep = '{"note": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = client.post(f"/api/v1/studies/{sid}/review", data=deep, content_type="application/json")
    assert "nested" in assert_json_error(r, 400)["message"]


def test_json_endpoints_take_only_json_bodies(client):
    sid = upload(client, png_bytes(3)).json["id"]
    client.post(f"/api/v1/studies/{sid}/review", json={"note": "keep me"})
    r = client.post(f"/api/v1/studies/{sid}/review", data="note=", content_type="text/plain")
    assert "application/json" in assert_json_error(r, 415)["message"]
    r = client.put("/api/v1/settings", data={"operator": "mallory"})
    assert_json_error(r, 415)
    assert client.get(f"/api/v1/studies/{sid}").json["review"]["note"] == "keep me"
    assert client.get("/api/v1/settings").json["operator"] != "mallory"


def test_form_limits_say_which_limit(client):
    fields = {f"f{i}": "x" for i in range(1001)}
    r = client.post("/api/v1/studies", data=fields, content_type="multipart/form-data")
    message = assert_json_error(r, 413)["message"]
    assert "more than 1000 parts" in message and "MiB" in message and "larger than the limit" not in message
    body, ctype = multipart({"reference": "x" * (2**20 + 1)}, None)  # bytes: no spooled file left open
    r = client.post("/api/v1/studies", data=body, content_type=ctype)
    assert "field larger than 1 MiB" in assert_json_error(r, 413)["message"]


def _broken_images(count: int) -> list[tuple[str, bytes]]:
    """Truncations and byte flips of valid PNG, JPEG and DICOM files, and random bytes behind each
    format's magic, from a fixed seed."""
    rng = np.random.default_rng(10)
    seeds = [("png", png_bytes(5)), ("jpg", jpeg_bytes(6)), ("dcm", dicom_without_pixels())]
    out = []
    for i in range(count):
        ext, good = seeds[i % len(seeds)]
        data = bytearray(good)
        kind = i % 3
        if kind == 0:
            data = data[: int(rng.integers(1, len(data)))]
        elif kind == 1:
            for at in rng.integers(0, len(data), 8):
                data[at] ^= 0xFF
        else:
            data = data[:16] + bytearray(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
        out.append((f"broken-{i}.{ext}", bytes(data)))
    return out


def test_broken_images_never_give_500(client):
    statuses = [upload(client, data, name).status_code for name, data in _broken_images(90)]
    assert 500 not in statuses
    assert all(s == 201 or 400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert statuses.count(201) < len(statuses)  # the corpus really is broken, mostly


def test_history_csv_makes_formulas_inert(client, drives):
    for reference in ("=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)", "plain"):
        assert upload(client, png_bytes(hash(reference) % 1000), reference=reference).status_code == 201
    r = client.post("/api/v1/exports/history", json={"destination": str(drives["export"])})
    with open(r.json["path"], newline="") as fh:
        references = {row["reference"] for row in csv.DictReader(fh)}
    assert references == {"'=HYPERLINK(\"http://x\")", "'+1+1", "'-2", "'@SUM(A1)", "plain"}


HOSTILE_TEXT = [
    "", "0", "-1", "1e309", "99999999999999999999999", "NaN", "\x00", "%00", "../../etc/passwd", "A" * 10_000,
    "é\u202e", "[]", "null", "9999-99-99", "2025-02-30", "<script>x</script>", "'; DROP TABLE studies;--",
    "%", "_", "URGENT,,", " ", "\r\n",
]
HOSTILE_JSON = [None, 1, 1.5, -1, 2**70, True, [], {}, ["x"], {"a": [1]}, "x" * 3000, "\x00", "/", "../.."]
QUERY_PAGES = {
    "/api/v1/studies": ("triage", "from", "to", "q", "limit", "offset"),
    "/history": ("triage", "from", "to", "q", "page"),
    "/api/v1/audit": ("study", "limit"),
}
JSON_WRITES = {
    ("post", "/api/v1/studies/{sid}/review"): ("note", "operator"),
    ("post", "/api/v1/studies/{sid}/export"): ("destination", "operator"),
    ("post", "/api/v1/exports/history"): ("destination", "triage", "from", "to", "q", "operator"),
    ("post", "/api/v1/imports"): ("paths", "exam", "reference", "operator"),
    ("put", "/api/v1/settings"): ("operator",),
    ("post", "/api/v1/sources/cam0/capture"): ("reference", "operator"),
}


def _no_500(responses) -> list[tuple[str, int]]:
    return [(what, r.status_code) for what, r in responses if r.status_code >= 500]


def test_generated_query_parameters_never_give_500(client):
    from urllib.parse import quote

    responses = [
        (f"{path}?{name}={value[:20]!r}", client.get(f"{path}?{name}={quote(value)}"))
        for path, names in QUERY_PAGES.items() for name in names for value in HOSTILE_TEXT
    ]
    responses += [(f"/studies/{v[:20]!r}", client.get(f"/studies/{quote(v, safe='')}")) for v in HOSTILE_TEXT]
    responses += [(f"/api/v1/sources/{v[:20]!r}", client.get(f"/api/v1/sources/{quote(v, safe='')}"))
                  for v in HOSTILE_TEXT]
    assert _no_500(responses) == []
    assert len(responses) > 250


def test_generated_json_fields_never_give_500(client, drives):
    sid = upload(client, png_bytes(9)).json["id"]
    responses = []
    for (method, path), names in JSON_WRITES.items():
        for name in names:
            for value in HOSTILE_JSON + HOSTILE_TEXT:
                r = getattr(client, method)(path.format(sid=sid), json={name: value})
                responses.append((f"{method} {path} {name}={str(value)[:20]!r}", r))
                if 400 <= r.status_code < 500:  # the JSON error, or an import's list of them
                    errors = [r.json["error"]] if "error" in r.json else r.json["errors"]
                    assert errors and errors[0]["status"] == r.status_code
    assert _no_500(responses) == []
    assert len(responses) > 500


PAGE_FORMS = {
    "/studies/{sid}/review": ("note", "operator"),
    "/studies/{sid}/export": ("destination", "operator"),
    "/history/export": ("destination", "triage", "from", "to", "q", "operator"),
    "/studies/import": ("path", "exam", "reference", "operator"),
    "/settings": ("operator",),
    "/live/cam0/capture": ("reference", "operator"),
}


def test_generated_form_fields_of_the_pages_never_give_500(client):
    sid = upload(client, png_bytes(11)).json["id"]
    responses = [
        (f"{path} {name}={value[:20]!r}", client.post(path.format(sid=sid), data={name: value}))
        for path, names in PAGE_FORMS.items() for name in names for value in HOSTILE_TEXT
    ]
    assert _no_500(responses) == []
