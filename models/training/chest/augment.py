"""Batched, seeded augmentation in torch, on (N, 1, H, W) model inputs.

Mimics what changes between scanners, sites and exposures (geometry, exposure/contrast/gamma,
sharpness, noise) and takes away shortcuts (image borders, burned-in letters and markers), so the
net has to look at the lungs. The same operations, with wider ranges and without the shortcut
removal, make the "simulated acquisition shift" stress validation.

Aspect: the training films were stretched to a square upstream, so each one's original aspect is
hidden in its anatomy, and that aspect differs by class (a shortcut). With the original aspect of
each film known, the geometry step first shows the film as if it had been taken on a film of
another aspect, drawn independently of its class, and stretched to the square as the device does
(a centred crop of the restored film: the sides when the drawn aspect is narrower, top and bottom
when wider). The squeeze then tells nothing about the class.

No horizontal flip: every chest film here is a standard PA/AP view with the heart on the
patient's left, the test images are too, and dextrocardia is rare. A flip would spend capacity
on a variation that never occurs and blur a real anatomical cue (the cardiac silhouette side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.training.augment_ops import chance, gaussian_blur, uniform


@dataclass(frozen=True)
class AugmentConfig:
    scale: tuple[float, float] = (0.8, 1.25)  # covers a film cut or padded by 8-10% per edge
    rotate_deg: float = 10.0
    translate: float = 0.06  # fraction of the image side
    brightness: float = 0.08  # additive, unit scale
    contrast: tuple[float, float] = (0.75, 1.3)
    log_gamma: float = 0.35  # gamma = exp(U(-g, g))
    p_blur: float = 0.25
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    p_sharpen: float = 0.2
    sharpen: tuple[float, float] = (0.2, 1.0)
    noise_std: float = 0.03
    p_border: float = 0.5
    border_max: float = 0.12  # fraction of the side blacked out per edge
    p_erase: float = 0.5
    erase_max_patches: int = 3
    erase_side: tuple[float, float] = (0.04, 0.12)
    # Share of drawn film aspects that are log-uniform over the whole declared range (the rest come
    # from the class-balanced distribution of real films): the range is covered evenly, real
    # films densely.
    aspect_uniform: float = 0.5
    aspect_jitter: float = 0.04  # log-normal sigma on drawn real-film aspects


TRAIN = AugmentConfig()
# Stress: stronger acquisition changes, no marker/border surgery (those are train-time shortcut
# removal, not a property of another scanner).
STRESS = AugmentConfig(
    scale=(0.8, 1.2),
    rotate_deg=12.0,
    translate=0.08,
    brightness=0.12,
    contrast=(0.65, 1.4),
    log_gamma=0.5,
    p_blur=0.35,
    blur_sigma=(0.5, 1.5),
    p_sharpen=0.3,
    sharpen=(0.5, 1.5),
    noise_std=0.045,
    p_border=0.0,
    p_erase=0.0,
    aspect_uniform=1.0,
)


@dataclass(frozen=True)
class AspectSampler:
    """Draws the film aspect (width / height) each image is shown at, independently of its class."""

    normal: torch.Tensor  # known original aspects of the NORMAL training films
    pneumonia: torch.Tensor  # ... and of the PNEUMONIA ones
    low: float
    high: float

    def sample(self, n: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
        log_lo, log_hi = math.log(self.low), math.log(self.high)
        spread = torch.exp(uniform(n, log_lo, log_hi, gen))
        pick_normal = chance(n, 0.5, gen)
        normal = self.normal[torch.randint(len(self.normal), (n,), generator=gen)]
        pneumonia = self.pneumonia[torch.randint(len(self.pneumonia), (n,), generator=gen)]
        real = torch.where(pick_normal, normal, pneumonia) * torch.exp(cfg.aspect_jitter * torch.randn(n, generator=gen))
        drawn = torch.where(chance(n, cfg.aspect_uniform, gen), spread, real)
        return drawn.clamp(self.low, self.high)


def aspect_crop(true_aspect: torch.Tensor, shown_aspect: torch.Tensor) -> torch.Tensor:
    """(N, 2) half-extents (x, y), in normalised coordinates of a stretched film of aspect
    `true_aspect`, of the centred crop that makes it look like a film of aspect `shown_aspect`."""
    ratio = shown_aspect / true_aspect
    return torch.stack([ratio.clamp(max=1.0), (1.0 / ratio).clamp(max=1.0)], 1)


def random_affine(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
                  crop: torch.Tensor | None = None) -> torch.Tensor:
    """Zoom, rotation and shift, after an optional per-image centred crop (N, 2 half-extents);
    outside the image is black (what a collimated film looks like)."""
    n = x.shape[0]
    scale = uniform(n, *cfg.scale, gen)
    angle = uniform(n, -cfg.rotate_deg, cfg.rotate_deg, gen) * (math.pi / 180)
    shift = uniform(2 * n, -2 * cfg.translate, 2 * cfg.translate, gen).view(n, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    if crop is not None:
        theta = theta * crop[:, :, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def exposure(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Gamma (detector response curve), then contrast about the image mean and a brightness offset."""
    n = x.shape[0]
    gamma = torch.exp(uniform(n, -cfg.log_gamma, cfg.log_gamma, gen)).view(n, 1, 1, 1)
    x = x.clamp(0, 1) ** gamma
    contrast = uniform(n, *cfg.contrast, gen).view(n, 1, 1, 1)
    bright = uniform(n, -cfg.brightness, cfg.brightness, gen).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean + bright


def sharpness(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Blur some images (soft detectors, motion) and unsharp-mask others (edge-enhancing processing)."""
    n = x.shape[0]
    roll = torch.rand(n, generator=gen)
    blur = roll < cfg.p_blur
    sharpen = (roll >= cfg.p_blur) & (roll < cfg.p_blur + cfg.p_sharpen)
    sigma = torch.where(blur, uniform(n, *cfg.blur_sigma, gen), torch.full((n,), 1.0))
    amount = torch.where(sharpen, uniform(n, *cfg.sharpen, gen), torch.zeros(n))
    if not (blur.any() or sharpen.any()):
        return x
    soft = gaussian_blur(x, sigma)
    out = torch.where(blur.view(n, 1, 1, 1), soft, x)
    return out + amount.view(n, 1, 1, 1) * (x - soft)


def noise(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    std = uniform(x.shape[0], 0.0, cfg.noise_std, gen).view(-1, 1, 1, 1)
    return x + std * torch.randn(x.shape, generator=gen)


def black_borders(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Black bars of random width on random edges (collimation, letterboxing, cropped films)."""
    n, _, h, w = x.shape
    widths = (uniform(4 * n, 0.0, cfg.border_max, gen).view(n, 4) * torch.tensor([h, h, w, w])).long()
    widths = widths * chance(4 * n, cfg.p_border, gen).view(n, 4)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    top, bottom, left, right = (widths[:, i].view(n, 1, 1) for i in range(4))
    keep = (rows >= top) & (rows < h - bottom) & (cols >= left) & (cols < w - right)
    return x * keep[:, None].to(x.dtype)


def erase_patches(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Small flat patches (dark or bright) over random places: hides and imitates burned-in markers."""
    n, _, h, w = x.shape
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    for _ in range(cfg.erase_max_patches):
        on = chance(n, cfg.p_erase / cfg.erase_max_patches * 2, gen).view(n, 1, 1)
        ph = (uniform(n, *cfg.erase_side, gen) * h).long().view(n, 1, 1)
        pw = (uniform(n, *cfg.erase_side, gen) * w).long().view(n, 1, 1)
        y0 = (torch.rand(n, generator=gen) * h).long().view(n, 1, 1)
        x0 = (torch.rand(n, generator=gen) * w).long().view(n, 1, 1)
        value = torch.rand(n, generator=gen).view(n, 1, 1, 1)
        mask = on & (rows >= y0) & (rows < y0 + ph) & (cols >= x0) & (cols < x0 + pw)
        x = torch.where(mask[:, None], value, x)
    return x


def augment(
    x: torch.Tensor, mean: float, std: float, cfg: AugmentConfig, gen: torch.Generator,
    true_aspect: torch.Tensor | None = None, sampler: AspectSampler | None = None, size: int | None = None,
) -> torch.Tensor:
    """Normalised images -> augmented normalised model inputs of side `size` (default: x's), float32.

    With `true_aspect` (N,) and a `sampler`, each film is first shown at a drawn aspect (see the
    module docstring). Geometry runs at x's resolution and is then area-downscaled to `size`, as
    the device's INTER_AREA resize does.
    """
    unit = x.float() * std + mean
    crop = None
    if sampler is not None and true_aspect is not None:
        crop = aspect_crop(true_aspect, sampler.sample(x.shape[0], cfg, gen))
    unit = random_affine(unit, cfg, gen, crop)
    if size is not None and size != unit.shape[-1]:
        unit = F.interpolate(unit, size=(size, size), mode="area")
    unit = exposure(unit, cfg, gen)
    unit = sharpness(unit, cfg, gen)
    unit = noise(unit, cfg, gen)
    if cfg.p_border > 0:
        unit = black_borders(unit, cfg, gen)
    if cfg.p_erase > 0:
        unit = erase_patches(unit, cfg, gen)
    return (unit.clamp(0, 1) - mean) / std
