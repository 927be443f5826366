"""The optimization stage on the real shipped model: gated INT8/FP16 variants, written safely."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from device.runtime.triager import Triager
from models.bundle import load_bundle
from optimize import gate as gate_module
from optimize.errors import OptimizeError
from optimize.gate import MAX_KERNEL_DEVIATION, MAX_REFUSAL_CHANGE, gate, kernel_check, refusal_check
from optimize.heldout import default_data_dir, redraw_split, validation_batch
from optimize.ort_eval import logits
from optimize.quantize import check_seven_bit_weights, check_symmetric, input_side, only_feeding
from optimize.variants import add_variant

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "bundles" / "chest-xray-pneumonia"
BUNDLES = ROOT / "models" / "bundles"


def test_gate_passes_identical_and_names_each_failure():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    fp32 = np.column_stack([np.zeros(500), (y * 2 - 1) * 2 + rng.normal(0, 1.5, 500)])
    same = gate("v", fp32, fp32.copy(), y, urgent=[1], threshold=0.5)
    assert same.passed and same.agreement == 1.0 and same.max_logit_deviation == 0.0
    noisy = gate("v", fp32, fp32 + rng.normal(0, 1.0, fp32.shape), y, urgent=[1], threshold=0.5)
    assert not noisy.passed
    assert any("AUC drops" in r for r in noisy.reasons) and any("agrees with FP32" in r for r in noisy.reasons)


@pytest.fixture
def bundle_copy(tmp_path, datasets):
    if not SHIPPED.is_dir():
        pytest.skip("the shipped bundle is missing")
    dst = tmp_path / "bundle"
    shutil.copytree(SHIPPED, dst)
    return dst


@pytest.fixture
def train_dir(datasets):
    path = datasets / "chest-xray" / "train"
    if not path.is_dir():
        pytest.skip(f"no training images at {path}")
    return path


def test_kernel_check_refuses_kernels_that_do_not_compute_the_graph():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    as_written = np.column_stack([np.zeros(200), rng.normal(0, 2, 200)])
    judged = gate("v", as_written, as_written, y, urgent=[1], threshold=0.5)
    rounding = kernel_check(judged, as_written, as_written + 0.01)
    assert rounding.passed and rounding.kernel_deviation == pytest.approx(0.01)
    assert rounding.manifest_entry()["max_kernel_deviation"] == MAX_KERNEL_DEVIATION
    overflow = as_written.copy()
    overflow[3, 1] += 2.6  # what 16-bit overflow did to the 8-bit CPU graph on an AVX2 CPU
    refused = kernel_check(judged, as_written, overflow)
    assert not refused.passed and refused.kernel_deviation == pytest.approx(2.6)
    assert "do not compute this graph" in refused.reasons[0] and "2.60" in refused.reasons[0]
    assert "kernel_deviation" not in judged.manifest_entry()  # a GPU graph is judged as written only


def test_refusal_check_refuses_a_variant_that_changes_refusal_decisions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    fp32 = np.column_stack([np.zeros(200), rng.normal(0, 2, 200)])
    judged = gate("v", fp32, fp32, y, urgent=[1], threshold=0.5)
    decisions = np.r_[np.zeros(500, bool), np.ones(500, bool)]
    changed = decisions.copy()
    changed[:10] = True  # 1.0% of the images: at the limit
    kept = refusal_check(judged, decisions, changed)
    assert kept.passed and kept.refusal_changed == pytest.approx(MAX_REFUSAL_CHANGE) and kept.refusal_n == 1000
    assert kept.manifest_entry()["max_refusal_change"] == MAX_REFUSAL_CHANGE
    changed[10] = True
    refused = refusal_check(judged, decisions, changed)
    assert not refused.passed and "refusal decision on 1.10%" in refused.reasons[0]
    assert "refusal_changed" not in judged.manifest_entry()  # a bundle without a refusal check


@pytest.mark.parametrize("exam", ["chest-xray-pneumonia", "skin-lesion-triage"])
def test_shipped_variants_keep_the_refusal_check_in_float(exam):
    """The refusal check's own nodes (feature statistics, distances, head) are left in float in the
    INT8 graphs and in FP32 in the FP16 graph; every variant kept FP32's refusal decisions."""
    m = load_bundle(BUNDLES / exam).manifest
    if m.refusal is None:
        pytest.skip(f"the shipped {exam} bundle has no refusal check")
    fp32 = BUNDLES / exam / m.variant("fp32").file
    refusal_nodes = set(only_feeding(fp32, tuple(c.output for c in m.refusal.checks)))
    assert any(n for n in refusal_nodes)
    for v in m.variants:
        if v.precision == "fp32":
            continue
        graph = onnx.load(str(BUNDLES / exam / v.file)).graph
        producers = {o: n for n in graph.node for o in n.output}
        ops = [n for n in graph.node if n.name in refusal_nodes and n.op_type == "MatMul"]
        assert ops, v.file
        for node in ops:  # computes in float: no DequantizeLinear in front of it, no Cast but to float32
            for name in (i for i in node.input if i in producers):
                before = producers[name]
                assert before.op_type != "DequantizeLinear", (v.file, node.name)
                if before.op_type == "Cast":
                    assert onnx.helper.get_attribute_value(before.attribute[0]) == onnx.TensorProto.FLOAT
        assert v.gate["refusal_changed"] <= MAX_REFUSAL_CHANGE


@pytest.mark.parametrize("exam", ["chest-xray-pneumonia", "skin-lesion-triage"])
def test_shipped_cpu_int8_gate_reproduces_on_this_cpu(exam, datasets):
    """The gate judges a Q/DQ graph as written (quantize, dequantize, float convolution), the
    arithmetic TensorRT and int32 (VNNI) kernels compute: the CPU graph's figures in the manifest,
    measured when it was made, come out the same here whatever this CPU's integer kernels do (the
    TensorRT graph's are computed the same way)."""
    bundle = load_bundle(BUNDLES / exam)
    m = bundle.manifest
    data_dir = default_data_dir(bundle)
    if not data_dir.is_dir():
        pytest.skip(f"no training images at {data_dir}")
    x, y = validation_batch(bundle, redraw_split(bundle, data_dir))
    fp32 = logits(bundle.path_of(m.variant("fp32").file), m.input.tensor_name, m.outputs.logits, x, 2)
    v = m.variant("int8", "cpu")
    as_written = logits(bundle.path_of(v.file), m.input.tensor_name, m.outputs.logits, x, 2, fused=False)
    result = gate(v.file, fp32, as_written, y, m.urgent_indices, m.policy.operating_point.threshold)
    assert result.n == v.gate["n"] and result.agreement == pytest.approx(v.gate["agreement"], abs=1e-6)
    assert result.max_logit_deviation == pytest.approx(v.gate["max_logit_deviation"], abs=1e-3)
    assert result.auc_variant == pytest.approx(v.gate["auc_variant"], abs=1e-4)  # float rounding may swap a tie


@pytest.mark.parametrize("exam", ["chest-xray-pneumonia", "skin-lesion-triage"])
def test_shipped_cpu_int8_uses_seven_bit_weights(exam):
    """x86 CPUs without VNNI add pairs of uint8 x int8 products in 16 bits: the CPU graph's weights
    stay within +-64 so that the sum always fits; the GPU graph (TensorRT adds in 32 bits) uses 8."""
    m = load_bundle(BUNDLES / exam).manifest
    cpu = BUNDLES / exam / m.variant("int8", "cpu").file
    check_seven_bit_weights(cpu)
    graph = onnx.load(str(cpu)).graph
    initializers = {t.name for t in graph.initializer}
    float_weights = [n.name for n in graph.node if n.op_type == "Conv" and n.input[1] in initializers]
    first = [n for n in input_side(BUNDLES / exam / m.variant("fp32").file)]
    assert float_weights and set(float_weights) <= set(first)  # each member's first convolution only
    assert len(float_weights) == max(1, len(m.ensemble))
    gpu = [v for v in m.variants if v.precision == "int8" and "gpu" in v.targets]
    if gpu:  # a GPU INT8 graph (symmetric, 8-bit weights) where it passed the gate: never a CPU target
        assert gpu[0].targets == ["gpu"]
        with pytest.raises(OptimizeError, match="more than 7 bits"):
            check_seven_bit_weights(BUNDLES / exam / gpu[0].file)


@pytest.mark.slow  # quantizes a copy of the shipped chest bundle (INT8 both recipes, FP16) and gates each: ~2-4 min
def test_int8_and_fp16_variants_pass_the_gate_and_run(bundle_copy, train_dir):
    outcome = add_variant(bundle_copy, "int8", train_dir, calibration_images=300, method="minmax")  # as shipped
    assert outcome.accepted and not outcome.rejected
    assert sorted(tuple(c.targets) for c in outcome.accepted) == [("cpu",), ("gpu",)]
    outcome = add_variant(bundle_copy, "fp16", train_dir, calibration_images=100)
    assert [c.precision for c in outcome.accepted] == ["fp16"]
    bundle = load_bundle(bundle_copy)  # every file hash verifies
    m = bundle.manifest
    gpu_int8 = m.variant("int8", "gpu")
    check_symmetric(bundle.path_of(gpu_int8.file))  # TensorRT-compatible
    cpu_int8 = m.variant("int8", "cpu")
    check_seven_bit_weights(bundle.path_of(cpu_int8.file))  # no 16-bit overflow on x86 without VNNI
    assert cpu_int8.gate["kernel_deviation"] <= MAX_KERNEL_DEVIATION  # this CPU's kernels compute the graph
    for v in m.variants:
        if v.precision != "fp32":
            assert v.gate["passed"] is True and v.gate["auc_drop"] <= 0.002 and v.gate["agreement"] >= 0.995
            if m.refusal is not None:  # the refusal decisions kept, on validation and negatives
                assert v.gate["refusal_changed"] <= MAX_REFUSAL_CHANGE and v.gate["refusal_n"] > v.gate["n"]
        assert [c.name for c in v.audit if c.group is None] == m.audit.checks  # as the manifest declares
        assert max(c.flip_rate for c in v.audit) <= m.audit.max_flip_rate
        if v.precision != "fp32" and m.monitoring is not None:  # its own model scores for the drift monitor
            assert {s.name for s in v.monitoring} == {s.name for s in m.monitoring.signals
                                                       if not s.name.startswith("image.")}
            assert all(sum(s.urgent) + sum(s.other) == m.monitoring.n for s in v.monitoring)
    fp16 = onnx.load(str(bundle.path_of(m.variant("fp16", "gpu").file)))
    assert {i.type.tensor_type.elem_type for i in fp16.graph.input} == {onnx.TensorProto.FLOAT}
    assert "report.html" in m.files and "<svg" in (bundle_copy / "report.html").read_text()
    assert "Optimized variants" in (bundle_copy / "MODEL_CARD.md").read_text()
    result, _ = Triager(bundle, precision="int8", threads=1).triage_file(
        next((train_dir / "PNEUMONIA").glob("*.jpeg"))
    )
    assert result.model.precision == "int8" and result.model.sha256 == bundle.sha256_of(m.variant("int8").file)


def test_a_variant_that_fails_the_gate_is_not_added(bundle_copy, train_dir, monkeypatch):
    before = (bundle_copy / "manifest.json").read_text()
    files_before = sorted(p.name for p in bundle_copy.iterdir())
    monkeypatch.setattr(gate_module, "MIN_AGREEMENT", 1.01)
    outcome = add_variant(bundle_copy, "fp16", train_dir, calibration_images=50)
    assert not outcome.accepted and "agrees with FP32" in outcome.rejected[0].result.reasons[0]
    assert outcome.rejected[0].refused == list(outcome.rejected[0].result.reasons)
    assert (bundle_copy / "manifest.json").read_text() == before
    assert sorted(p.name for p in bundle_copy.iterdir()) == files_before


def test_a_variant_over_the_audit_limit_is_not_added(bundle_copy, train_dir):
    """The same audits as at export, on each candidate, overall and on the audit group the manifest
    declares: with no flip allowed, FP16 is refused (INT8's audits run in the test above; FP16 has one
    candidate and no calibration, so this one is quick)."""
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["audit"]["max_flip_rate"] = 0.0
    data["audit"]["group"] = {"name": "NORMAL2 normals", "file_pattern": "^NORMAL2-IM-", "label": "NORMAL",
                              "checks": ["squeeze_0.8", "border_crop"]}
    path.write_text(json.dumps(data))
    before = path.read_text()
    outcome = add_variant(bundle_copy, "fp16", train_dir)
    assert not outcome.accepted and outcome.rejected
    assert all(c.result.passed and max(a.flip_rate for a in c.audit) > 0 for c in outcome.rejected)
    assert all(c.refused and all("(allowed 0.0%)" in r for r in c.refused) for c in outcome.rejected)
    held = redraw_split(load_bundle(bundle_copy), train_dir)
    n_group = sum(s.path.name.startswith("NORMAL2-IM-") and s.label == 0 for s in held.val)
    for c in outcome.rejected:
        grouped = [a for a in c.audit if a.group == "NORMAL2 normals"]
        assert [a.name for a in grouped] == ["squeeze_0.8", "border_crop"] and {a.n for a in grouped} == {n_group}
        assert [r for r in c.refused if "NORMAL2 normals" in r] == [
            f"{a.name} flips {a.flip_rate:.1%} of NORMAL2 normals (allowed 0.0%)" for a in grouped if a.flip_rate > 0]
    assert path.read_text() == before


def test_the_optimizer_redraws_splits_without_torch(datasets):
    """The `optimize` extra brings onnx, not torch: finding the exam's recipe and redrawing its split
    and calibration images must not need it (torch is made unimportable in that process)."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from models.bundle import default_bundles_dir, load_bundle\n"
        "from optimize.heldout import calibration_batch, default_data_dir, redraw_split\n"
        "import optimize.command, optimize.variants\n"
        "for exam in ('chest-xray-pneumonia', 'skin-lesion-triage'):\n"
        "    bundle = load_bundle(default_bundles_dir() / exam)\n"
        "    held = redraw_split(bundle, default_data_dir(bundle))\n"
        "    print(exam, len(held.val), calibration_batch(bundle, held, 4, 0).shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.splitlines() == ["chest-xray-pneumonia 862 (4, 1, 128, 128)", "skin-lesion-triage 1198 (4, 3, 112, 112)"]


def test_the_split_is_redrawn_by_the_exam_that_drew_it(bundle_copy, datasets):
    """The split method the manifest records names the exam whose recipe redraws it; one no exam
    draws is refused in plain words."""
    skin = load_bundle(BUNDLES / "skin-lesion-triage")
    split = skin.manifest.provenance.split
    held = redraw_split(skin, datasets / "dermatology" / "train")
    assert (len(held.train), len(held.val)) == (split.train_images, split.val_images)
    assert {s.path.parent.name for s in held.val} == set(skin.manifest.labels)
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["provenance"]["split"]["method"] = "by-voxel"
    path.write_text(json.dumps(data))
    with pytest.raises(OptimizeError, match=r"unknown split method 'by-voxel': no exam draws it \(known: by-patient "
                                            r"\(chest-xray-pneumonia\), by-lesion-stratified \(skin-lesion-triage\)\)"):
        redraw_split(load_bundle(bundle_copy), datasets / "chest-xray" / "train")


def test_quantizing_needs_the_models_own_training_data(bundle_copy, tmp_path):
    (tmp_path / "NORMAL").mkdir()
    with pytest.raises(OptimizeError, match="not the model's training data"):
        add_variant(bundle_copy, "int8", tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "device.cli", "optimize", "--bundle", str(bundle_copy), "--precision", "int8",
         "--calibration", str(tmp_path / "missing")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 1 and "refusing to quantize without" in proc.stderr


def test_bundle_without_a_recorded_split_is_refused(bundle_copy, train_dir):
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["provenance"]["split"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(OptimizeError, match="records no data split"):
        add_variant(bundle_copy, "int8", train_dir)


def test_an_interrupted_run_leaves_the_previous_bundle_valid(bundle_copy, train_dir, monkeypatch):
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["audit"] = None  # the audits' half minute has nothing to do with the write phase this test interrupts
    path.write_text(json.dumps(data))
    before = path.read_text()
    files_before = sorted(p.name for p in bundle_copy.iterdir())

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if the technician pressed Ctrl-C while the report was made

    monkeypatch.setattr("optimize.variants.render", crash)
    with pytest.raises(KeyboardInterrupt):
        add_variant(bundle_copy, "fp16", train_dir, calibration_images=50)
    load_bundle(bundle_copy)  # every hash still verifies
    assert (bundle_copy / "manifest.json").read_text() == before
    assert sorted(p.name for p in bundle_copy.iterdir()) == files_before
