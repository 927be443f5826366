"""Shared fixtures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pytest

from models.datasets import datasets_dir


@pytest.fixture(scope="session")
def datasets() -> Path:
    """The shared development datasets; tests that need real images skip where they are absent."""
    root = datasets_dir()
    if not root.is_dir():
        pytest.skip(f"datasets not found at {root}; set BEDSIDE_DATASETS")
    return root


@pytest.fixture
def state_changes(caplog) -> Callable[[], list[tuple[str, str]]]:
    """The capture streams' state changes so far, in order, as (state, reason), read from the log
    records they write for every change."""
    caplog.set_level(logging.DEBUG, logger="device.capture.stream")
    return lambda: [(r.state, r.reason) for r in caplog.records
                    if r.name == "device.capture.stream" and hasattr(r, "state")]


@pytest.fixture(scope="session")
def shipped_chest_resnet():
    """The shipped chest bundle's network as a torch ResNetCAM (BatchNorm already folded), its weights
    read from the bundle's model.onnx: the training checkpoints are not in the repository."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from models.bundle import default_bundles_dir
    from models.training.architectures import ResNetCAM

    graph = onnx.load(str(default_bundles_dir() / "chest-xray-pneumonia" / "model.onnx")).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # The head is exported as a 1x1 convolution: its weight is the only 4-D tensor with 2 outputs.
    head = next(w for w in weights.values() if w.ndim == 4 and w.shape[0] == 2 and w.shape[2:] == (1, 1))
    model = ResNetCAM((16, 32, 64, 128), blocks=1, classes=2, channels=1).eval().fuse()
    state = {k: torch.from_numpy(head[:, :, 0, 0].copy() if k == "fc.weight" else weights[k].copy())
             for k in model.state_dict()}
    model.load_state_dict(state)
    return model
