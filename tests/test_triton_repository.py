"""``bedside bundle triton``: a Triton model repository per bundle, read back with Triton's own
ModelConfig protobuf (tritonclient) and checked against the ONNX graph it serves (read with onnx,
independently of the writer's ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from central_peer import SHIPPED
from central_support import versioned_copy
from device.cli import main
from device.triton.repository import RepositoryError, write_repository
from device.triton.versions import VersionError, bundle_version, triton_version
from models.bundle import load_bundle, sha256_file
from tiny_bundle import declare_refusal, make_tiny_bundle

ONNX_TYPES = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.FLOAT16: mc.TYPE_FP16}


def read_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def graph_tensors(path: Path) -> dict[str, tuple[int, list[int]]]:
    """name -> (element type, dims after the batch axis; -1 where symbolic), inputs and outputs."""
    graph = onnx.load(str(path)).graph
    found = {}
    for value in [*graph.input, *graph.output]:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        found[value.name] = (ONNX_TYPES[t.elem_type], dims[1:])
    return found


def config_tensors(config: mc.ModelConfig) -> dict[str, tuple[int, list[int]]]:
    return {t.name: (t.data_type, [] if t.HasField("reshape") else list(t.dims)) for t in [*config.input, *config.output]}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["bundle", "triton", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_cpu_model_matches_its_graph(tmp_path, capsys, path):
    rc, out, err = run_cli(capsys, str(path), "--out", str(tmp_path), "--instances", "2")
    assert rc == 0, err
    bundle = load_bundle(path)
    m = bundle.manifest
    model_dir = tmp_path / m.id
    version = triton_version(m.version)
    assert out.strip() == (f"wrote {m.id} {m.version} as Triton model {m.id} version {version} "
                                   f"(onnxruntime_onnx, fp32, cpu x2) in {model_dir}")
    config = read_config(model_dir)
    served = model_dir / str(version) / "model.onnx"
    assert config.name == m.id and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert config_tensors(config) == graph_tensors(served)
    assert [t.name for t in config.input] == [m.input.tensor_name]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    [group] = config.instance_group
    assert (group.kind, group.count) == (mc.ModelInstanceGroup.KIND_CPU, 2)
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert sha256_file(served) == bundle.sha256_of("model.onnx")
    assert config.parameters["bedside_sha256"].string_value == bundle.sha256_of("model.onnx")
    assert {p.name for p in (model_dir / str(version)).iterdir()} == {"model.onnx", "manifest.json", "MODEL_CARD.md"}
    record = json.loads((model_dir / "versions.json").read_text())
    assert record == {str(version): {"bundle_version": m.version, "precision": "fp32", "target": "cpu",
                                     "file": "model.onnx", "sha256": bundle.sha256_of("model.onnx")}}


def test_gpu_model_is_the_qdq_graph_on_tensorrt(tmp_path):
    bundle = load_bundle(SHIPPED[0])
    written = write_repository(bundle, tmp_path, target="gpu")
    config = read_config(written.model_dir)
    variant = bundle.manifest.variant("int8", "gpu")
    served = written.model_dir / str(written.version) / "model.onnx"
    assert sha256_file(served) == bundle.sha256_of(variant.file)
    assert {n.op_type for n in onnx.load(str(served)).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert config_tensors(config) == graph_tensors(served)
    [group] = config.instance_group
    assert (group.kind, group.count) == (mc.ModelInstanceGroup.KIND_GPU, 1)
    [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "INT8"
    assert "int8_calibration_table_name" not in accelerator.parameters  # Q/DQ carries its own scales
    fp16 = read_config(write_repository(bundle, tmp_path / "fp16", target="gpu", precision="fp16").model_dir)
    assert fp16.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP16"


def test_every_output_of_the_graph_is_served(tmp_path):
    """An output a bundle adds (here a score per image, shape [N]) is in the configuration, as
    Triton writes a one-value tensor: dims [1] reshaped to []."""
    bundle = load_bundle(make_tiny_bundle(tmp_path / "tiny", extra_output="refusal_score"))
    config = read_config(write_repository(bundle, tmp_path / "repo").model_dir)
    [score] = [o for o in config.output if o.name == "refusal_score"]
    assert list(score.dims) == [1] and score.HasField("reshape") and list(score.reshape.shape) == []
    assert config_tensors(config) == graph_tensors(bundle.path_of("model.onnx"))


def test_a_declared_refusal_output_the_graph_lacks_is_refused(tmp_path, capsys):
    """The manifest's refusal check reads an output the graph does not have: no repository is written."""
    root = declare_refusal(make_tiny_bundle(tmp_path / "tiny", extra_output="refusal_score"), "ood_score")
    rc, _, err = run_cli(capsys, str(root), "--out", str(tmp_path / "repo"))
    assert rc == 1 and "the graph lacks the declared outputs ['ood_score']" in err
    assert not (tmp_path / "repo" / "tiny-test" / "config.pbtxt").exists()


def test_versions_accumulate_and_never_change(tmp_path):
    first = load_bundle(SHIPPED[0])
    major, minor, _ = first.manifest.version.split(".")
    later = f"{major}.{int(minor) + 1}.0"
    second = load_bundle(versioned_copy(SHIPPED[0], tmp_path / "next", later))
    write_repository(first, tmp_path / "repo")
    written = write_repository(second, tmp_path / "repo")
    folders = sorted(p.name for p in written.model_dir.iterdir() if p.is_dir())
    assert folders == [str(triton_version(first.manifest.version)), str(triton_version(later))]
    record = json.loads((written.model_dir / "versions.json").read_text())
    assert {v["bundle_version"] for v in record.values()} == {first.manifest.version, later}
    with pytest.raises(RepositoryError, match="already holds another model"):
        write_repository(first, tmp_path / "repo", precision="int8")


def test_version_mapping_keeps_order_and_reads_back():
    assert triton_version("2.0.0") == 2_000_000 and bundle_version(2_000_000) == "2.0.0"
    versions = ["0.0.1", "0.1.0", "1.0.0", "1.2.3", "1.10.0", "10.0.999"]
    assert sorted(versions, key=triton_version) == versions
    assert all(bundle_version(triton_version(v)) == v for v in versions)
    with pytest.raises(VersionError):
        triton_version("1.1000.0")
    with pytest.raises(VersionError):
        triton_version("0.0.0")


def test_refuses_a_graph_that_breaks_the_contract(tmp_path, capsys):
    """A bundle whose manifest declares an input size its graph does not take."""
    root = make_tiny_bundle(tmp_path / "tiny")
    data = json.loads((root / "manifest.json").read_text())
    data["input"]["height"] = 64
    (root / "manifest.json").write_text(json.dumps(data))
    rc, out, err = run_cli(capsys, str(root), "--out", str(tmp_path / "repo"))
    assert rc == 1
    assert "the graph's inputs" in err and "are not the contract's" in err
    assert not (tmp_path / "repo" / "tiny-test" / "config.pbtxt").exists()
