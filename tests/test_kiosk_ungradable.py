"""An UNGRADABLE study shows no score and no heatmap anywhere a person looks (the result page, the
worklist and History, the CSV export, the study export), says why and what to do, and keeps the raw
model output in its stored result under a name that says so."""

from __future__ import annotations

import csv
import re

import cv2
import numpy as np

from kiosk_support import png_bytes
from test_kiosk_pages import post_upload, text


def blank_png(value: int = 255) -> bytes:
    return cv2.imencode(".png", np.full((64, 64), value, np.uint8))[1].tobytes()


def test_ungradable_result_page_has_no_score_and_no_heatmap(client):
    r = post_upload(client, blank_png(), "white.png", reference="Bed 2")
    page = text(client.get(r.headers["Location"]))
    assert 'data-triage="UNGRADABLE"' in page and "Cannot assess: " in page
    assert "What to do" in page and "The image is blank or almost uniform." in page  # the reason, plainly
    assert "heatmap" not in page.lower().replace("image, heatmap and result", "")
    assert "score" not in page.lower() and "P(" not in page and "Details: model score" not in page
    assert "Export image and result" in page


def test_ungradable_is_scoreless_in_lists_api_and_exports(client, drives):
    post_upload(client, blank_png(), "white.png")
    post_upload(client, png_bytes(3), "gradable.png")
    study = client.get("/api/v1/studies/1").json
    assert study["triage"] == "UNGRADABLE" and study["probability"] is None and study["label"] is None
    assert study["links"]["heatmap"] is None and client.get("/api/v1/studies/1/heatmap").status_code == 404
    result = study["result"]
    assert result["probabilities"] is None and result["probability"] is None
    kept = result["ungraded_model_output"]
    assert set(kept["probabilities"]) == {"NORMAL", "PNEUMONIA"} and 0 <= kept["probability"] <= 1
    assert client.get("/api/v1/studies/2").json["probability"] is not None

    for path in ("/", "/history", "/history?triage=UNGRADABLE"):
        assert "%" not in text(client.get(path)), path

    r = client.post("/history/export", data={"destination": str(drives["export"])})
    assert "Exported 2 studies" in text(r)
    lines = next(drives["export"].glob("*.csv")).read_text().splitlines()
    rows = {row["id"]: row for row in csv.DictReader(lines)}
    assert rows["1"]["probability"] == "" and rows["1"]["label"] == "" and rows["1"]["triage"] == "UNGRADABLE"
    assert rows["2"]["probability"] != ""

    client.post("/studies/1/export", data={"destination": str(drives["export"])})
    folder = next(drives["export"].glob("bedside-study-1-*"))
    assert sorted(p.name for p in folder.iterdir()) == ["image.png", "result.json"]
