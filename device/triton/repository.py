"""``bedside bundle triton``: a bundle variant as a model in an NVIDIA Triton model repository.

    REPO/<exam id>/config.pbtxt          Triton's ModelConfig, written by its own protobuf (tritonclient)
    REPO/<exam id>/versions.json         which bundle version, variant and sha256 each version folder holds
    REPO/<exam id>/<version>/model.onnx  the variant's graph under Triton's default file name
    REPO/<exam id>/<version>/manifest.json, MODEL_CARD.md   the bundle's contract and card, for the record

The configuration comes from the graph itself (every input and output, their element types and
dims, read with ONNX Runtime) checked against the bundle's input contract, so outputs a bundle adds
later are served without a change here. CPU variants run on Triton's ONNX Runtime backend, one
single-threaded instance per core (as the kiosk runs them); GPU variants on the same backend with
the TensorRT execution accelerator at the variant's precision (the Q/DQ INT8 graph carries its own
scales, so no calibration table). Several bundle versions can share one repository: each gets its
folder and a line in versions.json, and Triton's default version policy serves the newest.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from device.triton import identity
from device.triton.graph import TensorSpec, check_contract, graph_io
from device.triton.versions import triton_version
from models import atomic
from models.bundle import Bundle, BundleError, Variant, sha256_file

MODEL_FILE = "model.onnx"  # Triton's default_model_filename for onnxruntime_onnx
CONFIG_FILE = "config.pbtxt"
VERSIONS_FILE = "versions.json"
RECORD_FILES = ("manifest.json", "MODEL_CARD.md")
PLATFORM = "onnxruntime_onnx"
GPU_PRECISION_ORDER = ("int8", "fp16", "fp32")  # the Q/DQ graph first: TensorRT runs it at INT8
TENSORRT_PRECISION = {"int8": "INT8", "fp16": "FP16", "fp32": "FP32"}
MAX_QUEUE_DELAY_US = 2000  # a study waits at most 2 ms for company in the dynamic batcher
class RepositoryError(Exception):
    """A repository that cannot be written as asked; the message says why."""


@dataclass(frozen=True)
class Written:
    model_dir: Path
    name: str
    version: int
    variant: Variant
    target: str
    instances: int

    def line(self, bundle_version: str) -> str:
        where = f"{self.target} x{self.instances}" if self.target == "cpu" else "gpu, TensorRT accelerator"
        return (f"wrote {self.name} {bundle_version} as Triton model {self.name} version {self.version} "
                f"({PLATFORM}, {self.variant.precision}, {where}) in {self.model_dir}")


def model_config_pb2():
    """Triton's ModelConfig protobuf module, shipped with tritonclient's gRPC client."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise RepositoryError(f"writing a Triton repository needs tritonclient with gRPC support ({exc}): "
                              "install the 'fleet' extra (pip install 'bedside[fleet]')") from None
    return model_config_pb2


def choose_variant(bundle: Bundle, target: str, precision: str | None) -> Variant:
    """The variant to serve: the one asked for, else FP32 on CPUs (the reference) and the first of
    INT8 (Q/DQ), FP16, FP32 on GPUs."""
    m = bundle.manifest
    if precision is not None:
        return m.variant(precision, target)
    order = GPU_PRECISION_ORDER if target == "gpu" else ("fp32",)
    have = {v.precision for v in m.variants if target in v.targets}
    return m.variant(next(p for p in order if p in have), target)


def build_config(bundle: Bundle, variant: Variant, target: str, inputs: list[TensorSpec],
                 outputs: list[TensorSpec], max_batch: int, instances: int, engine_cache: Path | None):
    """The ModelConfig message for a variant: its tensors, dynamic batching, instances and accelerator."""
    mc = model_config_pb2()
    m = bundle.manifest
    config = mc.ModelConfig(name=m.id, platform=PLATFORM, max_batch_size=max_batch)
    for spec, field in [(s, config.input) for s in inputs] + [(s, config.output) for s in outputs]:
        tensor = field.add(name=spec.name, data_type=mc.DataType.Value(spec.data_type))
        tensor.dims.extend(spec.dims or (1,))
        if not spec.dims:  # one value per image (shape [N]): Triton's way is dims [1] reshaped to []
            tensor.reshape.SetInParent()
    config.dynamic_batching.preferred_batch_size.extend(b for b in (4, 8, 16, 32) if b <= max_batch)
    config.dynamic_batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    group = config.instance_group.add(count=instances)
    if target == "gpu":
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = TENSORRT_PRECISION[variant.precision]
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
        if engine_cache is not None:
            accelerator.parameters["trt_engine_cache_enable"] = "1"
            accelerator.parameters["trt_engine_cache_path"] = str(engine_cache)
    else:
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        # One thread per instance, as the kiosk runs each study: instances side by side use the cores.
        config.parameters["intra_op_thread_count"].string_value = "1"
        config.parameters["inter_op_thread_count"].string_value = "1"
    # Which variant the model runs, for kiosks to check (device/triton/identity.py; the backend ignores them).
    declared = identity.declaration(bundle, variant)
    for key, parameter in identity.PARAMETERS.items():
        config.parameters[parameter].string_value = declared[key]
    return config


def config_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def write_repository(bundle: Bundle, out: Path, target: str = "cpu", precision: str | None = None,
                     max_batch: int = 16, instances: int = 1, engine_cache: Path | None = None) -> Written:
    """Write (or add a version to) the Triton model of ``bundle`` in the repository ``out``."""
    if target not in ("cpu", "gpu"):
        raise RepositoryError(f"target {target!r} is not cpu or gpu")
    if max_batch < 1 or instances < 1:
        raise RepositoryError("max_batch and instances must be at least 1")
    m = bundle.manifest
    variant = choose_variant(bundle, target, precision)
    source = bundle.path_of(variant.file)
    inputs, outputs = graph_io(source)
    check_contract(bundle, inputs, outputs)
    config = build_config(bundle, variant, target, inputs, outputs, max_batch, instances, engine_cache)
    version = triton_version(m.version)
    model_dir = Path(out) / m.id
    model_dir.mkdir(parents=True, exist_ok=True)
    record = _record(model_dir)
    entry = {"bundle_version": m.version, "precision": variant.precision, "target": target, "file": variant.file,
             "sha256": bundle.sha256_of(variant.file)}
    if str(version) in record and record[str(version)]["sha256"] != entry["sha256"]:
        held = record[str(version)]
        raise RepositoryError(f"{model_dir}: version {version} ({m.version}) already holds another model "
                              f"({held['precision']} for {held['target']}, sha256 {held['sha256'][:12]}...): a version "
                              "never changes; write another variant or target into a repository of its own")
    _write_version(bundle, source, model_dir / str(version))
    record[str(version)] = entry
    atomic.write_bytes(model_dir / VERSIONS_FILE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    atomic.write_bytes(model_dir / CONFIG_FILE, config_text(config).encode())
    return Written(model_dir, m.id, version, variant, target, instances)


def _record(model_dir: Path) -> dict[str, dict]:
    path = model_dir / VERSIONS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path}: cannot read the version record: {exc}") from None


def _write_version(bundle: Bundle, source: Path, version_dir: Path) -> None:
    """The version folder, staged beside it and renamed into place: Triton never sees half of it."""
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=version_dir.parent) as tmp:
        staged = Path(tmp) / version_dir.name
        staged.mkdir()
        shutil.copyfile(source, staged / MODEL_FILE)
        if sha256_file(staged / MODEL_FILE) != bundle.sha256_of(source.name):
            raise BundleError(f"{source}: the copy does not match the manifest's sha256")
        for name in RECORD_FILES:
            if bundle.path_of(name).is_file():
                shutil.copyfile(bundle.path_of(name), staged / name)
        if version_dir.exists():
            shutil.rmtree(version_dir)
        staged.rename(version_dir)
        atomic.fsync_directory(version_dir.parent)
