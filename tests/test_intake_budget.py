"""The decode budget in intake itself: bombs refused from the header or while inflating, within it
a deflated DICOM and a large image still decode, and the budget's limits are the caller's."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from device import intake
from device.intake import DecodeBudget, IntakeError
from hostile_inputs import deflated_dicom_bomb, file_meta, png_pixel_bomb, small_image_dataset


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    return png_pixel_bomb()


def _deflated_dicom(rows: int = 256, cols: int = 200, frames: int = 1) -> bytes:
    meta = file_meta(pydicom.uid.DeflatedExplicitVRLittleEndian)
    ds: Dataset = small_image_dataset(meta, rows, cols)
    ds.file_meta = meta
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = (np.arange(rows * cols * frames) % 251).astype(np.uint8).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_pixel_bomb_is_refused_from_its_header(png_bomb):
    with pytest.raises(IntakeError) as caught:
        intake.decode_bytes(png_bomb, "bomb.png")
    assert caught.value.kind == "too_large" and "100 megapixels" in caught.value.reason
    assert "decode.max_megapixels" in caught.value.reason


def test_a_deflate_bomb_is_refused_while_inflating():
    with pytest.raises(IntakeError) as caught:
        intake.decode_bytes(deflated_dicom_bomb(2**28), "bomb.dcm", DecodeBudget(max_inflated_mb=64))
    assert caught.value.kind == "too_large" and "inflates to more than 64 MiB" in caught.value.reason


def test_a_deflated_dicom_within_the_budget_decodes():
    img = intake.decode_bytes(_deflated_dicom(), "ok.dcm")
    assert img.pixels.shape == (256, 200) and img.source_format == "dicom"


def test_truncated_deflated_data_is_truncated():
    data = _deflated_dicom()
    with pytest.raises(IntakeError) as caught:
        intake.decode_bytes(data[: len(data) - 200], "cut.dcm")
    assert caught.value.kind == "truncated"


def test_frames_and_the_decoded_size_are_checked_from_the_header():
    with pytest.raises(IntakeError) as caught:
        intake.decode_bytes(_deflated_dicom(16, 16, frames=5), "frames.dcm", DecodeBudget(max_frames=4))
    assert caught.value.kind == "too_large" and "5 frames" in caught.value.reason
    with pytest.raises(IntakeError) as caught:
        intake.decode_bytes(_deflated_dicom(1024, 1024), "big.dcm", DecodeBudget(max_inflated_mb=3))
    assert "decoded frame would take 4 MiB" in caught.value.reason


def test_the_caller_sets_the_budget():
    with pytest.raises(IntakeError, match="at most 0.5 megapixels"):
        intake.decode_bytes(_deflated_dicom(1024, 1024), "x.dcm", DecodeBudget(max_megapixels=0.5))
    assert intake.decode_bytes(_deflated_dicom(1024, 1024), "x.dcm").pixels.shape == (1024, 1024)


def test_a_deflate_bomb_without_a_preamble_is_refused_too():
    bomb = deflated_dicom_bomb(2**28)[128 + 4:]  # the file meta first, as some writers send datasets
    with pytest.raises(IntakeError) as caught:
        intake.decode_bytes(bomb, "raw-bomb.dcm", DecodeBudget(max_inflated_mb=64))
    assert caught.value.kind == "too_large"
