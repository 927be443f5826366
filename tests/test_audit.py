"""Shortcut audits and the aspect-range contract, on real chest X-rays."""

from __future__ import annotations

import numpy as np
import pytest

from models import audit
from models.bundle import AuditPolicy
from models.preprocess import model_region, to_model_input
from models.training.chest.data import input_contract
from models.training.images import decode_rgb

CONTRACT = input_contract(64)


@pytest.fixture(scope="module")
def films(datasets):
    """12 real training films per class, decoded as the device receives them."""
    root = datasets / "chest-xray" / "train"
    paths = [p for label in ("NORMAL", "PNEUMONIA") for p in sorted((root / label).glob("*.jpeg"))[:12]]
    return [decode_rgb(p) for p in paths], np.array([p.parent.name == "PNEUMONIA" for p in paths])


def test_squeeze_keeps_the_canvas_and_blackens_the_sides(films):
    img = films[0][0]
    out = audit.squeeze(img, 0.8)
    assert out.shape == img.shape
    side = int(img.shape[1] * 0.1) - 1
    assert out[:, :side].max() == 0 and out[:, -side:].max() == 0
    assert out[:, side + 2 : -side - 2].mean() > 0.5 * img.mean()


def test_widen_cuts_the_sides_and_keeps_the_shape(films):
    img = films[0][0]
    out = audit.widen(img, 1.25)
    assert out.shape == img.shape
    # the centre column stays (nearly) where it was
    centre = img.shape[1] // 2
    assert np.abs(out[:, centre].astype(int) - img[:, centre].astype(int)).mean() < 8


def test_every_check_gives_an_image_the_contract_accepts(films):
    img = films[0][0]
    for check in audit.CHECKS.values():
        x = to_model_input(check.apply(img), CONTRACT)
        assert x.shape == (1, 64, 64) and np.isfinite(x).all(), check.name
        assert not np.array_equal(x, to_model_input(img, CONTRACT)), f"{check.name} changed nothing"


def _edge_reader(x: np.ndarray) -> np.ndarray:
    """A model that learned a shortcut: 'urgent' when the left and right edges are bright."""
    edges = np.concatenate([x[:, 0, :, :3], x[:, 0, :, -3:]], axis=2).mean(axis=(1, 2))
    return 1.0 / (1.0 + np.exp(-4.0 * edges))


def _centre_reader(x: np.ndarray) -> np.ndarray:
    """A model that only looks at the lungs' middle and is blind to borders and markers."""
    h, w = x.shape[2:]
    centre = x[:, 0, h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].mean(axis=(1, 2))
    return 1.0 / (1.0 + np.exp(-0.5 * centre))


def test_audit_catches_a_border_shortcut_and_clears_a_model_without_one(films):
    images, positive = films
    threshold = float(np.median(_edge_reader(np.stack([to_model_input(i, CONTRACT) for i in images]))))
    shortcut = {c.name: c for c in audit.run_audit(_edge_reader, images, positive, CONTRACT, threshold)}
    assert shortcut["border_pad"].flip_rate > 0.2 and shortcut["squeeze_0.8"].flip_rate > 0.2
    assert shortcut["border_pad"].mean_delta < 0  # black edges pull an edge reader towards 'not urgent'
    assert shortcut["border_pad"].n == len(images)
    limits = audit.policy("test images")
    reasons = audit.failures(list(shortcut.values()), limits)
    assert any(r.startswith("border_pad flips") and "allowed 2.0%" in r for r in reasons)

    constant = audit.run_audit(lambda x: np.full(len(x), 0.9), images, positive, CONTRACT, 0.5)
    assert all(c.flip_rate == 0 and c.mean_delta == 0 for c in constant)
    assert audit.failures(constant, limits) == []


def test_audit_reports_flips_by_class(films):
    images, positive = films
    checks = audit.run_audit(_centre_reader, images, positive, CONTRACT, 0.5)
    for c in checks:
        assert c.flip_rate == pytest.approx((c.flip_rate_positive + c.flip_rate_negative) / 2)
    assert audit.table(checks)[0].split()[:2] == ["check", "flips"]


def test_policy_names_every_check():
    policy = audit.policy("validation", max_flip_rate=0.05)
    assert isinstance(policy, AuditPolicy) and policy.max_flip_rate == 0.05
    assert policy.checks == list(audit.RADIOGRAPH_CHECKS)
    assert audit.policy("x", audit.DERMOSCOPY_CHECKS).checks == list(audit.DERMOSCOPY_CHECKS)
    with pytest.raises(ValueError, match="unknown audit checks"):
        audit.policy("x", ["no_such_check"])


@pytest.mark.parametrize("shape, region", [
    ((1000, 1000), (0, 0, 1000, 1000)),   # aspect 1: inside the range, stretched as it is
    ((1000, 2300), (0, 0, 1000, 2300)),   # exactly the upper bound
    ((1000, 3000), (0, 350, 1000, 2300)),  # wider: the centre 2.3:1 is kept
    ((2000, 1000), (375, 0, 1250, 1000)),  # portrait 0.5: cropped to 0.8
])
def test_model_region_crops_into_the_declared_aspect_range(shape, region):
    assert CONTRACT.aspect_range == (0.8, 2.3)
    assert model_region(*shape, CONTRACT) == region


def test_wide_film_is_cropped_not_squeezed_beyond_the_range():
    """A 3:1 strip whose outer thirds differ: only the centre 2.3:1 reaches the model."""
    img = np.full((300, 900), 128, np.uint8)
    img[:, :105] = 0  # outside the 690 px centre crop
    img[:, -105:] = 255
    x = to_model_input(img, CONTRACT)
    assert np.allclose(x, x.flat[0])  # uniform: neither outer band was seen


def test_heatmap_lies_on_the_part_the_model_saw():
    from device.decision import heatmap

    img = np.full((300, 900), 100, np.uint8)  # 3:1, the model sees the centre 690 px
    out = heatmap.overlay(img, np.ones((4, 4), np.float32), contract=CONTRACT)
    assert out.shape == (300, 900, 3)
    assert (out[:, :100] == 100).all() and (out[:, -100:] == 100).all()  # cropped-away bands untouched
    assert (out[:, 110:790] != 100).any(axis=2).all()  # the seen part is coloured
