"""Batched, seeded augmentation for dermoscopy, in torch, on (N, 3, H, W) unit RGB images.

What varies between dermoscopes, clinics and photographers: orientation (a lesion has no "up"),
zoom, white balance, saturation, exposure, focus and noise. What the literature names as
shortcuts in dermoscopy datasets - dark corners of the dermoscope's circular field (vignette),
hairs, ink markings and rulers next to suspicious lesions - is painted onto random images of
every class, so none of them tells the class. `models.audit` checks that each one leaves the
triage unchanged on validation images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.training.augment_ops import chance, gaussian_blur, uniform


@dataclass(frozen=True)
class SkinAugment:
    scale: tuple[float, float] = (0.9, 1.3)
    translate: float = 0.06
    brightness: tuple[float, float] = (0.8, 1.2)  # multiplicative
    contrast: tuple[float, float] = (0.8, 1.25)
    saturation: tuple[float, float] = (0.7, 1.3)
    channel_gain: float = 0.08  # white balance: per-channel gain exp(U(-g, g))
    log_gamma: float = 0.2
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    noise_std: float = 0.02
    p_vignette: float = 0.3
    p_hair: float = 0.25
    p_ink: float = 0.15
    p_ruler: float = 0.15


TRAIN = SkinAugment()
# Stress validation: acquisition changes only (no painted shortcuts), somewhat wider.
STRESS = SkinAugment(scale=(0.85, 1.35), brightness=(0.75, 1.25), saturation=(0.6, 1.4), channel_gain=0.12,
                     p_blur=0.3, p_vignette=0.0, p_hair=0.0, p_ink=0.0, p_ruler=0.0)


def dihedral(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One of the 8 flips/rotations per image."""
    n = x.shape[0]
    flip_h, flip_v, swap = (chance(n, 0.5, gen).view(n, 1, 1, 1) for _ in range(3))
    x = torch.where(flip_h, x.flip(3), x)
    x = torch.where(flip_v, x.flip(2), x)
    return torch.where(swap, x.transpose(2, 3), x)


def rotate_zoom(x: torch.Tensor, cfg: SkinAugment, gen: torch.Generator) -> torch.Tensor:
    """Any rotation, zoom and shift; the outside is mirrored skin, not black (black is a vignette)."""
    n = x.shape[0]
    scale = uniform(n, *cfg.scale, gen)
    angle = uniform(n, 0.0, 2 * math.pi, gen)
    shift = uniform(2 * n, -2 * cfg.translate, 2 * cfg.translate, gen).view(n, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour(x: torch.Tensor, cfg: SkinAugment, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    gain = torch.exp(uniform(3 * n, -cfg.channel_gain, cfg.channel_gain, gen)).view(n, 3, 1, 1)
    x = x * gain * uniform(n, *cfg.brightness, gen).view(n, 1, 1, 1)
    gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = gray + (x - gray) * uniform(n, *cfg.saturation, gen).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(n, *cfg.contrast, gen).view(n, 1, 1, 1) + mean
    gamma = torch.exp(uniform(n, -cfg.log_gamma, cfg.log_gamma, gen)).view(n, 1, 1, 1)
    return x.clamp(0, 1) ** gamma


def _coords(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1], shapes (1, h, 1) and (1, 1, w)."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    return ys.view(1, h, 1), xs.view(1, 1, w)


def vignette(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """The dark surround of a dermoscope's circular field: black outside a soft-edged circle."""
    n, _, h, w = x.shape
    on = chance(n, p, gen)
    if not on.any():
        return x
    ys, xs = _coords(h, w)
    radius = uniform(n, 0.85, 1.35, gen).view(n, 1, 1)
    cy, cx = (uniform(n, -0.1, 0.1, gen).view(n, 1, 1) for _ in range(2))
    edge = uniform(n, 0.02, 0.15, gen).view(n, 1, 1)
    r = torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
    keep = torch.sigmoid((radius - r) / edge)
    keep = torch.where(on.view(n, 1, 1), keep, torch.ones_like(keep))
    return x * keep[:, None]


def _segment_distance(ys: torch.Tensor, xs: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance (in [-1, 1] units) from every pixel to segments a->b; a, b (M, 2) as (y, x)."""
    ay, ax = a[:, 0].view(-1, 1, 1), a[:, 1].view(-1, 1, 1)
    dy, dx = (b[:, 0] - a[:, 0]).view(-1, 1, 1), (b[:, 1] - a[:, 1]).view(-1, 1, 1)
    t = (((ys - ay) * dy + (xs - ax) * dx) / (dy * dy + dx * dx + 1e-9)).clamp(0, 1)
    return torch.sqrt((ys - ay - t * dy) ** 2 + (xs - ax - t * dx) ** 2)


def hairs(x: torch.Tensor, p: float, gen: torch.Generator, per_image: int = 4) -> torch.Tensor:
    """Thin dark strokes across the image (hair, a common occluder in dermoscopy)."""
    n, _, h, w = x.shape
    on = chance(n, p, gen)
    if not on.any():
        return x
    ys, xs = _coords(h, w)
    m = n * per_image
    a = uniform(2 * m, -1.2, 1.2, gen).view(m, 2)
    b = a + uniform(2 * m, -1.5, 1.5, gen).view(m, 2)
    width = uniform(m, 0.6, 1.6, gen).view(m, 1, 1) / h  # half-width ~0.3-0.8 px
    shown = (chance(m, 0.7, gen) & on.repeat_interleave(per_image)).view(m, 1, 1)
    alpha = torch.exp(-(_segment_distance(ys, xs, a, b) / width) ** 2) * shown
    alpha = 1 - torch.prod(1 - alpha.view(n, per_image, h, w), dim=1)
    shade = uniform(n, 0.05, 0.3, gen).view(n, 1, 1, 1) * torch.tensor([1.0, 0.8, 0.7]).view(1, 3, 1, 1)
    return x * (1 - alpha[:, None]) + shade * alpha[:, None]


def ink(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A surgical-marker stroke or dot (purple/blue) near the edge of the field."""
    n, _, h, w = x.shape
    on = chance(n, p, gen)
    if not on.any():
        return x
    ys, xs = _coords(h, w)
    side = uniform(n, 0.55, 0.9, gen) * torch.where(chance(n, 0.5, gen), 1.0, -1.0)
    along = uniform(n, -0.8, 0.8, gen)
    vertical = chance(n, 0.5, gen)
    cy = torch.where(vertical, along, side)
    cx = torch.where(vertical, side, along)
    a = torch.stack([cy, cx], 1)
    b = a + uniform(2 * n, -0.3, 0.3, gen).view(n, 2)
    width = uniform(n, 0.02, 0.06, gen).view(n, 1, 1)
    alpha = 0.85 * torch.sigmoid((width - _segment_distance(ys, xs, a, b)) / 0.01) * on.view(n, 1, 1)
    hue = torch.stack([uniform(n, 0.25, 0.5, gen), uniform(n, 0.1, 0.25, gen), uniform(n, 0.45, 0.7, gen)], 1)
    return x * (1 - alpha[:, None]) + hue.view(n, 3, 1, 1) * alpha[:, None]


def ruler(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A ruler along one edge: a light band with dark millimetre ticks."""
    n, _, h, w = x.shape
    on = chance(n, p, gen)
    if not on.any():
        return x
    ys, xs = _coords(h, w)
    depth = uniform(n, 0.08, 0.18, gen).view(n, 1, 1)
    period = uniform(n, 0.04, 0.08, gen).view(n, 1, 1)
    band_y = (ys > 1 - 2 * depth)  # bottom band; the dihedral step moves it to any edge
    ticks = (torch.remainder(xs, period) < 0.012) & (ys > 1 - 2 * depth * uniform(n, 0.4, 0.8, gen).view(n, 1, 1))
    on = on.view(n, 1, 1)
    band = (band_y & on)[:, None]
    tick = (band_y & ticks & on)[:, None]
    light = uniform(n, 0.75, 0.95, gen).view(n, 1, 1, 1)
    x = torch.where(band, light.expand(n, 3, 1, 1), x)
    return torch.where(tick, torch.full_like(x, 0.1), x)


def augment(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, cfg: SkinAugment,
            gen: torch.Generator) -> torch.Tensor:
    """Normalised (N, 3, H, W) images -> augmented normalised images (float32)."""
    unit = x.float() * std + mean
    unit = ruler(unit, cfg.p_ruler, gen)  # before the geometry, so it lands on any edge
    unit = dihedral(unit, gen)
    unit = rotate_zoom(unit, cfg, gen)
    unit = colour(unit, cfg, gen)
    n = unit.shape[0]
    blur = chance(n, cfg.p_blur, gen)
    if blur.any():
        soft = gaussian_blur(unit, torch.where(blur, uniform(n, *cfg.blur_sigma, gen), torch.ones(n)))
        unit = torch.where(blur.view(n, 1, 1, 1), soft, unit)
    unit = unit + uniform(n, 0.0, cfg.noise_std, gen).view(n, 1, 1, 1) * torch.randn(unit.shape, generator=gen)
    unit = hairs(unit, cfg.p_hair, gen)
    unit = ink(unit, cfg.p_ink, gen)
    unit = vignette(unit, cfg.p_vignette, gen)
    return (unit.clamp(0, 1) - mean) / std
