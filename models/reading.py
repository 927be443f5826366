"""How the device reads an image file for a bundle: decoding no larger than the model needs (the
smallest short side its input and its quality gate accept, and whether colour matters) and the JPEG
scale-down that keeps it. On the contract floor, so that what is computed off the device to be
compared with the device's studies (the monitoring reference, models/training/monitoring.py) reads
the images exactly as the device does (device/intake decodes with these flags).

libjpeg can decode at 1/2, 1/4 or 1/8 scale by skipping most of the inverse DCT (OpenCV's
IMREAD_REDUCED_* flags): faster, and a proper low-pass (each output pixel is its block's average,
no aliasing). The largest reduction that keeps the short side at or above ``min_side`` is used, so
the model's own resize still only shrinks, and the quality gate sees the same geometry class as the
full image (too small stays too small; the aspect is kept). The quality checks then run on the
reduced image. The stored study is always the original file, at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.bundle import Manifest

FACTORS = (8, 4, 2)
# The long side at which device/decision/quality.py judges sharpness (area-resized there): an image decoded
# for a bundle with a sharpness check keeps at least this much, so the figure is the full image's.
SHARPNESS_SIDE = 224


@dataclass(frozen=True)
class ReducedDecode:
    """The smallest short side a bundle needs, and whether its checks can do without colour."""

    min_side: int
    gray: bool

    @classmethod
    def for_manifest(cls, manifest: Manifest) -> "ReducedDecode":
        contract = manifest.input
        min_side = max(contract.height, contract.width, manifest.quality.min_side_px,
                       SHARPNESS_SIDE if manifest.quality.min_sharpness is not None else 0)
        # A colour photo is refused by max_colorfulness: a grayscale decode would hide the colour.
        gray = contract.color == "grayscale" and manifest.quality.max_colorfulness is None
        return cls(min_side, gray)


def reduction(height: int, width: int, min_side: int) -> int:
    """The largest JPEG scale-down factor (8, 4, 2) keeping the short side >= min_side, else 1."""
    for factor in FACTORS:
        if min(height, width) // factor >= min_side:
            return factor
    return 1


def reduced_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """What libjpeg produces at 1/factor: each side rounded up."""
    return -(-height // factor), -(-width // factor)


# ANYDEPTH keeps 16-bit data; ANYCOLOR keeps gray as gray, drops alpha, expands palettes, and
# (unlike IMREAD_UNCHANGED) still applies the EXIF orientation a phone camera writes.
WHOLE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
# libjpeg's DCT-domain scale-down, by factor (the gray flags; | IMREAD_ANYCOLOR keeps colour).
_REDUCED = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def jpeg_flags(height: int, width: int, reduce: ReducedDecode | None) -> tuple[int, int]:
    """(scale-down factor, OpenCV flags) for a JPEG of that stored size decoded for ``reduce``.
    The reduced flags keep ANYCOLOR (gray stays gray, colour is kept for the colour check) and the
    EXIF orientation; a gray-only bundle gets libjpeg's cheaper gray output."""
    factor = 1 if reduce is None else reduction(height, width, reduce.min_side)
    if factor == 1:
        return 1, cv2.IMREAD_GRAYSCALE if reduce is not None and reduce.gray else WHOLE_FLAGS
    return factor, _REDUCED[factor] | (0 if reduce.gray else cv2.IMREAD_ANYCOLOR)


def read_as_served(path: Path, manifest: Manifest) -> np.ndarray:
    """An 8-bit JPEG or PNG file's pixels as the device decodes them for this bundle (gray (H, W) or
    RGB (H, W, 3), at the JPEG scale-down it uses), for models.preprocess.to_model_input. Off the
    device only: it reads the stored size by a whole decode first, where the device parses the header."""
    data = np.fromfile(str(path), np.uint8)
    whole = cv2.imdecode(data, WHOLE_FLAGS)
    if whole is None:
        raise ValueError(f"{path}: cannot decode")
    if data[:2].tobytes() == b"\xff\xd8":
        _, flags = jpeg_flags(*whole.shape[:2], ReducedDecode.for_manifest(manifest))
        whole = cv2.imdecode(data, flags)
    return cv2.cvtColor(whole, cv2.COLOR_BGR2RGB) if whole.ndim == 3 else whole
