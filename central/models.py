"""What the node serves: each bundle checked (hashes, then the golden self-test on the backend that
will serve it) and turned into the tensors and inference function Triton is given.

A bundle that fails a check is refused with its reason and the others are served; the node never
serves a model it has not seen compute the bundle's own golden outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pytriton.proxy.types import Request

from device.runtime import registry
from device.runtime.base import Backend, ModelIO, RuntimeFailure, RuntimeUnavailable, VariantFile
from device.runtime.variant_check import compare, probabilities, reference_outputs
from device.triton import identity
from device.triton.graph import GraphError, check_contract, graph_io
from device.triton.versions import VersionError, triton_version
from models.bundle import Bundle, BundleError, load_bundle

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One bundle's variant, loaded once per Triton instance, with what Triton must know of it."""

    bundle: Bundle
    backend_name: str
    precision: str
    file: str
    version: int
    backends: list[Backend]
    input_shape: tuple[int, ...]
    outputs: dict[str, tuple[np.dtype, tuple[int, ...]]]  # name -> element type, wire shape without the batch axis
    selftest: dict = field(default_factory=dict)
    identity: bytes = b""  # which variant file this is (device/triton/identity.py), answered on request

    @property
    def name(self) -> str:
        return self.bundle.manifest.id

    @property
    def input_name(self) -> str:
        return self.bundle.manifest.input.tensor_name

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


class Refused(Exception):
    """A bundle the node will not serve; the message says why."""


def load_model(path: Path, backend: str, precision: str, instances: int) -> ServedModel:
    """The bundle at ``path``, verified and self-tested, loaded ``instances`` times. Raises Refused."""
    try:
        bundle = load_bundle(path)  # every file's sha256 against the manifest
        version = triton_version(bundle.manifest.version)
        cls = registry.require(backend)
        variant = bundle.manifest.variant(precision, cls.target)
        inputs, outputs = graph_io(bundle.path_of(variant.file))
        check_contract(bundle, inputs, outputs)
    except (BundleError, VersionError, RuntimeUnavailable, GraphError) as exc:
        raise Refused(f"{path}: {exc}") from None
    m = bundle.manifest
    # Every output the graph has, the declared ones among them (checked above): what kiosks may ask for.
    io = ModelIO(m.input.tensor_name, tuple(o.name for o in outputs), inputs[0].dims)
    loaded: list[Backend] = []
    try:
        for _ in range(instances):
            loaded.append(cls(VariantFile.of(bundle, variant), io, 1))
        x, want = reference_outputs(bundle)
        outputs = loaded[0].run(x)
        check = compare(probabilities(lambda _: outputs, m, x), want, m, variant.precision)
    except (RuntimeFailure, RuntimeUnavailable) as exc:
        _close(loaded)
        raise Refused(f"{m.id} {m.version}: {backend} cannot run {variant.file}: {exc}") from None
    if not check["ok"]:
        _close(loaded)
        raise Refused(f"{m.id} {m.version}: {variant.file} on {backend} fails the golden self-test "
                      f"(max |dp| {check['max_prob_diff']:.1e}, allowed {check['tolerance']:.0e}; "
                      f"agreement {check['agreement']:.0%})")
    specs = {name: (value.dtype, tuple(value.shape[1:]) or (1,)) for name, value in outputs.items()}
    return ServedModel(bundle, backend, variant.precision, variant.file, version, loaded, io.input_shape, specs,
                       {k: check[k] for k in ("max_prob_diff", "tolerance", "agreement")},
                       identity.encoded(bundle, variant))


def load_models(paths: list[Path], backend: str, precision: str, instances: int) -> tuple[list[ServedModel], list[str]]:
    """The models that passed, and one line per bundle refused (a second bundle of an exam is refused)."""
    served: list[ServedModel] = []
    refused: list[str] = []
    for path in paths:
        try:
            model = load_model(path, backend, precision, instances)
        except Refused as exc:
            refused.append(str(exc))
            continue
        if any(s.name == model.name for s in served):
            model.close()
            refused.append(f"{path}: {model.name} is already served from another bundle folder")
            continue
        served.append(model)
    return served, refused


def _close(backends: list[Backend]) -> None:
    for backend in backends:
        backend.close()


def infer_function(model: ServedModel, backend: Backend):
    """The callable Triton's Python backend hands each dynamic batch to (one per model instance):
    the requests' input tensors run as one batch, and each request answered with only the outputs
    it asked for (every output when it named none), as the graph gives them; the variant's identity
    only to a request that asks for it (a kiosk checking the node). A value per image (shape [N])
    travels as [N, 1]: pytriton's tensors need a size per item.

    Why not pytriton's ``@batch``: it hands every output of the batch back to the stub for each
    request, and pytriton copies each through shared memory before Triton drops the ones not
    asked for; the identity's byte strings alone added about 1 ms to a study's round trip."""
    name = model.input_name
    every = (*model.outputs, identity.OUTPUT)

    def infer(requests: list[Request]) -> list[dict[str, np.ndarray]]:
        batch_input = np.concatenate([r.data[name] for r in requests])
        outputs = {k: v.reshape(len(v), -1) if v.ndim == 1 else v for k, v in backend.run(batch_input).items()}
        answers = []
        start = 0
        for request in requests:
            size = len(request.data[name])
            wanted = request.requested_output_names or every
            answer = {k: np.ascontiguousarray(outputs[k][start:start + size]) for k in wanted if k in outputs}
            if identity.OUTPUT in wanted:
                answer[identity.OUTPUT] = np.full((size, 1), model.identity, dtype=object)
            answers.append(answer)
            start += size
        return answers

    return infer
