"""The heatmap overlay: where the map is zero the image is left exactly as it was, the bicubic
enlargement's ringing never wraps the blend around (no false blobs on white or black), and the
kiosk lays it on the part of the image the exam's model saw."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from device.core.settings import KioskConfig
from device.decision import heatmap
from kiosk_support import form_client
from test_kiosk_pages import post_upload
from tiny_bundle import edit_manifest, make_tiny_bundle


def hot_corner(size: int = 8) -> np.ndarray:
    """A map that is zero except one strong cell: the sharpest edge a bicubic enlargement rings at."""
    cam = np.zeros((size, size), np.float32)
    cam[0, 0] = 5.0
    return cam


@pytest.mark.parametrize("value", [0, 128, 255])
def test_overlay_equals_the_image_where_the_map_is_zero(value):
    img = np.full((256, 256), value, np.uint8)
    assert (heatmap.overlay(img, np.zeros((8, 8), np.float32)) == value).all()
    assert (heatmap.overlay(img, -np.ones((8, 8), np.float32)) == value).all()  # no positive evidence
    out = heatmap.overlay(img, hot_corner())
    assert (out[:, 96:] == value).all() and (out[96:, :] == value).all()  # far from the one hot cell
    assert (out[:8, :8] != value).any()


def test_ringing_never_wraps_the_blend():
    """Before the clip, white areas got black blobs and black areas solid blue ones."""
    rng = np.random.default_rng(0)
    cam = np.where(rng.random((8, 8)) > 0.7, 1.0, 0.0).astype(np.float32)  # sharp on/off cells
    alpha = 0.4
    white = heatmap.overlay(np.full((256, 256), 255, np.uint8), cam, alpha)
    black = heatmap.overlay(np.zeros((256, 256), np.uint8), cam, alpha)
    assert white.min() >= round(255 * (1 - alpha)) - 1  # never darker than a full-strength blend
    assert black.max() <= round(255 * alpha) + 1  # never brighter than a full-strength blend


def test_kiosk_heatmap_is_placed_by_the_exams_input_contract(tmp_path):
    """A 2.4:1 film under a model that sees at most 2:1: the heatmap covers only the centre 2:1 crop."""
    from device.kiosk import create_app
    from device.appliance.context import appliance_of

    root = make_tiny_bundle(tmp_path / "wide")
    contract = json.loads((root / "manifest.json").read_text())["input"]
    edit_manifest(root, input={**contract, "aspect_range": [0.8, 2.0]})
    config = KioskConfig.model_validate({"store": {"data_dir": str(tmp_path / "data")},
                                         "models": {"bundles": [str(root)], "inference_threads": 1}})
    app = create_app(config)
    try:
        rng = np.random.default_rng(1)
        ramp = np.linspace(30, 220, 240, dtype=np.float32)[None, :].repeat(100, 0)
        wide = np.clip(ramp + rng.normal(0, 12, ramp.shape), 0, 255).astype(np.uint8)
        with form_client(app) as c:
            assert post_upload(c, cv2.imencode(".png", wide)[1].tobytes(), "wide.png").status_code == 303
            study = appliance_of(app).studies.get(1)
            assert study.triage != "UNGRADABLE" and study.cam is not None
            png = c.get("/api/v1/studies/1/heatmap").data
        served = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        placed = appliance_of(app).exams.resolve(study.exam).bundle.manifest.input
        assert placed.aspect_range == (0.8, 2.0)
        assert (served == heatmap.overlay(wide, study.cam, contract=placed)).all()
        assert (served[:, :20] == wide[:, :20, None]).all() and (served[:, -20:] == wide[:, -20:, None]).all()
    finally:
        appliance_of(app).close()
