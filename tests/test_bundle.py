"""The bundle contract: strict manifest, hashes checked on load, no torch needed to load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from models.bundle import BundleError, Manifest, load_bundle
from tiny_bundle import edit_manifest, make_tiny_bundle, manifest_dict


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_bundle(tmp_path / "tiny")


def test_tiny_bundle_loads(tiny):
    bundle = load_bundle(tiny)
    assert bundle.manifest.labels == ["NORMAL", "PNEUMONIA"]
    assert bundle.manifest.urgent_indices == [1]
    assert bundle.manifest.variant("fp32").file == "model.onnx"


def test_modified_model_file_is_refused_naming_the_file(tiny):
    with open(tiny / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"file model\.onnx does not match the manifest"):
        load_bundle(tiny)


def test_missing_file_is_refused(tiny):
    (tiny / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx listed in the manifest is missing"):
        load_bundle(tiny)


def test_unknown_manifest_key_is_refused(tiny):
    edit_manifest(tiny, surprise=1)
    with pytest.raises(BundleError, match="surprise"):
        load_bundle(tiny)


def test_future_schema_version_is_refused(tiny):
    edit_manifest(tiny, schema_version=2)
    with pytest.raises(BundleError, match="schema_version 2 is not supported"):
        load_bundle(tiny)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"policy": {"urgent_label": "COVID", "operating_point": {
            "threshold": 0.5, "sensitivity": 1, "specificity": 1, "chosen_on": "x", "method": "x"}}},
         "urgent_labels"),
        ({"policy": {"urgent_labels": ["NORMAL", "PNEUMONIA"], "operating_point": {
            "threshold": 0.5, "sensitivity": 1, "specificity": 1, "chosen_on": "x", "method": "x"}}},
         "cannot be every label"),
        ({"labels": ["NORMAL", "PNEUMONIA", "OTHER"]}, "exactly two labels"),
        ({"disclaimer": None}, "disclaimer"),
        ({"labels": ["A", "A"]}, "unique"),
        ({"variants": [{"precision": "fp32", "file": "other.onnx"}]}, "not listed in files"),
        ({"files": {"../escape.onnx": {"sha256": "0" * 64, "bytes": 1}}}, "inside the bundle"),
    ],
)
def test_inconsistent_manifests_are_rejected(change, message):
    data = manifest_dict({"model.onnx": {"sha256": "0" * 64, "bytes": 1}})
    data.update(change)
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(data)


def test_input_contract_needs_one_mean_per_channel():
    data = manifest_dict({"model.onnx": {"sha256": "0" * 64, "bytes": 1}})
    data["input"]["mean"] = [0.5, 0.5, 0.5]
    with pytest.raises(ValidationError, match="one value per channel"):
        Manifest.model_validate(data)


def test_loading_a_bundle_never_imports_torch(tiny):
    code = (
        "import sys, json; from models.bundle import load_bundle; "
        f"load_bundle({str(tiny)!r}); print(json.dumps('torch' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False


def test_one_variant_per_precision_and_target():
    files = {name: {"sha256": "0" * 64, "bytes": 1} for name in ("model.onnx", "a.onnx", "b.onnx")}
    data = manifest_dict(files)
    data["variants"] += [
        {"precision": "int8", "file": "a.onnx", "targets": ["gpu"]},
        {"precision": "int8", "file": "b.onnx", "targets": ["cpu"]},
    ]
    m = Manifest.model_validate(data)
    assert m.variant("int8", "gpu").file == "a.onnx" and m.variant("int8", "cpu").file == "b.onnx"
    with pytest.raises(BundleError, match="no fp16 variant for cpu"):
        m.variant("fp16")
    data["variants"][-1]["targets"] = ["cpu", "gpu"]
    with pytest.raises(ValidationError, match="one variant per precision and target"):
        Manifest.model_validate(data)


def test_a_bundle_naming_one_urgent_label_reads_as_a_group_of_one():
    """Bundles written before multi-class exams (and in the field) say `urgent_label`."""
    data = manifest_dict({"model.onnx": {"sha256": "0" * 64, "bytes": 1}})
    data["policy"]["urgent_label"] = data["policy"].pop("urgent_labels")[0]
    m = Manifest.model_validate(data)
    assert m.policy.urgent_labels == ["PNEUMONIA"] and m.finding == "pneumonia"
    data["policy"]["urgent_labels"] = ["PNEUMONIA"]
    with pytest.raises(ValidationError, match="not both"):
        Manifest.model_validate(data)


def test_urgent_probability_sums_the_urgent_group():
    import numpy as np

    data = manifest_dict({"model.onnx": {"sha256": "0" * 64, "bytes": 1}})
    data.update(labels=["akiec", "bcc", "mel", "nv"], task="multi-class-classification")
    data["policy"].update(urgent_labels=["akiec", "bcc", "mel"], focus_label="mel")
    m = Manifest.model_validate(data)
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.05, 0.95]])
    assert m.urgent_probability(p) == pytest.approx([0.6, 0.05])
    data["policy"]["focus_label"] = "nv"
    with pytest.raises(ValidationError, match="focus_label"):
        Manifest.model_validate(data)


REFUSAL = {
    "checks": [{"name": "feature_distance", "output": "ood", "threshold": 3.5,
                "statistic": "class-conditional Mahalanobis distance on the pooled last-stage features"}],
    "subject": "a chest X-ray",
    "advice": "The model only judges chest radiographs (PA/AP). Check the image or choose another exam.",
    "calibrated_refusal_rate": 0.01,
    "calibrated_on": "validation, first half of patients",
    "measured": [{"data": "validation, second half of patients", "n": 431, "refused": 0.009}],
}


def test_a_refusal_policy_is_read_and_names_every_output():
    data = manifest_dict({"model.onnx": {"sha256": "0" * 64, "bytes": 1}})
    assert Manifest.model_validate(data).refusal is None  # bundles without one behave as before
    data["refusal"] = REFUSAL
    m = Manifest.model_validate(data)
    assert m.refusal.checks[0].threshold == 3.5 and m.refusal.measured[0].n == 431
    assert m.output_names == ("logits", "cam", "ood")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"checks": []}, "at least 1"),
        ({"checks": [REFUSAL["checks"][0], {**REFUSAL["checks"][0], "name": "other"}]}, "distinct outputs"),
        ({"checks": [{**REFUSAL["checks"][0], "output": "logits"}]}, "must differ from the logits"),
        ({"checks": [{**REFUSAL["checks"][0], "threshold": float("nan")}]}, "finite"),
        ({"checks": [{**REFUSAL["checks"][0], "above": True}]}, "above"),
        ({"calibrated_refusal_rate": 1.5}, "calibrated_refusal_rate"),
        ({"subject": ""}, "subject"),
    ],
)
def test_a_malformed_refusal_policy_is_rejected(change, message):
    data = manifest_dict({"model.onnx": {"sha256": "0" * 64, "bytes": 1}})
    data["refusal"] = {**REFUSAL, **change}
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(data)
