"""Quality gates on real images, with a realistic policy."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.decision.quality import assess
from device.intake import DecodedImage, decode_file
from models.bundle import DicomHandling, QualityPolicy

POLICY = QualityPolicy(
    min_side_px=128, min_dynamic_range=0.15, max_clipped_fraction=0.5, max_colorfulness=0.08, min_aspect=0.5
)
CHEST = DicomHandling(modalities=["CR", "DX"], body_parts=["CHEST"])


@pytest.fixture(scope="module")
def xray(datasets: Path) -> DecodedImage:
    path = next((datasets / "chest-xray" / "fullres-samples" / "PNEUMONIA").glob("*.jpeg"), None)
    if path is None:
        pytest.skip("no full-resolution chest X-ray samples")
    return decode_file(path)


def _codes(img: DecodedImage) -> set[str]:
    return {issue.code for issue in assess(img, POLICY, CHEST).issues}


def test_real_xray_passes(xray: DecodedImage) -> None:
    report = assess(xray, POLICY, CHEST)
    assert report.ok and report.issues == ()
    assert report.as_dict() == {"ok": True, "issues": []}


def test_real_dicom_radiograph_passes(datasets: Path) -> None:
    img = decode_file(datasets / "dicom" / "cr_dx" / "RG3_J2KR.dcm")  # an extremity: relabel it
    assert assess(replace(img, body_part="CHEST"), POLICY, CHEST).ok


def test_constant_image_is_blank(xray: DecodedImage) -> None:
    assert _codes(replace(xray, pixels=np.full_like(xray.pixels, 90))) == {"blank"}


def test_tiny_crop_is_too_small(xray: DecodedImage) -> None:
    crop = xray.pixels[400:450, 400:450]
    report = assess(replace(xray, pixels=crop, original_size=(50, 50)), POLICY, CHEST)
    issue = next(i for i in report.issues if i.code == "too_small")
    assert not report.ok
    # the headline in plain words, what to do, and the figures behind Details
    assert (issue.message, issue.detail) == ("The image is too small to judge",
                                             "50x50 px; at least 128 px per side is needed")
    assert issue.action


def test_strip_fails_aspect(xray: DecodedImage) -> None:
    assert "aspect" in _codes(replace(xray, pixels=xray.pixels[:200, :]))


def test_overexposed_is_flagged(xray: DecodedImage) -> None:
    burnt = np.clip(xray.pixels.astype(np.int32) * 3 + 120, 0, 255).astype(np.uint8)
    assert "overexposed" in _codes(replace(xray, pixels=burnt))


def test_underexposed_is_flagged(xray: DecodedImage) -> None:
    cut = int(np.percentile(xray.pixels, 70))  # push the darkest 70% to pure black
    dark = np.clip(xray.pixels.astype(np.int32) - cut, 0, 255).astype(np.uint8)
    assert "underexposed" in _codes(replace(xray, pixels=dark))


def test_ultrasound_is_wrong_modality(datasets: Path) -> None:
    img = decode_file(datasets / "dicom" / "us" / "OBXXXX1A.dcm")
    report = assess(img, POLICY, CHEST)
    assert "wrong_modality" in {i.code for i in report.issues}
    issue = report.as_dict()["issues"][0]
    assert issue["message"] == "This is an ultrasound image; this exam reads X-ray images only"
    assert issue["detail"] == "DICOM Modality US; the exam takes CR, DX"


def test_radiograph_of_another_body_part_is_flagged(datasets: Path) -> None:
    img = decode_file(datasets / "dicom" / "cr_dx" / "RG2_JPLL.dcm")  # a CR of the hip
    assert img.body_part == "HIP"
    report = assess(img, POLICY, CHEST)
    assert [i.code for i in report.issues] == ["wrong_body_part"]
    assert report.issues[0].message == "This image is of the hip; this exam reads the chest only"
    assert "HIP" in report.issues[0].detail
    assert assess(replace(img, body_part=None), POLICY, CHEST).ok  # no attribute: graded


def test_colour_image_is_a_colour_photo(xray: DecodedImage) -> None:
    gray = xray.pixels.astype(np.float32) / 255.0
    tinted = np.dstack([gray, gray * 0.6, gray * 0.2]).astype(np.float32)
    assert "colour_photo" in _codes(replace(xray, pixels=tinted))


def test_gray_stored_as_rgb_is_not_colour(xray: DecodedImage) -> None:
    rgb = np.repeat(xray.pixels[..., None], 3, axis=2)
    assert assess(replace(xray, pixels=rgb), POLICY, CHEST).ok


def test_colour_check_off_when_policy_has_no_limit(xray: DecodedImage) -> None:
    gray = xray.pixels.astype(np.float32) / 255.0
    tinted = np.dstack([gray, gray * 0.6, gray * 0.2]).astype(np.float32)
    policy = POLICY.model_copy(update={"max_colorfulness": None})
    assert assess(replace(xray, pixels=tinted), policy, CHEST).ok


def test_fast_on_a_large_image() -> None:
    rng = np.random.default_rng(0)
    img = DecodedImage(
        pixels=rng.random((3000, 2500), dtype=np.float32), source_format="png",
        original_size=(3000, 2500), bits_stored=16,
    )
    assess(img, POLICY, CHEST)
    start = time.perf_counter()
    for _ in range(5):
        assess(img, POLICY, CHEST)
    assert (time.perf_counter() - start) / 5 < 0.02


def test_exposure_from_the_histogram_equals_the_sorted_figures(datasets: Path) -> None:
    """8-bit gray images take the histogram path; its percentiles and clipped fractions are those of
    np.percentile and counting on the float sample, on real radiographs and on the edge cases."""
    from device.decision.quality import _exposure_stats, _unit_sample

    files = sorted((datasets / "chest-xray").rglob("*.jpeg"))[:12]
    images = [decode_file(f).pixels for f in files]
    rng = np.random.default_rng(5)
    images += [np.zeros((300, 200), np.uint8), np.full((1, 1), 255, np.uint8), np.full((40, 50), 7, np.uint8),
               rng.integers(0, 256, (333, 517), dtype=np.uint8), np.where(rng.random((64, 64)) < 0.5, 0, 255).astype(np.uint8)]
    for pixels in images:
        gray = pixels if pixels.ndim == 2 else pixels[..., 0]
        sample = _unit_sample(gray)
        got = _exposure_stats(gray, sample)
        low, high = np.percentile(sample, [1, 99])
        assert got.low == pytest.approx(low, abs=1e-6) and got.high == pytest.approx(high, abs=1e-6)
        assert got.black == np.count_nonzero(sample <= 0.5 / 255) / sample.size
        assert got.white == np.count_nonzero(sample >= 1 - 0.5 / 255) / sample.size


def test_every_headline_is_plain_words_and_the_figures_sit_behind_details(xray: DecodedImage, datasets: Path) -> None:
    """Issue 21: the headline a clinician reads says what is wrong without internals ("mean chroma
    0.57, limit 0.03", "grades CR, DX images only", "sharpness 0.00000"); the figures are the detail."""
    skin = QualityPolicy(min_side_px=128, min_dynamic_range=0.06, max_clipped_fraction=0.6, min_aspect=0.5,
                         min_colorfulness=0.02, min_sharpness=8e-05, min_lesion_fraction=0.02, subject="dermoscopy image")
    lesion = decode_file(next((datasets / "dermatology" / "train" / "nv").glob("*.jpg")))
    gray = xray.pixels.astype(np.float32) / 255.0
    cases = [
        (replace(xray, pixels=np.full_like(xray.pixels, 90)), POLICY),
        (replace(xray, pixels=xray.pixels[400:450, 400:450], original_size=(50, 50)), POLICY),
        (replace(xray, pixels=xray.pixels[:200, :]), POLICY),
        (replace(xray, pixels=np.clip(xray.pixels.astype(np.int32) * 3 + 120, 0, 255).astype(np.uint8)), POLICY),
        (replace(xray, pixels=np.dstack([gray, gray * 0.6, gray * 0.2]).astype(np.float32)), POLICY),
        (decode_file(datasets / "dicom" / "us" / "OBXXXX1A.dcm"), POLICY),
        (xray, skin),  # gray: not a colour dermoscopy image
        (replace(lesion, pixels=cv2.GaussianBlur(lesion.pixels, (0, 0), 6)), skin),
    ]
    issues = [i for img, policy in cases for i in assess(img, policy, CHEST).issues]
    codes = {i.code for i in issues}
    assert {"blank", "too_small", "aspect", "overexposed", "colour_photo", "wrong_modality", "not_colour",
            "blurred"} <= codes
    for issue in issues:
        assert not any(c.isdigit() for c in issue.message), issue
        assert issue.message[0].isupper() and issue.action and issue.detail, issue
        assert "chroma" not in issue.message and "grades" not in issue.message and "DICOM" not in issue.message
