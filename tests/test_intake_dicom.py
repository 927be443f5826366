"""DICOM intake, driven by the shared dataset's catalog.csv (real files, broken ones included)."""

from __future__ import annotations

import csv
import io
import warnings
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from device.intake import IntakeError, decode_bytes, decode_file
from models.datasets import datasets_dir


CATALOG_PATH = datasets_dir() / "dicom" / "catalog.csv"


def _catalog() -> list[dict[str, str]]:
    if not CATALOG_PATH.is_file():
        return []
    with open(CATALOG_PATH, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


CATALOG = _catalog()
DECODABLE = [row for row in CATALOG if row["decode_pydicom3_pylibjpeg"].startswith("OK")]
EDGE_CASES = [row for row in CATALOG if row["category"] == "edge_cases"]
# Plain pydicom fails on it (no file meta); intake reads its uncompressed pixels by how it was encoded.
RECOVERED = {"edge_cases/OT-PAL-8-face.dcm"}
FAILING = [row for row in CATALOG if not row["decode_pydicom3_pylibjpeg"].startswith("OK")
           and row["file"] not in RECOVERED]


def _cases(rows: list[dict[str, str]]) -> list:
    """One case per catalog row; without the catalog, one case skipped with the reason (pytest's
    own words for an empty list would be 'got empty parameter set')."""
    if rows:
        return [pytest.param(row, id=row["file"]) for row in rows]
    return [pytest.param(None, marks=pytest.mark.skip(reason=f"no DICOM catalog at {CATALOG_PATH}; set BEDSIDE_DATASETS"))]


@pytest.fixture
def dicom_dir(datasets: Path) -> Path:
    root = datasets / "dicom"
    if not (root / "catalog.csv").is_file():
        pytest.skip(f"no DICOM catalog at {root}")
    return root


def test_catalog_is_present(datasets: Path) -> None:
    assert len(DECODABLE) >= 50 and len(FAILING) >= 5


@pytest.mark.parametrize("row", _cases(DECODABLE))
def test_catalog_ok_files_decode(dicom_dir: Path, row: dict[str, str]) -> None:
    img = decode_file(dicom_dir / row["file"])
    rows, cols, frames = int(row["rows"]), int(row["cols"]), int(row["frames"])
    colour = row["photometric"] not in ("MONOCHROME1", "MONOCHROME2")
    assert img.source_format == "dicom"
    assert img.pixels.shape == ((rows, cols, 3) if colour else (rows, cols))
    assert img.original_size == (rows, cols)
    assert img.frames == frames and img.frame == frames // 2
    assert img.photometric == row["photometric"]
    assert img.modality == (row["modality"] or None)
    if img.pixels.dtype == np.uint8:
        assert int(img.pixels.max()) > int(img.pixels.min())
    else:
        assert img.pixels.dtype == np.float32
        assert np.isfinite(img.pixels).all()
        assert 0.0 <= float(img.pixels.min()) < float(img.pixels.max()) <= 1.0


@pytest.mark.parametrize("row", _cases(EDGE_CASES))
def test_edge_cases_decode_or_raise_intake_error(dicom_dir: Path, row: dict[str, str]) -> None:
    path = dicom_dir / row["file"]
    try:
        decode_file(path)
    except IntakeError as err:
        assert err.source == str(path) and len(err.reason) > 10


@pytest.mark.parametrize("row", _cases(FAILING))
def test_catalog_failures_raise_useful_intake_error(dicom_dir: Path, row: dict[str, str]) -> None:
    with pytest.raises(IntakeError) as info:
        decode_file(dicom_dir / row["file"])
    assert info.value.kind in ("undecodable", "not_an_image", "no_pixel_data", "unsupported")
    assert "\n" not in info.value.reason


def test_codec_failure_names_the_transfer_syntax(dicom_dir: Path) -> None:
    with pytest.raises(IntakeError) as info:
        decode_file(dicom_dir / "edge_cases" / "RG2_JPLY.dcm")
    assert info.value.kind == "undecodable"
    assert "JPEG Extended" in info.value.reason and "libjpeg" in info.value.reason


def test_monochrome1_is_inverted(dicom_dir: Path, tmp_path: Path) -> None:
    """RG3_J2KR is a real MONOCHROME1 CR; the same pixels relabelled MONOCHROME2 must come out inverted."""
    original = dicom_dir / "cr_dx" / "RG3_J2KR.dcm"
    ds = pydicom.dcmread(original)
    ds.PhotometricInterpretation = "MONOCHROME2"
    relabelled = tmp_path / "mono2.dcm"
    ds.save_as(relabelled)
    mono1, mono2 = decode_file(original), decode_file(relabelled)
    assert "MONOCHROME1 inverted" in mono1.notes and "MONOCHROME1 inverted" not in mono2.notes
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)


def test_window_from_the_file_is_applied(dicom_dir: Path) -> None:
    img = decode_file(dicom_dir / "ct_mr_other" / "MR_small.dcm")
    ds = pydicom.dcmread(dicom_dir / "ct_mr_other" / "MR_small.dcm")
    expected = np.clip((ds.pixel_array - (600 - 0.5)) / (1600 - 1) + 0.5, 0, 1)
    assert "window C/W 600/1600" in img.notes
    np.testing.assert_allclose(img.pixels, expected, atol=1e-5)


def test_multiframe_takes_the_middle_frame(dicom_dir: Path) -> None:
    path = dicom_dir / "ct_mr_other" / "emri_small.dcm"
    img = decode_file(path)
    frames = pydicom.dcmread(path).pixel_array.astype(np.float32)
    middle = frames[5]
    expected = (middle - middle.min()) / (middle.max() - middle.min())
    assert (img.frame, img.frames) == (5, 10) and "frame 6 of 10" in img.notes
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)


def test_big_endian_palette_matches_little_endian(dicom_dir: Path) -> None:
    little = decode_file(dicom_dir / "us" / "OBXXXX1A_2frame.dcm")
    big = decode_file(dicom_dir / "us" / "OBXXXX1A_expb_2frame.dcm")
    assert "palette colour applied" in big.notes
    np.testing.assert_array_equal(big.pixels, little.pixels)


@pytest.mark.parametrize(
    "name",
    ["us/OBXXXX1A.dcm", "secondary_capture/SC_ybr_full_422_uncompressed.dcm", "us/US1_J2KR.dcm"],
)
def test_palette_and_ybr_become_rgb(dicom_dir: Path, name: str) -> None:
    img = decode_file(dicom_dir / name)
    assert img.pixels.ndim == 3 and img.pixels.shape[2] == 3
    assert any("palette" in note or "converted to RGB" in note for note in img.notes)


def test_ybr_422_matches_the_rgb_original(dicom_dir: Path) -> None:
    rgb = decode_file(dicom_dir / "secondary_capture" / "SC_rgb.dcm").pixels.astype(int)
    ybr = decode_file(dicom_dir / "secondary_capture" / "SC_ybr_full_422_uncompressed.dcm").pixels.astype(int)
    assert np.abs(rgb - ybr).mean() < 3


def test_dicom_without_preamble_is_sniffed(dicom_dir: Path) -> None:
    data = (dicom_dir / "secondary_capture" / "JLSL_RGB_ILV0.dcm").read_bytes()
    assert data[128:132] != b"DICM"
    assert decode_bytes(data, "upload").source_format == "dicom"


def test_no_pixel_data(dicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / "ct_mr_other" / "CT_small.dcm")
    del ds.PixelData
    path = tmp_path / "no_pixels.dcm"
    ds.save_as(path)
    with pytest.raises(IntakeError) as info:
        decode_file(path)
    assert info.value.kind == "no_pixel_data" and "CT Image Storage" in info.value.reason


@pytest.mark.parametrize("rows, cols, frames", [(60_000, 512, 1), (20_000, 20_000, 1)])
def test_huge_header_refused_before_decoding(
    dicom_dir: Path, tmp_path: Path, rows: int, cols: int, frames: int
) -> None:
    ds = pydicom.dcmread(dicom_dir / "ct_mr_other" / "CT_small.dcm")
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    path = tmp_path / "huge.dcm"
    ds.save_as(path)
    with pytest.raises(IntakeError) as info:
        decode_file(path)
    assert info.value.kind == "too_large"


def test_truncated_dicom(dicom_dir: Path) -> None:
    data = (dicom_dir / "ct_mr_other" / "CT_small.dcm").read_bytes()
    with pytest.raises(IntakeError) as info:
        decode_bytes(data[: len(data) // 2], "half.dcm")
    assert info.value.kind in ("truncated", "undecodable")


def test_text_renamed_dcm_with_dicm_marker_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"this is not a dataset" * 10)
    with pytest.raises(IntakeError):
        decode_file(path)


def test_8bit_monochrome_passes_through_as_uint8(dicom_dir: Path) -> None:
    path = dicom_dir / "secondary_capture" / "sample.dcm"
    img = decode_file(path)
    assert img.pixels.dtype == np.uint8
    np.testing.assert_array_equal(img.pixels, pydicom.dcmread(path).pixel_array)


def test_copy_keeps_the_same_result(dicom_dir: Path, tmp_path: Path) -> None:
    """decode_file and decode_bytes agree; the name is only used in messages."""
    src = dicom_dir / "cr_dx" / "RG2_JPLL.dcm"
    shutil.copy(src, tmp_path / "x.bin")
    a, b = decode_file(tmp_path / "x.bin"), decode_bytes(src.read_bytes(), "x")
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.notes == b.notes


@pytest.mark.parametrize("slope", ["NaN", "inf", "1e39"])
def test_non_finite_rescale_is_refused_not_read_as_routine(slope: str) -> None:
    from dicom_factory import grayscale_dicom

    data = bytearray(grayscale_dicom(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096, bits=12,
                                     modality="DX", body_part="CHEST"))
    ds = pydicom.dcmread(io.BytesIO(bytes(data)))
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the value we plant on purpose
        ds.RescaleSlope, ds.RescaleIntercept = slope, "0"
        ds.save_as(out)
    with pytest.raises(IntakeError, match="non-finite") as info:
        decode_bytes(out.getvalue(), "bad-rescale.dcm")
    assert info.value.kind == "undecodable"


def test_dataset_without_file_meta_is_read_by_its_encoding(dicom_dir: Path) -> None:
    img = decode_file(dicom_dir / "edge_cases" / "OT-PAL-8-face.dcm")
    assert img.pixels.shape == (480, 640, 3) and img.photometric == "PALETTE COLOR"
    assert img.notes[0] == "no file meta: read as Implicit VR Little Endian"


def test_compressed_pixels_without_a_transfer_syntax_are_refused(dicom_dir: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / "secondary_capture" / "SC_rgb_jpeg_dcmtk.dcm")
    raw = io.BytesIO()
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(raw, implicit_vr=False, little_endian=True)
    with pytest.raises(IntakeError, match="codec is unknown") as info:
        decode_bytes(raw.getvalue(), "no-syntax.dcm")
    assert info.value.kind == "unsupported"
