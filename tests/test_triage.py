"""Triage: the policy, and the same chest X-ray reaching the model identically as JPEG and as DICOM."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from device.decision.quality import QualityReport
from device.decision.triage import ROUTINE, UNGRADABLE, URGENT, ModelOutput, ModelRef, TriageResult, decide
from device.intake import decode_file
from device.runtime.triager import Triager
from models.bundle import Manifest, load_bundle
from dicom_factory import grayscale_dicom
from tiny_bundle import make_tiny_bundle, manifest_dict


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest.model_validate(manifest_dict({"model.onnx": {"sha256": "0" * 64, "bytes": 1}}))


def test_policy_threshold_is_inclusive(manifest):
    t = manifest.policy.operating_point.threshold
    assert decide(np.array([1 - t, t]), manifest, gradable=True) == ("PNEUMONIA", URGENT)
    below = np.nextafter(t, 0.0)
    assert decide(np.array([1 - below, below]), manifest, gradable=True) == ("NORMAL", ROUTINE)


def test_failed_quality_is_ungradable_whatever_the_probability(manifest):
    assert decide(np.array([0.01, 0.99]), manifest, gradable=False)[1] == UNGRADABLE
    assert decide(np.array([0.99, 0.01]), manifest, gradable=False)[1] == UNGRADABLE


def _dicom(gray: np.ndarray, path: Path, *, bits: int, monochrome1: bool) -> Path:
    """A chest radiograph as a CR DICOM of the given depth and photometric interpretation."""
    top = (1 << bits) - 1
    values = gray.astype(np.float64) * top / 255.0
    stored = np.round(top - values if monochrome1 else values)
    window = ((top + 1) / 2, top + 1) if bits > 8 else None
    path.write_bytes(grayscale_dicom(stored, bits=bits, monochrome1=monochrome1, modality="CR",
                                     body_part="CHEST", window=window))
    return path


@pytest.fixture(scope="module")
def chest_jpeg(datasets) -> Path:
    path = next((datasets / "chest-xray" / "fullres-samples" / "PNEUMONIA").glob("*.jpeg"), None)
    if path is None:
        pytest.skip("no full-resolution chest X-ray samples")
    return path


def _fields(gradable: bool, **fields) -> dict:
    return dict(source="x.png", threshold=0.5, quality=QualityReport(gradable, ()),
                model=ModelRef("m", "1", "ab" * 32, "fp32", "onnxruntime"), timings_ms={}, **fields)


def test_an_ungradable_result_cannot_carry_a_score_or_a_heatmap():
    said = ModelOutput(label="PNEUMONIA", probabilities={"NORMAL": 0.1, "PNEUMONIA": 0.9}, urgent_probability=0.9)
    cam = np.ones((7, 7), np.float32)
    for leak in ({"label": "PNEUMONIA"}, {"urgent_probability": 0.9}, {"probabilities": said.probabilities},
                 {"cam": cam}):
        with pytest.raises(ValueError, match="UNGRADABLE"):
            TriageResult(triage=UNGRADABLE, **_fields(False, ungraded_output=said, **leak))
    with pytest.raises(ValueError):
        TriageResult(triage=URGENT, **_fields(True, ungraded_output=said))  # a graded result shows what it says
    ungraded = TriageResult.of(said, UNGRADABLE, cam, **_fields(False))
    assert (ungraded.label, ungraded.probabilities, ungraded.urgent_probability, ungraded.cam) == (None,) * 4
    document = ungraded.as_json()
    assert document["urgent_probability"] is None and document["ungraded_model_output"]["probability"] == 0.9
    graded = TriageResult.of(said, URGENT, cam, **_fields(True))
    assert graded.urgent_probability == 0.9 and graded.cam is cam and "ungraded_model_output" not in graded.as_json()
    refused = graded.withheld(QualityReport(False, ()))
    assert refused.triage == UNGRADABLE and refused.cam is None and refused.ungraded_output == said


@pytest.mark.parametrize("bits, monochrome1", [(8, False), (12, False), (12, True), (16, True)])
def test_dicom_and_jpeg_of_one_radiograph_give_the_same_answer(chest_jpeg, tmp_path, bits, monochrome1):
    triager = Triager(load_bundle(make_tiny_bundle(tmp_path / "b")), threads=1)
    from_jpeg, _ = triager.triage_file(chest_jpeg)
    gray = cv2.imread(str(chest_jpeg), cv2.IMREAD_GRAYSCALE)
    dcm = _dicom(gray, tmp_path / "chest.dcm", bits=bits, monochrome1=monochrome1)
    from_dicom, img = triager.triage_file(dcm)
    assert img.modality == "CR" and from_dicom.quality.ok
    # The model input itself must match (MONOCHROME1 inverted, bit depth and window undone), at full
    # resolution and at the model's scale (the JPEG by libjpeg's DCT scaling, the DICOM frame by an
    # area average before its window), which is what triage_file decodes.
    for reduce in (None, triager.reduced_decode):
        jpeg_img, dicom_img = decode_file(chest_jpeg, reduce=reduce), decode_file(dcm, reduce=reduce)
        assert jpeg_img.pixels.shape == dicom_img.pixels.shape
        assert np.abs(triager.preprocess(dicom_img) - triager.preprocess(jpeg_img)).max() < 0.05
    assert img.pixels.shape == dicom_img.pixels.shape and any("scale" in n for n in img.notes)
    p_jpeg = from_jpeg.model_output.probabilities["PNEUMONIA"]
    p_dicom = from_dicom.model_output.probabilities["PNEUMONIA"]
    assert p_dicom == pytest.approx(p_jpeg, abs=0.01), img.notes
    if monochrome1:
        assert any("MONOCHROME1" in n for n in img.notes)


def test_result_names_the_exact_model_file(tmp_path, chest_jpeg):
    bundle = load_bundle(make_tiny_bundle(tmp_path / "b"))
    result, _ = Triager(bundle, threads=1).triage_file(chest_jpeg)
    assert result.model.sha256 == bundle.sha256_of("model.onnx")
    assert result.model.as_dict() == {
        "id": "tiny-test", "version": "0.0.1", "sha256": bundle.sha256_of("model.onnx"),
        "precision": "fp32", "backend": "onnxruntime",
    }
    assert result.cam is not None and result.cam.ndim == 2


@pytest.fixture(scope="module")
def shipped_triager():
    from kiosk_support import shipped_bundle

    path = shipped_bundle()
    if path is None:
        pytest.skip("the chest X-ray bundle is not shipped in this checkout")
    triager = Triager(load_bundle(path), threads=1)
    yield triager
    triager.close()


def test_a_jpeg_decoded_at_the_models_scale_gets_the_full_decodes_answer(datasets, shipped_triager):
    """The served path decodes JPEGs at 1/2..1/8 scale (libjpeg's DCT-domain scaling), never below
    what the model and the quality gate need; on the real full-resolution radiographs it must give
    the same triage and nearly the same score as a full decode."""
    files = sorted((datasets / "chest-xray" / "fullres-samples").glob("*/*.jpeg"))
    if not files:
        pytest.skip("no full-resolution chest X-ray samples")
    t, reduce = shipped_triager, shipped_triager.reduced_decode
    threshold = t.manifest.policy.operating_point.threshold
    factors = set()
    for path in files:
        reduced, img = t.triage_file(path)
        full = t.triage_image(decode_file(path), str(path))
        factor = img.original_size[0] / img.pixels.shape[0]
        factors.add(round(factor))
        assert min(img.pixels.shape[:2]) >= reduce.min_side and any("scale" in n for n in img.notes), path.name
        p_full = full.model_output.probabilities["PNEUMONIA"]
        assert reduced.model_output.probabilities["PNEUMONIA"] == pytest.approx(p_full, abs=0.03), path.name
        assert reduced.quality.ok == full.quality.ok, path.name
        if abs(p_full - threshold) > 0.03:  # on the threshold, a change within that tolerance may flip it
            assert reduced.triage == full.triage, path.name
    assert factors & {4, 8}  # these 1000-2900 px radiographs are decoded at 1/4 or 1/8


def test_a_dicom_radiograph_reduced_before_its_window_gets_the_full_decodes_answer(datasets, shipped_triager):
    """Grayscale DICOM frames are area-averaged to the model's scale before rescale and window (a
    64th of the pixels to window); on the real CR/DX files the shipped model must answer as from
    the full frame."""
    files = sorted((datasets / "dicom" / "cr_dx").glob("RG*.dcm"))
    if not files:
        pytest.skip("no CR/DX samples")
    t = shipped_triager
    for path in files:
        full_img = decode_file(path)
        reduced, img = t.triage_file(path)
        full = t.triage_image(full_img, str(path))
        assert img.pixels.shape[0] < full_img.pixels.shape[0] and min(img.pixels.shape) >= t.reduced_decode.min_side
        assert reduced.triage == full.triage, path.name
        assert reduced.model_output.probabilities["PNEUMONIA"] == pytest.approx(
            full.model_output.probabilities["PNEUMONIA"], abs=0.03), path.name


def test_a_dicom_with_a_voi_lut_table_is_not_reduced_before_it(tmp_path, shipped_triager):
    """LUT tables are indexed by exact stored values: averaging first would look up values that
    were never stored. Such a frame is windowed at full resolution, then preprocessed as before."""
    import pydicom
    from pydicom.dataset import Dataset

    stored = (np.tile(np.linspace(0, 4095, 1200), (1000, 1))).astype(np.uint16)
    path = tmp_path / "lut.dcm"
    path.write_bytes(grayscale_dicom(stored, bits=12, modality="CR", body_part="CHEST"))
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "OW", (np.arange(4096, dtype=np.uint16) * 16).tobytes())
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    img = decode_file(path, reduce=shipped_triager.reduced_decode)
    assert img.pixels.shape == stored.shape and "VOI LUT applied" in img.notes
