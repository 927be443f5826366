"""Data handling and a smoke training run on real images: train -> calibrate -> export -> bundle."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.bundle import load_bundle, sha256_file  # noqa: E402
from models.training.data import (  # noqa: E402
    default_data_dir,
    list_samples,
    patient_id,
    remove_duplicates,
    split_by_patient,
)

DATA = default_data_dir()
needs_data = pytest.mark.skipif(
    not (DATA / "NORMAL").is_dir(), reason=f"chest X-ray dataset not found at {DATA} (set BEDSIDE_DATASETS)"
)


def test_patient_ids_from_file_names():
    assert patient_id("person1000_bacteria_2931.jpeg", "PNEUMONIA") == "PNEUMONIA:person1000"
    assert patient_id("person447_virus_921_1.jpeg", "PNEUMONIA") == "PNEUMONIA:person447"
    assert patient_id("IM-0115-0001.jpeg", "NORMAL") == "NORMAL:IM-0115"
    assert patient_id("IM-0429-0001-0002.jpeg", "NORMAL") == "NORMAL:IM-0429"
    assert patient_id("NORMAL2-IM-0115-0001.jpeg", "NORMAL") == "NORMAL:NORMAL2-IM-0115"
    with pytest.raises(ValueError):
        patient_id("scan.jpeg", "NORMAL")


@pytest.fixture(scope="module")
def samples():
    if not (DATA / "NORMAL").is_dir():
        pytest.skip(f"chest X-ray dataset not found at {DATA} (set BEDSIDE_DATASETS)")
    return list_samples(DATA)


@needs_data
def test_duplicates_removed(samples):
    kept, removed = remove_duplicates(samples)
    assert removed > 0 and len(kept) + removed == len(samples)
    assert len({sha256_file(s.path) for s in kept}) == len(kept)


@needs_data
def test_split_keeps_patients_on_one_side(samples):
    kept, _ = remove_duplicates(samples)
    train, val = split_by_patient(kept, 0.17, seed=0)
    assert sorted(train + val) == list(range(len(kept)))
    assert not {kept[i].patient for i in train} & {kept[i].patient for i in val}
    val_share = [np.mean([kept[i].label for i in idx]) for idx in (train, val)]
    assert abs(val_share[0] - val_share[1]) < 0.05  # stratified: similar class balance
    assert split_by_patient(kept, 0.17, seed=0) == (train, val)  # fixed seed, fixed split


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One tiny real training run (64 images, 1 epoch) that writes a bundle; its folder."""
    from models.training import train

    if not (DATA / "NORMAL").is_dir():
        pytest.skip(f"chest X-ray dataset not found at {DATA} (set BEDSIDE_DATASETS)")
    tmp_path = tmp_path_factory.mktemp("smoke")
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args([
        "--out", str(tmp_path / "bundle"), "--runs-dir", str(tmp_path / "runs"), "--limit", "64",
        "--size", "64", "--epochs", "1", "--stress-copies", "1", "--val-fraction", "0.25", "--no-progress",
        "--bootstrap", "100", "--max-flip-rate", "1",  # a 1-epoch model is not expected to pass the audits
    ])
    assert train.run(args) == 0
    return tmp_path


@needs_data
def test_smoke_train_to_bundle(smoke_run):
    from models.training.data import input_contract, decode_rgb
    from models.training.export import INPUT_NAME, deployable_model, onnx_session
    from models.preprocess import to_model_input

    tmp_path = smoke_run

    bundle = load_bundle(tmp_path / "bundle")
    m = bundle.manifest
    assert m.labels == ["NORMAL", "PNEUMONIA"] and m.policy.urgent_labels == ["PNEUMONIA"]
    assert m.input == input_contract(64, INPUT_NAME)
    assert {"model.onnx", "roc.png", "MODEL_CARD.md"} <= set(m.files)
    assert [s.split.startswith("validation") for s in m.metrics] == [True, True]
    assert m.input.aspect_range == (0.8, 2.3)
    assert m.audit.max_flip_rate == 1.0 and m.audit.checks == [c.name for c in m.variant("fp32").audit]
    assert m.evaluation.patient_pattern and m.evaluation.aspect_buckets == [1.2, 1.5]
    card = bundle.path_of("MODEL_CARD.md").read_text()
    assert "## Shortcut audits" in card and "squeeze_0.8" in card and "95% interval" in card

    paths = sorted((DATA / "PNEUMONIA").glob("*.jpeg"))[:2] + sorted((DATA / "NORMAL").glob("*.jpeg"))[:2]
    x = np.stack([to_model_input(decode_rgb(p), m.input) for p in paths])
    logits, cam = onnx_session(bundle.path_of("model.onnx")).run(["logits", "cam"], {INPUT_NAME: x})
    assert logits.shape == (4, 2) and cam.shape == (4, 2, 4, 4)
    checkpoint = torch.load(next((tmp_path / "runs").glob("*/checkpoint.pt")), weights_only=True)
    with torch.no_grad():
        want_logits, want_cam = deployable_model(checkpoint)(torch.from_numpy(x))
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(cam, want_cam.numpy(), atol=1e-4)


@needs_data
def test_export_refuses_a_model_over_its_audit_limit_and_keeps_the_old_bundle(smoke_run):
    """An operating point at the median score makes every perturbation flip triages: refused."""
    from models.training.card import AuditFailed, write_bundle

    tmp_path = smoke_run
    before = {p.name: p.read_bytes() for p in (tmp_path / "bundle").iterdir()}
    checkpoint = torch.load(next((tmp_path / "runs").glob("*/checkpoint.pt")), weights_only=True)
    checkpoint["threshold"] = float(np.median(checkpoint["curves"]["clean"][1].numpy()))
    checkpoint["max_flip_rate"] = 0.0
    with pytest.raises(AuditFailed, match=r"refusing to write the bundle: .* flips .* \(allowed 0.0%\)"):
        write_bundle(checkpoint, tmp_path / "bundle", "chest-xray-pneumonia", "9.9.9", log=lambda _: None)
    assert {p.name: p.read_bytes() for p in (tmp_path / "bundle").iterdir()} == before
    assert load_bundle(tmp_path / "bundle").manifest.version != "9.9.9"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work folder left


def test_unknown_hold_out_group_is_named():
    from models.training.data import held_out_groups

    assert held_out_groups("normal2, virus") == {"normal2", "virus"}
    with pytest.raises(ValueError, match="unknown group.*adults.*choose from normal-im, normal2, bacteria, virus, wide"):
        held_out_groups("adults,virus")


@needs_data
def test_samples_carry_group_and_original_aspect(samples):
    by_name = {s.path.name: s for s in samples}
    assert by_name["IM-0115-0001.jpeg"].group == "normal-im" and by_name["IM-0115-0001.jpeg"].aspect == 1.11
    assert by_name["IM-0122-0001.jpeg"].aspect is None  # 'unknown' in train_aspect.csv
    assert {s.group for s in samples} == {"normal-im", "normal2", "bacteria", "virus"}
    assert sum(s.aspect is not None for s in samples) > 4000


@needs_data
def test_bundle_ships_golden_inputs_that_the_self_test_checks(smoke_run, tmp_path):
    """Real validation images with the FP32 probabilities stored at export; doctor's self-test runs
    every variant on them, and stored outputs that no longer match are a failure."""
    import shutil

    from device.runtime.variant_check import selftest_variants
    from models.bundle import file_entry, write_manifest
    from models.metrics import softmax
    from models.training.export import INPUT_NAME, onnx_session

    bundle = load_bundle(smoke_run / "bundle")
    assert bundle.manifest.golden == "golden.npz"
    with np.load(bundle.path_of("golden.npz"), allow_pickle=False) as golden:
        inputs, stored = golden["inputs"], golden["probabilities"]
    assert inputs.shape == (8, 1, 64, 64) and inputs.dtype == np.float16 and np.unique(inputs).size > 100
    logits = onnx_session(bundle.path_of("model.onnx")).run(["logits"], {INPUT_NAME: inputs.astype(np.float32)})[0]
    np.testing.assert_allclose(softmax(logits.astype(np.float64)), stored, atol=1e-6)
    assert all(v["ok"] for v in selftest_variants(bundle))

    copy = tmp_path / "bundle"
    shutil.copytree(bundle.root, copy)
    wrong = np.eye(2)[(stored[:, 1] < 0.5).astype(int)]  # every stored answer the opposite class, for sure
    np.savez_compressed(copy / "golden.npz", inputs=inputs, probabilities=wrong)
    m = bundle.manifest
    write_manifest(copy, m.model_copy(update={"files": {**m.files, "golden.npz": file_entry(copy / "golden.npz")}}))
    assert not any(v["ok"] for v in selftest_variants(load_bundle(copy)))
