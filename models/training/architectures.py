"""A small ResNet-style CNN (1-channel radiographs or RGB photographs), with a class-activation-map output.

Plain 3x3 convolutions + BatchNorm + ReLU in basic residual blocks (no depthwise convs: they
quantise badly and get slower with INT8 on the appliance CPU), then global average pooling and a
linear head. The head is applied *before* pooling (a 1x1 convolution with the FC weights), which
is mathematically identical to GAP + FC because both are linear:

    cam[n, k] = W[k] . f[n] + b[k]          (per-location logit, shape (N, classes, h, w))
    logits[n, k] = mean_hw(cam[n, k])       (= W[k] . mean_hw(f[n]) + b[k])

so the CAM costs one tiny 1x1 conv and its spatial mean is exactly the logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Module):
    """Convolution followed by BatchNorm; `fuse()` folds the BN into the conv for export."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> None:
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True
        )
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(cin, cout, stride)
        self.conv2 = ConvBN(cout, cout)
        self.shortcut: nn.Module = (
            ConvBN(cin, cout, stride, kernel=1) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(y + self.shortcut(x))


class ResNetCAM(nn.Module):
    """Stem (stride 2) + one stage per width (stride 2 after the first), GAP + FC head.

    forward(x) -> (logits (N, classes), cam (N, classes, H/16, W/16)).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), blocks: int = 1, classes: int = 2,
                 channels: int = 1):
        super().__init__()
        if any(w % 16 for w in widths):
            raise ValueError("channel widths must be multiples of 16")
        self.widths, self.blocks, self.channels = tuple(widths), blocks, channels
        self.stem = ConvBN(channels, widths[0], stride=2)
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(cin, width, stride=2 if (i > 0 and j == 0) else 1))
                cin = width
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: every block starts as identity.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.conv2.bn.weight)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps after the stem and after each stage (one per width), in order; the last
        is what the head reads. An extra head (a refusal check, say) can read any of them."""
        f = F.relu(self.stem(x))
        maps = [f]
        for i, block in enumerate(self.stages):
            f = block(f)
            if (i + 1) % self.blocks == 0:
                maps.append(f)
        return maps

    def classify(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, cam) from the last feature map: the head at every location, then its mean."""
        cam = F.conv2d(f, self.fc.weight[:, :, None, None], self.fc.bias)
        return cam.mean(dim=(2, 3)), cam

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classify(self.stage_features(x)[-1])

    def fuse(self) -> "ResNetCAM":
        """Fold every BatchNorm into its conv (eval mode only); returns self."""
        if self.training:
            raise RuntimeError("fuse() needs eval mode: BN must use its running statistics")
        for m in self.modules():
            if isinstance(m, ConvBN):
                m.fuse()
        return self

    @torch.no_grad()
    def bake_temperature(self, temperature: float) -> None:
        """Divide the head by T so the exported logits (and CAM) are already calibrated."""
        self.fc.weight.div_(temperature)
        self.fc.bias.div_(temperature)


def build_model(widths: tuple[int, ...], blocks: int, classes: int = 2, channels: int = 1) -> ResNetCAM:
    return ResNetCAM(widths=widths, blocks=blocks, classes=classes, channels=channels)
