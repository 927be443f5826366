"""Test-time averaging over flips/rotations, as part of the exported graph.

A lesion has no "up", so the model's answer should not depend on how the dermoscope was held.
Averaging the logits of k dihedral copies (k = 1, 2, 4 or 8) makes it so by construction and
improves ranking; it is inside the ONNX graph, so the device, the optimizer's gate and the
benchmarks all run exactly what was validated. Each copy's CAM is turned back before averaging.
"""

from __future__ import annotations

import torch
from torch import nn

from models.training.architectures import ResNetCAM

# (transpose first, then k quarter turns) covering the dihedral group D4 in an order where the
# first 2 / 4 entries are useful subsets (identity + half turn; the four rotations).
_TRANSFORMS = ((False, 0), (False, 2), (False, 1), (False, 3), (True, 0), (True, 2), (True, 1), (True, 3))


def forward_transform(x: torch.Tensor, transpose: bool, turns: int) -> torch.Tensor:
    if transpose:
        x = x.transpose(2, 3)
    return torch.rot90(x, turns, dims=(2, 3)) if turns else x


def inverse_transform(x: torch.Tensor, transpose: bool, turns: int) -> torch.Tensor:
    if turns:
        x = torch.rot90(x, -turns, dims=(2, 3))
    return x.transpose(2, 3) if transpose else x


class DihedralAverage(nn.Module):
    """forward(x) -> (mean logits, mean CAM) over the first `copies` dihedral transforms (1: the
    model as it is)."""

    def __init__(self, model: ResNetCAM, copies: int):
        super().__init__()
        if copies not in (1, 2, 4, 8):
            raise ValueError("copies must be 1, 2, 4 or 8")
        self.model, self.copies = model, copies

    def _views(self, x: torch.Tensor) -> torch.Tensor:
        if self.copies == 1:
            return x
        return torch.cat([forward_transform(x, *t) for t in _TRANSFORMS[: self.copies]])

    def _average(self, logits: torch.Tensor, cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.copies == 1:
            return logits, cam
        transforms = _TRANSFORMS[: self.copies]
        logits = logits.reshape(self.copies, -1, logits.shape[1]).mean(0)
        cam = cam.reshape(self.copies, -1, *cam.shape[1:])
        cams = [inverse_transform(cam[i], *t) for i, t in enumerate(transforms)]
        return logits, torch.stack(cams).mean(0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._average(*self.model(self._views(x)))

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(logits, cam) as forward, and each stage's feature maps over all copies (see `pooled`)."""
        maps = self.model.stage_features(self._views(x))
        return (*self._average(*self.model.classify(maps[-1])), maps)

    def pooled(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each stage's globally pooled features (N, 2 x channels): the per-channel spatial mean, then
        root mean square, averaged over the copies."""
        pooled = [spatial_statistics(m) for m in maps]
        return pooled if self.copies == 1 else [p.reshape(self.copies, -1, p.shape[1]).mean(0) for p in pooled]


def spatial_statistics(feature_map: torch.Tensor) -> torch.Tensor:
    """(N, 2C): each channel's spatial mean, then its root mean square.

    The root mean square rather than the standard deviation: the same information (std^2 = rms^2 -
    mean^2) in fewer graph nodes, and at batch 1 a refusal check's cost on the CPU is mostly its
    number of nodes (benchmarks/refusal_cost.py); refusal power measured the same or higher
    (models.training.refusal_policy.HEAD_STAGES). Both statistics read one copy of the map: the
    ReLU changes nothing (every stage ends in one) but, in a quantized graph, is the map's only
    reader, so ONNX Runtime dequantizes it once instead of once per reading operand (three times)."""
    copy = torch.relu(feature_map)
    return torch.cat([copy.mean(dim=(2, 3)), torch.sqrt((copy * copy).mean(dim=(2, 3)))], dim=1)
