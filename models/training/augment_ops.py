"""Seeded random draws and filters that every exam's augmentation is built from (torch, batched)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def chance(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur, sigma (N,) in pixels."""
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k = k / k.sum(dim=1, keepdim=True)
    n, c, h, w = x.shape
    y = x.reshape(1, n * c, h, w)
    kernels = k.repeat_interleave(c, dim=0)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kernels[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kernels[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)
