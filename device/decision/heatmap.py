"""Class-activation maps turned into something a clinician can look at."""

from __future__ import annotations

import cv2
import numpy as np

from models.bundle import InputContract
from models.preprocess import model_region


def normalise_cam(cam: np.ndarray) -> np.ndarray:
    """Positive evidence only, scaled to [0, 1]; an all-negative map is all zero, not noise."""
    cam = np.maximum(cam.astype(np.float32), 0.0)
    peak = float(cam.max())
    return cam / peak if peak > 0 else cam


def overlay(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.4,
            contract: InputContract | None = None) -> np.ndarray:
    """RGB uint8 image with the map blended over it in a jet palette, on the part the model saw
    (the whole image, or the centred crop the contract's aspect range makes of it).

    The enlarged map is clipped to [0, 1] before it weights the blend: bicubic enlargement rings
    below zero and above one next to sharp edges, and a negative weight pushes the blend outside
    0..255, where the uint8 conversion wraps (black blobs on white, blue on black, which look like
    findings). Where the map is zero the image is left exactly as it was."""
    if pixels.dtype != np.uint8:
        pixels = np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB) if pixels.ndim == 2 else pixels[..., :3].copy()
    top, left, h, w = (0, 0, *rgb.shape[:2]) if contract is None else model_region(*rgb.shape[:2], contract)
    seen = rgb[top : top + h, left : left + w]
    heat = np.clip(cv2.resize(normalise_cam(cam), (w, h), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    heat_u8 = (heat * 255.0 + 0.5).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    weight = (alpha * heat)[..., None]
    blended = seen * (1.0 - weight) + colour * weight
    rgb[top : top + h, left : left + w] = (blended + 0.5).astype(np.uint8)  # a convex blend: within 0..255
    return rgb


def write_png(path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
