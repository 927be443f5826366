"""The `bedside` command line, run as a real process on real images; other tools parse these shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_bundle import make_tiny_bundle

from models import audit
from models.bundle import load_bundle

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "bundles" / "chest-xray-pneumonia"


def bedside(*args: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "device.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr + proc.stdout
    return proc


@pytest.fixture(scope="module")
def samples(datasets):
    files = sorted((datasets / "chest-xray" / "fullres-samples").glob("*/*.jpeg"))
    if not files:
        pytest.skip("no fullres-samples in the dataset folder")
    return files


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "bedside"
    assert script.exists(), "install the project (make install) so the `bedside` script exists"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    for command in ("infer", "eval", "bench", "optimize", "serve", "doctor", "train", "export"):
        assert command in out.stdout


def test_infer_json_lines_and_exit_2_when_a_file_fails(samples, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    chosen = [samples[0], samples[-1]]
    proc = bedside("infer", "--bundle", SHIPPED, "--json", *chosen, empty, check_rc=2)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 3
    for line, path in zip(lines, chosen):
        assert line["file"] == str(path)
        assert set(line) >= {"file", "label", "probabilities", "triage", "quality", "model", "latency_ms"}
        assert line["label"] in ("NORMAL", "PNEUMONIA")
        assert set(line["probabilities"]) == {"NORMAL", "PNEUMONIA"}
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert line["triage"] in ("URGENT", "ROUTINE", "UNGRADABLE")
        assert set(line["model"]) >= {"id", "version", "sha256"}
        assert line["model"]["id"] == "chest-xray-pneumonia" and len(line["model"]["sha256"]) == 64
        assert line["latency_ms"] > 0
    assert lines[2] == {"file": str(empty), "error": "the file is empty", "kind": "empty"}


def test_infer_table_for_people(samples):
    proc = bedside("infer", "--bundle", SHIPPED, *samples[:2])
    assert "threshold" in proc.stdout
    assert sum(("URGENT" in line or "ROUTINE" in line) for line in proc.stdout.splitlines()) == 2


def test_infer_writes_heatmap_overlays_at_image_size(samples, tmp_path):
    bedside("infer", "--bundle", SHIPPED, "--heatmap-dir", tmp_path, samples[-1])
    overlay = cv2.imread(str(tmp_path / f"{samples[-1].name}.heatmap.png"))
    original = cv2.imread(str(samples[-1]))
    assert overlay is not None and overlay.shape[:2] == original.shape[:2]


@pytest.fixture(scope="module")
def small_eval_set(datasets, tmp_path_factory):
    """40 real training images in folders whose case differs from the labels, to prove matching."""
    root = tmp_path_factory.mktemp("evalset")
    for label, folder in (("NORMAL", "normal"), ("PNEUMONIA", "Pneumonia")):
        (root / folder).mkdir()
        for src in sorted((datasets / "chest-xray" / "train" / label).glob("*.jpeg"))[:20]:
            (root / folder / src.name).symlink_to(src)
    return root


def test_eval_json(small_eval_set):
    report = json.loads(bedside("eval", "--bundle", SHIPPED, "--json", "--audit", "--bootstrap", "200", "--data", small_eval_set).stdout)
    assert report["n"] == 40 and report["n_positive"] == 20
    assert set(report) >= {"n", "auc", "accuracy", "sensitivity", "specificity", "confusion", "intervals",
                           "subgroups", "audit"}
    assert sum(report["confusion"].values()) == 40
    assert 0.5 < report["auc"] <= 1.0  # training images: a sanity check, not a validation
    for name in ("auc", "sensitivity", "specificity"):
        low, high = report["intervals"][name]
        assert low <= report[name] <= high
    groups = {g["group"]: g for g in report["subgroups"]}
    assert groups["label NORMAL"]["n"] == 20 and "auc" not in groups["label NORMAL"]  # one class: no AUC
    assert groups["normal IM-"]["n"] + groups.get("normal NORMAL2-IM-", {"n": 0})["n"] == 20
    assert sum(groups[b]["n"] for b in ("aspect < 1.2", "aspect 1.2-1.5", "aspect >= 1.5") if b in groups) == 40
    assert [c["name"] for c in report["audit"]] == list(audit.RADIOGRAPH_CHECKS)
    assert all(0 <= c["flip_rate"] <= 1 and c["n"] == 40 for c in report["audit"])


def test_eval_text_prints_intervals_subgroups_and_audits(small_eval_set):
    out = bedside("eval", "--bundle", SHIPPED, "--audit", "--bootstrap", "100", "--data", small_eval_set).stdout
    assert "95% CI" in out and "subgroup" in out and "squeeze_0.8" in out
    assert "the bundle's limit" in out


@pytest.fixture(scope="module")
def grouped_bundle(tmp_path_factory):
    """The shipped chest bundle declaring the NORMAL2 normals as its audit group."""
    import shutil

    bundle = tmp_path_factory.mktemp("grouped") / "bundle"
    shutil.copytree(SHIPPED, bundle)
    data = json.loads((bundle / "manifest.json").read_text())
    data["audit"]["group"] = {"name": "NORMAL2 normals", "file_pattern": "^NORMAL2-IM-", "label": "NORMAL",
                              "checks": ["squeeze_0.8", "widen_1.25", "border_crop"]}
    (bundle / "manifest.json").write_text(json.dumps(data))
    return bundle


def test_eval_audit_scores_the_bundles_audit_group_on_its_own(grouped_bundle, small_eval_set, datasets, tmp_path):
    train = datasets / "chest-xray" / "train"
    picks = {"NORMAL": sorted((train / "NORMAL").glob("IM-*.jpeg"))[:6] + sorted((train / "NORMAL").glob("NORMAL2-*.jpeg"))[:6],
             "PNEUMONIA": sorted((train / "PNEUMONIA").glob("*.jpeg"))[:6]}
    for label, files in picks.items():
        (tmp_path / label).mkdir()
        for src in files:
            (tmp_path / label / src.name).symlink_to(src)
    report = json.loads(bedside("eval", "--bundle", grouped_bundle, "--json", "--audit", "--bootstrap", "50",
                                "--data", tmp_path).stdout)
    overall = [c for c in report["audit"] if c["group"] is None]
    grouped = [c for c in report["audit"] if c["group"] == "NORMAL2 normals"]
    assert [c["name"] for c in overall] == list(audit.RADIOGRAPH_CHECKS) and {c["n"] for c in overall} == {18}
    assert [c["name"] for c in grouped] == ["squeeze_0.8", "widen_1.25", "border_crop"]
    assert all(c["n"] == 6 and c["flip_rate_positive"] is None for c in grouped)
    out = bedside("eval", "--bundle", grouped_bundle, "--audit", "--bootstrap", "50", "--data", tmp_path).stdout
    assert "NORMAL2 normals only (n=6)" in out
    out = bedside("eval", "--bundle", grouped_bundle, "--audit", "--bootstrap", "50", "--data", small_eval_set).stdout
    assert "no NORMAL2 normals in this folder" in out and "not measured" in out


def test_eval_rejects_a_folder_that_matches_no_label(small_eval_set, tmp_path):
    (tmp_path / "normal").symlink_to(small_eval_set / "normal")
    (tmp_path / "covid").mkdir()
    proc = bedside("eval", "--bundle", SHIPPED, "--data", tmp_path, check_rc=1)
    assert "covid" in proc.stderr and "matches no label" in proc.stderr


def test_bench_json_side_by_side():
    proc = bedside("bench", "--bundle", SHIPPED, "--json", "--iterations", "20", "--rounds", "2", "--batch", "4")
    report = json.loads(proc.stdout)
    results = report["results"]
    # The row the kiosk serves (backend = "auto") is marked, once per block (batch 1, batch 4, and
    # batch 1 with a study's decode before each run, as the kiosk times its choice), and is what the kiosk picks.
    for batch, as_served in ((1, False), (4, False), (1, True)):
        served = [r for r in results if r["batch"] == batch and r["as_served"] == as_served and r["served"]]
        assert len(served) == 1
        assert (served[0]["backend"], served[0]["variant"]) == (report["served"]["backend"], report["served"]["variant"])
    assert {t["target"] for t in report["targets"]} >= {
        "served p50 / fastest p50 (batch 1)", "served p99 / its own p50 (batch 1)",
        "as served (each run after a study's decode): served p50 / fastest p50"}
    keys = {(r["backend"], r["precision"], r["batch"]) for r in results}
    assert {("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 4)} <= keys
    assert ("pytorch-eager", "fp32", 1) in keys  # torch is installed in the test environment
    for r in results:
        assert set(r) >= {"backend", "precision", "variant", "batch", "p50_ms", "p90_ms", "p99_ms", "throughput_ips",
                          "selftest_ok"}
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["throughput_ips"] > 0
    # Every variant made for the CPU computes the bundle's answers here, whatever this CPU's INT8 kernels
    # (8-bit weights overflow on x86 without VNNI; the CPU graph's 7-bit weights do not).
    cpu_files = {v.file for v in load_bundle(SHIPPED).manifest.variants if "cpu" in v.targets}
    assert all(r["selftest_ok"] for r in results if r["backend"] in ("onnxruntime", "openvino")
               and r["variant"] in cpu_files)


def test_bench_counts_no_row_that_fails_the_self_test():
    """A runner that computes wrong answers here is shown, marked, and left out of every target."""
    from device.commands import bench

    def row(backend, precision, p50, served=False, ok=True):
        return {"backend": backend, "precision": precision, "variant": f"{backend}-{precision}", "batch": 1,
                "as_served": False, "served": served, "selftest_ok": ok, "p50_ms": p50, "p90_ms": p50, "p99_ms": p50,
                "throughput_ips": 1e3 / p50}

    results = [row("onnxruntime", "int8", 0.5, ok=False), row("openvino", "int8", 1.0, served=True),
               row("openvino", "fp32", 2.5), row("onnxruntime", "fp32", 1.5)]
    targets = {t["target"]: t["value"] for t in bench.targets(results)}
    assert targets["served p50 / fastest p50 (batch 1)"] == 1.0  # not 2.0 against the wrong-answer row
    assert targets["openvino fp32 p50 / int8 p50"] == 2.5
    table = bench.format_table(results)
    assert "! onnxruntime int8" in table and "* openvino int8" in table
    assert "0.50x" in table  # the marked row's p50 against the fastest row that passes


def test_bench_pipeline_splits_the_served_path_beside_libjpeg(samples, datasets):
    dicom = datasets / "dicom" / "ct_mr_other" / "693_J2KR.dcm"
    proc = bedside("bench", "--bundle", SHIPPED, "--pipeline", str(samples[0]), str(dicom), "--json", "--iterations", "10")
    report = json.loads(proc.stdout)
    jpeg, j2k = report["files"]
    for row in (jpeg, j2k):
        assert set(row["ms"]) >= {"decode", "quality", "preprocess", "model"} and all(v > 0 for v in row["ms"].values())
        assert row["study_ms"] == pytest.approx(sum(row["ms"][s] for s in ("decode", "quality", "preprocess", "model")),
                                                abs=1e-2)
    # A full-resolution radiograph is decoded at reduced scale, and compared with libjpeg at that scale.
    assert min(jpeg["decoded"]) < min(jpeg["size"]) and jpeg["study_vs_libjpeg"] > 0
    assert "study_vs_libjpeg" not in j2k and j2k["format"] == "dicom"
    assert report["served"]["backend"] in json.loads(bedside("doctor", "--json", check_rc=None).stdout)["backends"]


def test_torch_eager_runs_the_same_weights_as_onnxruntime():
    import numpy as np

    from device.runtime.base import ModelIO, VariantFile
    from device.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from models.bundle import load_bundle
    from models.training.onnx_eager import EagerGraph

    bundle = load_bundle(SHIPPED)
    m = bundle.manifest
    path = bundle.path_of(m.variant("fp32").file)
    x = np.random.default_rng(1).standard_normal((2, m.input.channels, m.input.height, m.input.width))
    x = x.astype(np.float32)
    ort = OnnxRuntimeBackend(VariantFile(path, m.variant("fp32")), ModelIO(m.input.tensor_name, (m.outputs.logits,), x.shape[1:]), 1).run(x)
    eager = EagerGraph(path)(x)
    np.testing.assert_allclose(eager[m.outputs.logits], ort[m.outputs.logits], rtol=1e-3, atol=1e-3)


def test_doctor_verifies_shipped_bundles(tmp_path):
    report = json.loads(bedside("doctor", "--json", "--data-dir", str(tmp_path)).stdout)
    assert report["backends"]["onnxruntime"]["ok"]
    assert [b["id"] for b in report["bundles"] if b["ok"]] == ["chest-xray-pneumonia", "skin-lesion-triage"]
    assert "python" in report and "features" in report["cpu"]
    # What backend = auto serves on, with every candidate's figures, cached for the kiosk in its data dir.
    choice = report["backend_choice"]["chest-xray-pneumonia"]
    assert report["backends"][choice["backend"]]["ok"] and len(choice["measured"]) >= 2
    assert (tmp_path / "backend-choice" / "chest-xray-pneumonia.json").is_file()
    again = json.loads(bedside("doctor", "--json", "--data-dir", str(tmp_path)).stdout)["backend_choice"]
    assert again["chest-xray-pneumonia"]["cached"] and again["chest-xray-pneumonia"]["served"] == choice["served"]
    shipped = next(b for b in report["bundles"] if b["id"] == "chest-xray-pneumonia")
    checked = {(c["precision"], c["file"]) for c in shipped["variant_checks"] if c["ok"]}
    assert ("fp32", "model.onnx") in checked and any(p == "int8" for p, _ in checked)


def test_doctor_fails_on_a_tampered_bundle(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundles" / "tiny")
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes() + b"x")
    proc = bedside("doctor", "--bundles", tmp_path / "bundles", check_rc=1)
    assert "BROKEN" in proc.stdout and "model.onnx does not match" in proc.stdout


def test_train_without_torch_says_what_to_install(tmp_path):
    code = "import sys; sys.modules['torch'] = None; from device.cli import main; sys.exit(main(['train', '--help']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "bedside[train]" in proc.stderr and "Traceback" not in proc.stderr


def test_optimize_without_onnx_says_what_to_install():
    code = ("import sys; sys.modules['onnx'] = None; from device.cli import main; "
            "sys.exit(main(['optimize', '--help']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "bedside[optimize]" in proc.stderr and "Traceback" not in proc.stderr


def test_train_without_its_data_says_which_folder_is_missing(tmp_path):
    proc = bedside("train", "--data", tmp_path, "--out", tmp_path / "bundle", check_rc=1)
    assert proc.stderr.strip() == f"bedside train: {tmp_path / 'NORMAL'}: missing class folder"


@pytest.fixture(scope="module")
def refusing_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("refusing") / "bundle", refusal=True)


def test_eval_reports_what_the_refusal_check_refused_apart(small_eval_set, refusing_bundle, tmp_path):
    """Issue 21: a bundle with a refusal check; its metrics are on what it judged, the refused images
    are counted per label, and the figures on every image are given beside them."""
    from kiosk_support import gray_fundus_png

    for folder in ("normal", "Pneumonia"):
        (tmp_path / folder).mkdir()
        for src in (small_eval_set / folder).iterdir():
            (tmp_path / folder / src.name).symlink_to(src.resolve())
    (tmp_path / "normal" / "fundus.png").write_bytes(gray_fundus_png())
    report = json.loads(bedside("eval", "--bundle", refusing_bundle, "--json", "--bootstrap", "50",
                                "--data", tmp_path).stdout)
    refused = report["refusal"]
    assert refused["n"] == 41 and refused["refused"] >= 1 and refused["by_label"]["NORMAL"] >= 1
    assert report["n"] == 41 - refused["refused"]  # the metrics: what it judged
    assert refused["including_refused"]["n"] == 41 and refused["calibrated_refusal_rate"] == 0.01
    text = bedside("eval", "--bundle", refusing_bundle, "--bootstrap", "50", "--data", tmp_path).stdout
    assert f"refused by the model's check: {refused['refused']} of 41" in text
    plain = make_tiny_bundle(tmp_path / "plain")  # a bundle without a check
    assert json.loads(bedside("eval", "--bundle", plain, "--json", "--bootstrap", "50",
                              "--data", small_eval_set).stdout)["refusal"] is None
    shipped = json.loads(bedside("eval", "--bundle", SHIPPED, "--json", "--bootstrap", "50",
                                 "--data", small_eval_set).stdout)["refusal"]
    assert shipped["n"] == 40 and shipped["refused"] <= 2  # the shipped check keeps real training films


def test_eval_must_refuse_gives_the_share_refused_by_reason(refusing_bundle, datasets, samples, tmp_path):
    """`--must-refuse DIR`: gray fundus photographs (the refusal check), colour ones and a CT (the
    quality checks), and one chest film that the exam judges, named."""
    retina = np.load(datasets / "ood-dev" / "retinamnist_train_val.npz")["val_images"][:40]
    far = [img for img in retina if abs(img.mean() / 255 - 0.5) / 0.25 > 1.2][:4]  # the check refuses these
    (tmp_path / "fundus" / "gray").mkdir(parents=True)
    for i, img in enumerate(far):
        big = cv2.resize(img, (224, 224), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(tmp_path / "fundus" / "gray" / f"{i}.png"), cv2.cvtColor(big, cv2.COLOR_RGB2GRAY))
        cv2.imwrite(str(tmp_path / "fundus" / f"colour{i}.png"), big[..., ::-1])
    (tmp_path / "ct.dcm").symlink_to(datasets / "dicom" / "ct_mr_other" / "CT_small.dcm")
    (tmp_path / "film.jpeg").symlink_to(samples[0])
    report = json.loads(bedside("eval", "--bundle", refusing_bundle, "--json", "--must-refuse", tmp_path).stdout)
    assert (report["n"], report["refused"], report["judged"]) == (10, 9, 1)
    assert report["by_reason"] == {"quality": 5, "refusal_check": 4}
    assert report["quality_codes"] == {"colour_photo": 4, "wrong_modality": 1}
    assert report["judged_files"] == [str(tmp_path / "film.jpeg")] and report["share"] == 0.9
    text = bedside("eval", "--bundle", refusing_bundle, "--must-refuse", tmp_path).stdout
    assert "refused 9 (90.0%)" in text and "refusal check 4" in text and "film.jpeg" in text
    proc = bedside("eval", "--bundle", refusing_bundle, "--must-refuse", tmp_path, "--data", tmp_path, check_rc=2)
    assert "not allowed with argument" in proc.stderr
