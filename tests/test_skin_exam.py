"""The second exam: the shipped skin-lesion bundle on real HAM10000 images - its policy as data,
multi-class results, the quality checks that keep each exam's images away from the other, and
`bedside eval` on labelled and one-vs-rest folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest


from device import intake
from device.cli import main as bedside
from device.decision.triage import UNGRADABLE, URGENT
from device.runtime.triager import Triager
from models.bundle import default_bundles_dir, load_bundle
from models.datasets import datasets_dir

SKIN = default_bundles_dir() / "skin-lesion-triage"
CHEST = default_bundles_dir() / "chest-xray-pneumonia"
DERM = datasets_dir() / "dermatology" / "train"
XRAYS = datasets_dir() / "chest-xray" / "train"
LABELS = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def images(label: str, count: int, start: int = 0) -> list[Path]:
    return sorted((DERM / label).glob("*.jpg"))[start : start + count]


@pytest.fixture(scope="module")
def skin() -> Triager:
    return Triager(load_bundle(SKIN), threads=1)


def judged(skin: Triager, label: str, count: int, start: int = 0) -> list[Path]:
    """The first `count` images of a label (from `start`) that the shipped model judges (its refusal
    check refuses about 1-3% of real dermoscopy images; tests/test_shipped_refusal.py holds it to that):
    these tests are about what it does with the images it judges."""
    chosen = []
    for path in images(label, 10 * count, start):
        if skin.triage_file(path)[0].triage != UNGRADABLE:
            chosen.append(path)
        if len(chosen) == count:
            return chosen
    raise AssertionError(f"the skin exam refuses most {label} images from {start}")


@pytest.fixture(scope="module")
def chest() -> Triager:
    return Triager(load_bundle(CHEST), threads=1)


def decoded(pixels: np.ndarray) -> intake.DecodedImage:
    return intake.DecodedImage(pixels=pixels, source_format="png", original_size=pixels.shape[:2], bits_stored=8)


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_the_manifest_states_the_exam_as_data():
    m = load_bundle(SKIN).manifest
    assert m.labels == LABELS and m.task == "multi-class-classification"
    assert m.policy.urgent_labels == ["akiec", "bcc", "mel"] and m.policy.combine == "sum"
    assert m.policy.focus_label == "mel" and m.label_name("mel") == "melanoma"
    assert m.research_only and "Non-commercial use only" in m.disclaimer and m.provenance.dataset_licence == "CC BY-NC 4.0"
    assert m.provenance.split.method == "by-lesion-stratified"
    assert m.input.channels == 3 and m.input.color == "rgb"
    assert {c.split for c in m.class_metrics} and all(set(c.per_class_auc) == set(LABELS) for c in m.class_metrics)
    assert "vignette" in m.audit.checks and "ruler" in m.audit.checks and "hair" in m.audit.checks
    card = (SKIN / "MODEL_CARD.md").read_text()
    assert "CC BY-NC 4.0" in card and "non-commercial" in card.lower()
    assert {v.precision for v in m.variants} >= {"fp32", "int8"}


def test_dermoscopy_images_get_seven_probabilities_and_the_policy_applies(skin):
    m = skin.manifest
    for label in LABELS:
        for path in judged(skin, label, 2):
            result, _ = skin.triage_file(path)
            assert result.quality.ok, (path, result.quality.issues)
            assert list(result.probabilities) == LABELS
            assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
            p_refer = sum(result.probabilities[u] for u in m.policy.urgent_labels)
            assert result.urgent_probability == pytest.approx(p_refer)
            urgent = p_refer >= m.policy.operating_point.threshold
            assert result.triage == (URGENT if urgent else "ROUTINE")
            assert (result.label in m.policy.urgent_labels) == urgent
            # the 112 px members' 7x7 maps and the 56 px members' 4x4 meet on 28x28 (Ensemble.cam_side)
            assert result.cam is not None and result.cam.shape == (28, 28)


def test_a_chest_xray_sent_to_the_skin_exam_is_ungradable_with_the_reason(skin):
    for path in sorted((XRAYS / "NORMAL").glob("*.jpeg"))[:2] + sorted((XRAYS / "PNEUMONIA").glob("*.jpeg"))[:2]:
        result, _ = skin.triage_file(path)
        assert result.triage == UNGRADABLE
        assert result.quality.issues[0].code == "not_colour"  # the first reason is the one on the banner
        assert result.quality.issues[0].message == "This is a gray image, not a colour dermoscopy image"


def test_a_dermoscopy_image_sent_to_the_chest_exam_is_ungradable(chest):
    # the grayest dermoscopy images of each class are the hardest case for the chest exam's colour check
    for label in LABELS:
        for path in images(label, 3):
            result, _ = chest.triage_file(path)
            assert result.triage == UNGRADABLE and "colour_photo" in [i.code for i in result.quality.issues], path


def test_blur_and_a_picture_without_a_lesion_are_ungradable(skin):
    path = images("nv", 1)[0]
    sharp = rgb(path)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    codes = [i.code for i in skin.triage_image(decoded(blurred), "blurred").quality.issues]
    assert "blurred" in codes
    big_blur = cv2.GaussianBlur(cv2.resize(sharp, (1920, 1920)), (0, 0), 25)  # a camera frame out of focus
    assert "blurred" in [i.code for i in skin.triage_image(decoded(big_blur), "frame").quality.issues]
    assert skin.triage_image(decoded(cv2.resize(sharp, (1920, 1920), interpolation=cv2.INTER_CUBIC)),
                             "frame").quality.ok  # a sharp large frame passes
    skin_only = np.full((224, 224, 3), (205, 150, 140), np.uint8)
    noise = np.random.default_rng(0).normal(0, 6, skin_only.shape)
    skin_only = np.clip(skin_only + noise, 0, 255).astype(np.uint8)
    result = skin.triage_image(decoded(skin_only), "plain skin")
    assert result.triage == UNGRADABLE and "no_lesion" in [i.code for i in result.quality.issues]


def _folder(root: Path, layout: dict[str, list[Path]]) -> Path:
    for name, paths in layout.items():
        (root / name).mkdir(parents=True)
        for p in paths:
            os.symlink(p, root / name / p.name)
    return root


def test_eval_on_a_one_vs_rest_melanoma_folder(tmp_path, capsys, skin):
    mel = judged(skin, "mel", 12)
    rest = judged(skin, "nv", 8) + judged(skin, "bkl", 4) + judged(skin, "bcc", 2)
    data = _folder(tmp_path / "isic", {"mel": mel, "not_mel": rest})
    assert bedside(["eval", "--bundle", str(SKIN), "--data", str(data), "--json", "--bootstrap", "50",
                    "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["auc_of"] == "P(mel)" and report["positive_label"] == "mel"
    assert report["n"] == 26 and report["n_positive"] == 12
    results = [skin.triage_file(p)[0] for p in mel + rest]
    referred = np.array([r.triage == URGENT for r in results])
    assert report["sensitivity"] == pytest.approx(referred[:12].mean())
    assert report["specificity"] == pytest.approx((~referred[12:]).mean())
    assert "multiclass" not in report and "auc" not in report["intervals"]

    wrong = _folder(tmp_path / "nv", {"nv": images("nv", 2), "not_nv": images("mel", 2)})
    assert bedside(["eval", "--bundle", str(SKIN), "--data", str(wrong), "--json"]) == 1
    assert "nv is not an urgent label" in capsys.readouterr().err


def test_eval_on_a_labelled_folder_reports_per_class_metrics(tmp_path, capsys, skin):
    data = _folder(tmp_path / "all", {label: judged(skin, label, 3, start=10) for label in LABELS})
    assert bedside(["eval", "--bundle", str(SKIN), "--data", str(data), "--json", "--bootstrap", "50",
                    "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    mc = report["multiclass"]
    assert report["positive_label"] == "akiec + bcc + mel" and report["n_positive"] == 9
    assert mc["labels"] == LABELS and np.array(mc["confusion"]).sum() == 21 and mc["counts"] == [3] * 7
    assert set(mc["per_class_auc"]) == set(LABELS) and 0 <= mc["balanced_accuracy"] <= 1
    assert mc["focus"] == "mel" and 0 <= mc["focus_sensitivity"] <= 1


def dermatoscope_frames(folder: Path, size: tuple[int, int] = (1280, 720), count: int = 4) -> Path:
    """Dermoscopy images as a 16:9 dermatoscope camera would send them: scaled to fill, centre-cropped."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    for i, path in enumerate(images("mel", 2) + images("nv", count - 2)):
        big = cv2.resize(cv2.imread(str(path)), (width, width), interpolation=cv2.INTER_CUBIC)
        y0 = (width - height) // 2
        cv2.imwrite(str(folder / f"frame{i:03d}.jpg"), big[y0 : y0 + height], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def test_live_dermatoscope_stream_is_triaged_by_the_skin_exam(tmp_path, ffmpeg):
    """`bedside serve` with both exams and a 1280x720 MJPEG dermatoscope (ffmpeg) configured for the
    skin exam: live results and a capture come from the skin model; uploads still reach the chest exam."""
    from camera_peer import make_video, MjpegServer
    from loopback import wait_for
    from kiosk_support import running_server

    video = make_video(tmp_path / "derm.mkv", dermatoscope_frames(tmp_path / "frames"), fps=15)
    camera = MjpegServer(video).start()
    config = tmp_path / "bedside.toml"
    config.write_text(f'[[capture.sources]]\nuri = "{camera.url}"\nname = "Dermatoscope"\nexam = "skin-lesion-triage"\n')
    try:
        with running_server(tmp_path / "data", [CHEST, SKIN], "--config", str(config)) as server:
            client = server.client()
            try:
                assert wait_for(lambda: client.get_json("/api/v1/sources/cam0/latest")[0] == 200, 20, 0.1)
                _, latest = client.get_json("/api/v1/sources/cam0/latest")
                status, _, body = client.request("POST", "/api/v1/sources/cam0/capture", b"{}",
                                                 {"Content-Type": "application/json"})
                _, health = client.get_json("/api/v1/health")
            finally:
                client.close()
    finally:
        camera.kill()
    assert latest["result"]["model"]["id"] == "skin-lesion-triage"
    assert latest["frame"]["size"] == [720, 1280]
    assert latest["triage"] in ("URGENT", "ROUTINE"), latest["result"]["quality"]
    assert status == 201, body
    study = json.loads(body)
    assert study["exam"] == "skin-lesion-triage" and list(study["result"]["probabilities"]) == LABELS
    assert {e["id"] for e in health["models"]} == {"chest-xray-pneumonia", "skin-lesion-triage"}


def test_what_decided_leads_the_result_not_the_likeliest_diagnosis():
    """A melanoma the model calls URGENT while a benign keratosis is its likeliest single diagnosis:
    the page leads with the refer group's total against the threshold, the group's diagnoses first;
    nothing reads 0%."""
    from device.core.store import StudyRecord
    from device.kiosk.display import decision_of

    m = load_bundle(SKIN).manifest
    probs = {"akiec": 0.064, "bcc": 0.012, "bkl": 0.598, "df": 0.005, "mel": 0.317, "nv": 0.002, "vasc": 0.002}
    fields = dict.fromkeys(StudyRecord.__dataclass_fields__)
    study = StudyRecord(**{**fields, "triage": URGENT, "probability": 0.393, "threshold": 0.085,  # as recorded
                           "result": {"probabilities": probs}})
    d = decision_of(study, m)
    assert d.urgent and (d.total, d.threshold) == ("39%", "8.5%")
    assert [(s.name, s.percent) for s in d.refer] == [
        ("melanoma", "32%"), ("actinic keratosis / intraepithelial carcinoma", "6%"), ("basal cell carcinoma", "1%")]
    assert [(s.name, s.percent) for s in d.others] == [("benign keratosis", "60%"), ("dermatofibroma", "1%")]
    low = StudyRecord(**{**fields, "triage": "ROUTINE", "probability": 0.0849, "threshold": 0.08501,
                         "result": {"probabilities": {**probs, "akiec": 0.001, "mel": 0.0829, "nv": 0.0}}})
    d = decision_of(low, m)
    assert not d.urgent and (d.total, d.threshold) == ("8.49%", "8.50%")  # never "8.5% below 8.5%"
    assert ("actinic keratosis / intraepithelial carcinoma", "under 1%") in [(s.name, s.percent) for s in d.refer]
    assert "melanocytic nevus" not in [s.name for s in d.others]
    assert decision_of(low, load_bundle(CHEST).manifest) is None  # a binary exam: its score says it all


def test_kiosk_offers_both_exams_and_shows_what_decided(tmp_path):
    from device.kiosk import create_app
    from device.core.settings import KioskConfig
    from device.appliance.context import appliance_of
    from kiosk_support import form_client

    import io
    import re

    config = KioskConfig.model_validate({"store": {"data_dir": str(tmp_path / "data")},
                                         "models": {"bundles": [str(CHEST), str(SKIN)], "inference_threads": 1}})
    app = create_app(config)
    try:
        with form_client(app) as c:
            home = c.get("/").get_data(as_text=True)
            assert "Skin lesion triage" in home and "chest x-ray" in home.lower()
            lesion = images("mel", 1)[0]
            r = c.post("/studies", data={"file": (io.BytesIO(lesion.read_bytes()), lesion.name),
                                         "exam": "skin-lesion-triage", "reference": "Bed 9"},
                       content_type="multipart/form-data")
            assert r.status_code == 303, r.get_data(as_text=True)
            page = c.get(r.headers["Location"]).get_data(as_text=True)
            decided = page[page.index("data-decided"):page.index("</div>", page.index("data-decided"))]
            study = c.get("/api/v1/studies/" + r.headers["Location"].split("/")[-1].split("?")[0]).json
            probs = study["result"]["probabilities"]
            line = decided[decided.index("data-refer"):]
            refer = re.findall(r'<span class="share">([^<]+) <strong>', line[:line.index("</p>")])
            m = load_bundle(SKIN).manifest
            assert refer == [m.label_name(label) for label in sorted(m.policy.urgent_labels, key=lambda k: -probs[k])]
            assert "add up to" in decided and "Non-commercial use only" in page and "Research use only" in page

            xray = sorted((XRAYS / "NORMAL").glob("*.jpeg"))[0]
            r = c.post("/studies", data={"file": (io.BytesIO(xray.read_bytes()), xray.name),
                                         "exam": "skin-lesion-triage"}, content_type="multipart/form-data")
            page = c.get(r.headers["Location"]).get_data(as_text=True)
            assert 'data-triage="UNGRADABLE"' in page and "not a colour dermoscopy image" in page
            assert "data-decided" not in page and "Model score" not in page
    finally:
        appliance_of(app).close()

