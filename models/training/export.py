"""The deployable model of a checkpoint (BN folded, temperature baked in; dihedral copies and
ensemble members averaged inside the graph), its ONNX export and its check against torch.

`bedside export` (models.training.commands) rebuilds a whole bundle from a checkpoint through
models.training.bundle_writer, the same code path as the end of `bedside train`.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.training.architectures import ResNetCAM, build_model
from models.training.ensemble_graph import Ensemble
from models.training.tta import DihedralAverage

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "cam")


def deployable_model(checkpoint: dict, temperature: float | None = None) -> ResNetCAM:
    """The checkpoint's (EMA) weights with the calibration temperature (default: its own) baked in
    and BN folded."""
    model = build_model(tuple(checkpoint["widths"]), int(checkpoint["blocks"]), int(checkpoint.get("classes", 2)),
                        int(checkpoint.get("channels", 1)))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    model.bake_temperature(float(checkpoint["temperature"]) if temperature is None else temperature)
    return model.fuse()


def member_model(member: dict, temperature: float = 1.0) -> DihedralAverage:
    """One ensemble member as it runs in the graph: its own temperature times `temperature` baked in,
    its dihedral copies (1 for an exam without them) averaged."""
    model = deployable_model(member, float(member["temperature"]) * temperature)
    return DihedralAverage(model, int(member.get("tta", 1))).eval()


def ensemble_model(checkpoint: dict, temperature: float | None = None, head_stages: int | None = None,
                   head_members: Sequence[int] | None = None) -> Ensemble:
    """An ensemble checkpoint's graph; `temperature` (default: the ensemble's own, refitted on the
    averaged member logits) divides the average, baked into every member's head; `head_stages` and
    `head_members` as in Ensemble."""
    t = float(checkpoint["temperature"]) if temperature is None else temperature
    members = checkpoint["members"]
    return Ensemble([member_model(m, t) for m in members], [int(m["size"]) for m in members],
                    head_stages=head_stages, head_members=head_members).eval()


def full_side_members(checkpoint: dict) -> list[int]:
    """The indices of the members that see the graph's full input side (every member of a graph
    whose members share one side; the single model of a checkpoint without members)."""
    if "members" not in checkpoint:
        return [0]
    sides = [int(m["size"]) for m in checkpoint["members"]]
    return [i for i, s in enumerate(sides) if s == max(sides)]


def deployable(checkpoint: dict) -> torch.nn.Module:
    """What a bundle exports for this checkpoint: an ensemble, a model with its dihedral copies
    averaged (exams whose checkpoints record `tta`), or the plain model."""
    if "members" in checkpoint:
        return ensemble_model(checkpoint)
    model = deployable_model(checkpoint)
    return DihedralAverage(model, int(checkpoint["tta"])).eval() if "tta" in checkpoint else model


def as_ensemble(checkpoint: dict, head_stages: int | None = None, head_members: Sequence[int] | None = None
                ) -> Ensemble:
    """`deployable(checkpoint)` in the ensemble form (a single model is a one-member ensemble, with
    the same logits and CAM): the form extra heads, such as the refusal check, are added to, reading
    the last `head_stages` stages (default every stage) of the members `head_members` (default all)."""
    if "members" in checkpoint:
        return ensemble_model(checkpoint, head_stages=head_stages, head_members=head_members)
    member = DihedralAverage(deployable_model(checkpoint), int(checkpoint.get("tta", 1))).eval()
    return Ensemble([member], [int(checkpoint["size"])], head_stages=head_stages).eval()


def graph_notes(checkpoint: dict) -> str:
    """The fp32 variant's notes: what the graph does beyond the network."""
    if "members" in checkpoint:
        sides = ", ".join(f"{m['size']} px" for m in checkpoint["members"])
        return (f"BatchNorm folded; {len(checkpoint['members'])} members ({sides}) averaged inside the graph, each "
                "seeing the input average-pooled to its side; temperature refitted on the average and baked in")
    if "tta" in checkpoint:
        return f"BatchNorm folded; temperature baked in; {checkpoint['tta']} dihedral copies averaged inside the graph"
    return "BatchNorm folded; calibration temperature baked into the head"


def output_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The graph's outputs: logits and cam, then any extra head an ensemble carries."""
    return tuple(getattr(model, "output_names", OUTPUT_NAMES))


def export_onnx(model: torch.nn.Module, size: int, path: Path, channels: int = 1) -> Path:
    """Single-file ONNX (opset 18) with a dynamic batch axis, via the dynamo exporter.

    The dynamo path (torch's default since 2.9) gives a clean graph for this plain model; the
    legacy TorchScript exporter is deprecated. `external_data=False` keeps the weights inside the
    .onnx file (the model is well under the 2 GB protobuf limit).
    """
    model = copy.deepcopy(model).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    # Without torchvision the exporter logs one "Skipping torchvision::..." line per op at WARNING.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # torch 2.13's own exporter internals trip their pytree deprecation; harmless, not ours.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        program = torch.onnx.export(
            model,
            (torch.zeros(1, channels, size, size),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(output_names(model)),
            dynamic_shapes={"x": {0: batch}},
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    return path


def onnx_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def max_abs_diff(model: torch.nn.Module, path: Path, x: torch.Tensor) -> dict[str, float]:
    """Largest |onnxruntime - torch| over `x`, per output."""
    names = output_names(model)
    got = onnx_session(path).run(list(names), {INPUT_NAME: x.float().numpy()})
    want = [t.numpy() for t in model.eval()(x.float())]
    return {name: float(np.abs(g - w).max()) for name, g, w in zip(names, got, want)}
