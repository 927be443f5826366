"""Turn a decoded image into the tensor a bundle's input contract asks for.

Shared by training (models/) and the device, so the model sees exactly the same
preprocessing in both places. numpy + OpenCV only: no torch.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.bundle import InputContract

# ITU-R BT.601 luma, the same weights OpenCV's RGB->GRAY uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 -> /255; float input must already be in [0, 1] (deeper data, windowed upstream)."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) * np.float32(1.0 / 255.0)
    if pixels.dtype in (np.float32, np.float64):
        return np.clip(pixels, 0.0, 1.0).astype(np.float32, copy=False)
    raise TypeError(f"pixels must be uint8 or float in [0, 1], got {pixels.dtype}")


def convert_color(pixels: np.ndarray, color: str) -> np.ndarray:
    """HxW or HxWx3 (RGB order) -> HxW for grayscale contracts, HxWx3 for rgb ones."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if color == "grayscale":
        if pixels.ndim == 2:
            return pixels
        if pixels.dtype == np.uint8:
            return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
        return (pixels[..., :3].astype(np.float32) @ _LUMA).astype(pixels.dtype, copy=False)
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels[..., :3]


def model_region(height: int, width: int, contract: InputContract) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the part of an image the model sees.

    The whole image when its aspect (width / height) lies in the contract's aspect_range, else the
    centred crop whose aspect is the nearest bound of that range (the heatmap is placed on it too).
    """
    if contract.aspect_range is None:
        return 0, 0, height, width
    low, high = contract.aspect_range
    if width > high * height:
        crop = max(1, int(round(high * height)))
        return 0, (width - crop) // 2, height, crop
    if width < low * height:
        crop = max(1, int(round(width / low)))
        return (height - crop) // 2, 0, crop, width
    return 0, 0, height, width


def resize(pixels: np.ndarray, contract: InputContract) -> np.ndarray:
    top, left, h, w = model_region(pixels.shape[0], pixels.shape[1], contract)
    pixels = pixels[top : top + h, left : left + w]
    if (h, w) == (contract.height, contract.width):
        return pixels
    # INTER_AREA when shrinking (no aliasing); linear when enlarging tiny images.
    shrinking = h >= contract.height and w >= contract.width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(pixels), (contract.width, contract.height), interpolation=interp)


CONSTANCY_POWER = 6.0


def shades_of_gray(img: np.ndarray, power: float = CONSTANCY_POWER) -> np.ndarray:
    """HxWx3 unit RGB with the illuminant's colour removed: channel c is scaled by mean(e) / e_c,
    e_c = (mean of x_c ** power) ** (1 / power), clipped to [0, 1]. The same formula runs in the
    training augmentation (models/training/skin/augment.py), after its colour changes."""
    e = np.power(np.mean(np.power(img, power, dtype=np.float32), axis=(0, 1)), 1.0 / power).astype(np.float32)
    gains = e.mean() / np.maximum(e, 1e-6)
    return np.clip(img * gains, 0.0, 1.0).astype(np.float32, copy=False)


def to_model_input(pixels: np.ndarray, contract: InputContract) -> np.ndarray:
    """Image (uint8, or float in [0, 1]; gray or RGB) -> float32 array (C, H, W), normalised."""
    img = resize(convert_color(pixels, contract.color), contract)
    img = to_unit_float(img)
    if contract.color_constancy is not None:
        img = shades_of_gray(img)
    if img.ndim == 2:
        img = img[None, :, :]
    else:
        img = np.transpose(img, (2, 0, 1))
    mean = np.asarray(contract.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(contract.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((img - mean) / std, dtype=np.float32)
