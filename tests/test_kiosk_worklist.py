"""The home screen's worklist through Flask's test client and the API: every unreviewed study, most
urgent first, paged and never cut by a count; counts that match the list; reviewing moves a study
out, and Undo (within seconds) or Reopen puts it back, both audited; History filters by reviewed."""

from __future__ import annotations

import re

from device.decision.triage import TRIAGE_ORDER
from kiosk_support import png_bytes
from test_kiosk_pages import post_upload, text


def upload_many(client, n: int) -> None:
    for i in range(n):
        assert post_upload(client, png_bytes(100 + i), f"s{i}.png", reference=f"bed {i}").status_code == 303


def test_worklist_api_lists_every_unreviewed_study_in_triage_then_waiting_order(client):
    upload_many(client, 7)
    body = client.get("/api/v1/worklist").json
    assert body["total"] == 7 == sum(body["counts"].values())
    first = body["studies"][0]
    assert set(first) >= {"id", "triage", "reference", "received_at", "waiting_s"}
    assert first["waiting_s"] >= 0 and first["received_at"].endswith("Z")
    order = [(TRIAGE_ORDER.index(s["triage"]), s["id"]) for s in body["studies"]]
    assert order == sorted(order)  # most urgent category first, then the longest waiting
    for triage in TRIAGE_ORDER:
        assert body["counts"][triage] == sum(s["triage"] == triage for s in body["studies"])

    reviewed = body["studies"][0]["id"]
    client.post(f"/studies/{reviewed}/review", data={"note": "", "operator": "dr a"})
    after = client.get("/api/v1/worklist?limit=2").json
    assert after["total"] == 6 and len(after["studies"]) == 2
    assert reviewed not in [s["id"] for s in client.get("/api/v1/worklist").json["studies"]]
    assert client.get("/api/v1/worklist?limit=0").status_code == 400


def test_home_pages_the_worklist_and_its_counts_match(client, app):
    from device.appliance.context import appliance_of

    size = appliance_of(app).config.ui.page_size
    upload_many(client, size + 3)
    home = text(client.get("/"))
    shown = re.findall(r'data-study="(\d+)"', home)
    assert len(shown) == size and "Page 1 of 2" in home
    counts = {t: int(n) for n, t in re.findall(r">(\d+) (urgent|ungradable|routine)</a>", home)}
    assert sum(counts.values()) == size + 3
    second = re.findall(r'data-study="(\d+)"', text(client.get("/?page=2")))
    assert sorted(map(int, shown + second)) == list(range(1, size + 4))  # nothing cut, nothing twice
    assert "waiting " in home and "%" not in re.sub(r"<style.*?</style>", "", home)

    panel = client.get("/worklist")
    assert panel.headers["Cache-Control"] == "no-store" and re.findall(r'data-study="(\d+)"', text(panel)) == shown


def test_history_filters_by_reviewed(client):
    upload_many(client, 3)
    client.post("/studies/2/review", data={"note": "ok"})
    assert re.findall(r'data-study="(\d+)"', text(client.get("/history?reviewed=yes"))) == ["2"]
    assert re.findall(r'data-study="(\d+)"', text(client.get("/history?reviewed=no"))) == ["3", "1"]
    assert client.get("/api/v1/studies?reviewed=no").json["total"] == 2
    assert client.get("/history?reviewed=maybe").status_code == 400


def test_undo_and_reopen_put_a_reviewed_study_back_on_the_worklist_audited(client):
    from device.core import study_service

    upload_many(client, 2)
    study = client.get("/api/v1/worklist").json["studies"][0]["id"]
    client.post(f"/studies/{study}/review", data={"note": "looked fine", "operator": "dr a"})
    page = text(client.get(f"/studies/{study}?reviewed=1"))
    assert re.search(r'<form method="post" action="/studies/%d/reopen" data-undo="\d+">' % study, page)
    assert "Undo</button>" in page and re.search(r"data-reopen\s+hidden", page)  # Reopen once Undo is gone
    r = client.post(f"/studies/{study}/reopen", data={"undo": "1", "operator": "dr a"})
    assert r.status_code == 303 and r.headers["Location"] == f"/studies/{study}?reopened=1"
    assert study in [s["id"] for s in client.get("/api/v1/worklist").json["studies"]]
    assert "Mark reviewed" in text(client.get(r.headers["Location"]))
    undone = client.get(f"/api/v1/audit?study={study}").json["entries"]
    assert [e["action"] for e in undone[:2]] == ["study_viewed", "review_undone"]
    assert undone[1]["operator"] == "dr a" and undone[1]["detail"]["review"]["note"] == "looked fine"

    # Later, Reopen (the button on a reviewed study; an Undo sent too late is one as well).
    client.post(f"/studies/{study}/review", data={"note": "", "operator": "dr b"})
    assert "Reopen</button>" in text(client.get(f"/studies/{study}"))
    assert client.get("/api/v1/worklist").json["total"] == 1
    r = client.post(f"/api/v1/studies/{study}/reopen", json={"operator": "dr c"})
    assert r.status_code == 200 and r.json["review"]["reviewed"] is False
    assert client.get("/api/v1/worklist").json["total"] == 2
    client.post(f"/studies/{study}/review", data={"note": "", "operator": "dr b"})
    study_service.UNDO_WINDOW_S, window = -1, study_service.UNDO_WINDOW_S
    try:
        assert client.post(f"/api/v1/studies/{study}/reopen", json={"undo": True}).status_code == 200
    finally:
        study_service.UNDO_WINDOW_S = window
    actions = [e["action"] for e in client.get(f"/api/v1/audit?study={study}").json["entries"]]
    assert actions.count("study_reopened") == 2 and actions.count("review_undone") == 1
    r = client.post(f"/api/v1/studies/{study}/reopen", json={})
    assert r.status_code == 409 and "on the worklist already" in r.json["error"]["message"]
