"""The shipped bundles' refusal checks on real images: each refuses the other exam's images and real
CT/MR frames (kinds its negatives drew from, but fresh images and views), and accepts its own
validation images at about the rate it was calibrated for. Run as the device runs them: the bundle's
ONNX graph, its input contract, and the manifest's thresholds with the device's rule (refused when
any check's output is above its threshold)."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from models.bundle import default_bundles_dir, load_bundle  # noqa: E402
from models.preprocess import to_model_input  # noqa: E402
from models.training import negatives as ng  # noqa: E402
from models.training.images import decode_rgb  # noqa: E402
from models.training.registry import recipe  # noqa: E402

VALIDATION_IMAGES = 300
OTHER_IMAGES = 150


def _refused(bundle, images: list[np.ndarray]) -> np.ndarray:
    m = bundle.manifest
    session = ort.InferenceSession(str(bundle.path_of(m.variant("fp32").file)), providers=["CPUExecutionProvider"])
    x = np.stack([to_model_input(img, m.input) for img in images]).astype(np.float32)
    names = [c.output for c in m.refusal.checks]
    runs = [session.run(names, {m.input.tensor_name: x[i : i + 64]}) for i in range(0, len(x), 64)]
    scores = np.concatenate([np.stack([np.asarray(v).reshape(-1) for v in run], 1) for run in runs])
    return (scores > np.array([c.threshold for c in m.refusal.checks])).any(1)


def _sample(samples: list, n: int, seed: int) -> list[np.ndarray]:
    chosen = np.random.default_rng(seed).permutation(len(samples))[:n]
    return [decode_rgb(samples[i].path) for i in sorted(chosen)]


@pytest.mark.parametrize("exam, other", [("chest-xray-pneumonia", "skin-lesion-triage"),
                                         ("skin-lesion-triage", "chest-xray-pneumonia")])
def test_shipped_bundle_refuses_other_kinds_and_keeps_its_own_images(datasets, exam, other):
    bundle = load_bundle(default_bundles_dir() / exam)
    policy = bundle.manifest.refusal
    assert policy is not None, f"the shipped {exam} bundle carries no refusal check"
    own = recipe(exam)
    _, val = own.redraw_split(own.default_data_dir(), bundle.manifest.provenance.split)
    kept = 1 - _refused(bundle, _sample(val, VALIDATION_IMAGES, 1)).mean()
    assert kept >= 1 - 3 * policy.calibrated_refusal_rate, f"{exam} refuses {1 - kept:.1%} of its validation images"

    theirs = recipe(other)
    foreign = _sample(theirs.list_samples(theirs.default_data_dir()), OTHER_IMAGES, 2)
    frames = list(ng.dicom_frames(np.random.default_rng(3), 60, 224, categories=("ct_mr_other",)))
    if exam == ng.CHEST_EXAM:  # the chest exam's colour gate refuses colour before the model: test the model on gray
        foreign, frames = list(ng.to_gray_rgb(np.stack(foreign))), list(ng.to_gray_rgb(np.stack(frames)))
    assert _refused(bundle, foreign).mean() >= 0.95
    assert _refused(bundle, frames).mean() >= 0.95
