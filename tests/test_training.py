"""Data handling and a smoke training run on real images: train -> calibrate -> export -> bundle."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.bundle import load_bundle, sha256_file  # noqa: E402
from models.data import (  # noqa: E402
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


@needs_data
def test_smoke_train_to_bundle(tmp_path):
    from models import train
    from models.data import input_contract, decode_rgb
    from models.export import INPUT_NAME, deployable_model, onnx_session
    from models.preprocess import to_model_input

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args([
        "--out", str(tmp_path / "bundle"), "--runs-dir", str(tmp_path / "runs"), "--limit", "64",
        "--size", "64", "--epochs", "1", "--stress-copies", "1", "--val-fraction", "0.25", "--no-progress",
    ])
    started = time.time()
    assert train.run(args) == 0
    assert time.time() - started < 60

    bundle = load_bundle(tmp_path / "bundle")
    m = bundle.manifest
    assert m.labels == ["NORMAL", "PNEUMONIA"] and m.policy.urgent_label == "PNEUMONIA"
    assert m.input == input_contract(64, INPUT_NAME)
    assert {"model.onnx", "roc.png", "MODEL_CARD.md"} <= set(m.files)
    assert [s.split.startswith("validation") for s in m.metrics] == [True, True]

    paths = sorted((DATA / "PNEUMONIA").glob("*.jpeg"))[:2] + sorted((DATA / "NORMAL").glob("*.jpeg"))[:2]
    x = np.stack([to_model_input(decode_rgb(p), m.input) for p in paths])
    logits, cam = onnx_session(bundle.path_of("model.onnx")).run(["logits", "cam"], {INPUT_NAME: x})
    assert logits.shape == (4, 2) and cam.shape == (4, 2, 4, 4)
    checkpoint = torch.load(next((tmp_path / "runs").glob("*/checkpoint.pt")), weights_only=True)
    with torch.no_grad():
        want_logits, want_cam = deployable_model(checkpoint)(torch.from_numpy(x))
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(cam, want_cam.numpy(), atol=1e-4)
